"""A generation request and its result, and the loop that runs one on a Model.

  GenerationRequest(prompt_ids, params, stop=[...])   what to generate (SamplingParams, stop strings)
  run(model, request, cancelled=None)                 yields text pieces; the CompletionResult is
                                                      in request.result when the iterator ends

Stop strings end the reply at their first occurrence and are never part of the text, also when a
stop string spans tokens: text that could still be the start of a stop string is held back until
the next token decides. ``cancelled()`` is asked before every forward pass, so a request whose
client went away stops within one token.

A request may carry a constraint (glmcpu/constrain.py Constraint: JSON schema, forced tool call):
before each draw the tokens it does not allow get -inf logits, so the sampler (greedy, top-p,
any temperature) never picks them; the drawn token advances it, and the reply ends with "stop" as
soon as the grammar is complete. Log-probabilities stay the model's, from the logits before the mask.
"""
import time

import numpy as np

from .errors import GlmcpuError
from .generate import Sampler, SamplingParams, StreamDecoder


class CompletionResult:
    """text: the reply (stop strings cut off); raw_text: the same with special tokens kept as text
    (what tool-call parsing reads); finish_reason: "stop", "length" or "cancelled"."""

    def __init__(self):
        self.text = ""
        self.raw_text = ""
        self.finish_reason = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.token_ids = []  # the generated ids (a stop token not included)
        self.cached_tokens = 0
        self.tool_calls = None
        self.prefill_s = 0.0
        self.decode_s = 0.0
        # with request.logprobs: one entry per generated token whose text is in ``text``: {"id", "token"
        # (the text it adds to the reply, "" while it is part of a character), "logprob", "offset" (where
        # that text starts in ``text``), "top": [(id, the id decoded alone, logprob)]}
        self.logprobs = None
        self.prompt_logprobs = None  # the same for the prompt's tokens (the first has none: logprob None)

    def usage(self):
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": self.cached_tokens}}


class GenerationRequest:
    def __init__(self, prompt_ids, params=None, stop=(), reuse_cache=True, presence_penalty=0.0,
                 frequency_penalty=0.0, logprobs=None, prompt_logprobs=False, constraint=None):
        if not prompt_ids:
            raise GlmcpuError("empty prompt")
        stop = [stop] if isinstance(stop, str) else list(stop or ())
        if any(not isinstance(s, str) or not s for s in stop):
            raise GlmcpuError("stop strings must be non-empty strings")
        self.prompt_ids = [int(t) for t in prompt_ids]
        self.params = params or SamplingParams()
        self.stop = stop
        self.reuse_cache = reuse_cache
        for name, v in (("presence_penalty", presence_penalty), ("frequency_penalty", frequency_penalty)):
            if not -2.0 <= v <= 2.0:
                raise GlmcpuError(f"{name} must be in [-2, 2], got {v}")
        # OpenAI's definition: logit[t] -= presence * (count[t] > 0) + frequency * count[t], over the reply
        self.presence_penalty, self.frequency_penalty = float(presence_penalty), float(frequency_penalty)
        if logprobs is not None and not (isinstance(logprobs, int) and 0 <= logprobs <= 20):
            raise GlmcpuError(f"logprobs (the number of most likely tokens to report) must be 0..20, got {logprobs!r}")
        self.logprobs = logprobs  # None: no log-probabilities; n: the chosen token's and the n most likely
        self.prompt_logprobs = bool(prompt_logprobs) and logprobs is not None  # also for the prompt (echo)
        self.constraint = constraint  # None, or a constrain.Constraint the reply must match (used once)
        self.echo = None  # completions echo: the prompt text the reply is shown after (the server's)
        self.result = CompletionResult()
        if logprobs is not None:
            self.result.logprobs = []


class StopMatcher:
    """Feeds text pieces, returns the part that is safe to send; ``hit`` once a stop string appeared."""

    def __init__(self, stops):
        self.stops = list(stops)
        self.text = ""   # everything decoded so far
        self.sent = 0    # how much of it was released
        self.hit = False

    def feed(self, piece):
        start = max(0, self.sent - max((len(s) for s in self.stops), default=0))
        self.text += piece
        cut = min((p for p in (self.text.find(s, start) for s in self.stops) if p >= 0), default=-1)
        if cut >= 0:
            self.hit = True
            self.text = self.text[:cut]
            return self._release(len(self.text))
        return self._release(len(self.text) - self._held())

    def flush(self):
        return self._release(len(self.text))

    def _held(self):
        """Length of the longest end of the text that begins some stop string."""
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:k]):
                    best = k
                    break
        return best

    def _release(self, upto):
        upto = max(upto, self.sent)
        piece, self.sent = self.text[self.sent:upto], upto
        return piece


def check(model, request):
    """Refuse a request the model cannot run, before any work: a prompt that leaves no room to
    reply in the context, token ids outside the vocabulary."""
    ids = request.prompt_ids
    if len(ids) >= model.n_ctx:
        raise GlmcpuError(f"prompt is {len(ids)} tokens but the context holds {model.n_ctx}; "
                          f"use a larger context (--ctx / n_ctx) or a shorter prompt")
    bad = [t for t in ids if not 0 <= t < model.vocab_size]
    if bad:
        raise GlmcpuError(f"token id {bad[0]} is out of range for vocab_size {model.vocab_size}")


def run(model, request, cancelled=None):
    """Generate for ``request`` on ``model`` (one at a time: the caller serializes). Yields text pieces
    whose concatenation is request.result.text. The prompt's longest prefix already in the cache is
    kept (model.cached_prefix) and only the rest is computed."""
    from .chat import stop_ids
    check(model, request)
    ids, params, res, con = request.prompt_ids, request.params, request.result, request.constraint
    tok = model.tokenizer
    stops = stop_ids(tok, model.config.eos_token_ids)
    sampler, dec, matcher = Sampler(params), StreamDecoder(tok), StopMatcher(request.stop)
    keep = model.cached_prefix(ids) if request.reuse_cache and not request.prompt_logprobs else 0
    model.rewind(keep)
    res.prompt_tokens, res.cached_tokens = len(ids), keep
    out = []
    t0 = time.perf_counter()
    try:
        if cancelled and cancelled():
            res.finish_reason = "cancelled"
            return
        if request.prompt_logprobs:  # every prompt position's logits (the cache was not reused)
            every = model.forward(ids, all_logits=True)
            res.prompt_logprobs = _prompt_logprobs(tok, every, ids, request.logprobs)
            logits = every[-1]
        else:
            logits = model.forward(ids[keep:], all_logits=False)[0]
        res.prefill_s = time.perf_counter() - t0
        seen, gen = list(ids), res.token_ids
        penalized = request.presence_penalty != 0 or request.frequency_penalty != 0
        counts = {}
        limit = min(params.max_new_tokens, model.n_ctx - len(ids))
        while True:
            if len(gen) >= limit:
                res.finish_reason = "length"
                break
            if counts:
                logits = _penalize(logits, counts, request.presence_penalty, request.frequency_penalty)
            nxt = sampler(logits if con is None else con.apply(logits), seen)
            if nxt in stops:
                res.finish_reason = "stop"
                break
            entry = None
            if request.logprobs is not None:
                entry = _logprob_entry(tok, logits, nxt, request.logprobs, len(dec.emitted))
            if con is not None:
                con.advance(nxt)
            seen.append(nxt)
            gen.append(nxt)
            if penalized:
                counts[nxt] = counts.get(nxt, 0) + 1
            res.completion_tokens += 1
            text = dec.push(nxt)
            if entry is not None:  # the token's text: what it adds to the decoded reply ("" for part of a character)
                entry["token"] = text
                res.logprobs.append(entry)
            piece = matcher.feed(text)
            if piece:
                out.append(piece)
                yield piece
            if matcher.hit or (con is not None and con.done()):  # a stop string, or the grammar is complete
                res.finish_reason = "stop"
                break
            if len(gen) >= limit:
                res.finish_reason = "length"
                break
            if cancelled and cancelled():
                res.finish_reason = "cancelled"
                return
            logits = model.forward([nxt], all_logits=False)[0]
        if not matcher.hit:
            piece = matcher.feed(dec.flush())
            piece += matcher.flush() if not matcher.hit else ""
            if piece:
                out.append(piece)
                yield piece
        raw = tok.decode(gen, skip_special_tokens=False)
        cuts = [p for p in (raw.find(s) for s in request.stop) if p >= 0]
        res.raw_text = raw[:min(cuts)] if cuts else raw
    finally:
        res.text = "".join(out)
        if res.logprobs:  # the tokens of a cut stop string are not part of the reply
            res.logprobs = [e for e in res.logprobs if e["offset"] < len(res.text)]
        res.decode_s = time.perf_counter() - t0 - res.prefill_s


def _logprob_entry(tok, logits, chosen, n_top, offset):
    """The log-probability of ``chosen`` and of the ``n_top`` most likely tokens under the
    distribution the sampler drew from before temperature and top-p (the model's logits, with the
    presence / frequency penalties applied), in float64."""
    x = logits.astype(np.float64)
    lp = x - (x.max() + np.log(np.exp(x - x.max()).sum()))
    top = []
    if n_top:
        idx = np.argpartition(-lp, n_top - 1)[:n_top]
        idx = idx[np.lexsort((idx, -lp[idx]))]                   # most likely first, ties by id
        top = [(int(i), tok.decode([int(i)]), float(lp[i])) for i in idx]
    return {"id": int(chosen), "token": None, "logprob": float(lp[chosen]), "offset": offset, "top": top}


def _prompt_logprobs(tok, logits, ids, n_top):
    """Entries as for the reply, for prompt token i from the logits at position i - 1 (the first
    token has no logprob); token texts and offsets are those of the decoded prompt."""
    dec, out = StreamDecoder(tok), []
    for i, t in enumerate(ids):
        if i == 0:
            entry = {"id": int(t), "token": None, "logprob": None, "offset": 0, "top": []}
        else:
            entry = _logprob_entry(tok, logits[i - 1], t, n_top, len(dec.emitted))
        entry["offset"] = len(dec.emitted)
        entry["token"] = dec.push(t)
        out.append(entry)
    return out


def _penalize(logits, counts, presence, frequency):
    ids = np.fromiter(counts.keys(), np.int64, len(counts))
    n = np.fromiter(counts.values(), np.float32, len(counts))
    out = logits.copy()
    out[ids] -= np.float32(presence) + np.float32(frequency) * n
    return out
