"""A generation request and its result, and the loop that runs one on a Model.

  GenerationRequest(prompt_ids, params, stop=[...])   what to generate (SamplingParams, stop strings)
  Sequence(model, request, slot)                      one request's generation, stepped by a driver:
                                                      the ids to compute next, then the logits -> pieces
  run(model, request, cancelled=None)                 the one-sequence driver: yields text pieces; the
                                                      CompletionResult is in request.result when it ends

The server's batch driver (glmcpu/batcher.py) steps several Sequences in one forward pass each
(Model.forward_batch); every token goes through the same Sequence.feed, so a reply is the same
whichever driver runs it.

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


class Sequence:
    """One request's generation as a state machine that a driver steps: ``run`` below for one
    sequence, glmcpu/batcher.py for several sharing forward passes.

      seq = Sequence(model, request, slot)   checks the request, keeps the slot's cached prefix
      seq.next_ids(budget)                   the ids to compute next in the slot: (a chunk of)
                                             the uncached prompt, or the last sampled token
      seq.feed(n, logits)                    n of them were appended to the slot; logits [vocab]
                                             after the last (every row's [n, vocab] when
                                             seq.all_rows): returns the text pieces to send
      seq.cancel() / seq.close()             the client went away / the driver gave up

    ``done`` is True once the result is final (request.result)."""

    def __init__(self, model, request, slot=0):
        from .chat import stop_ids
        check(model, request)
        self.model, self.request, self.slot = model, request, slot
        ids, res = request.prompt_ids, request.result
        tok = model.tokenizer
        self.tok, self.stops = tok, stop_ids(tok, model.config.eos_token_ids)
        self.sampler, self.dec, self.matcher = Sampler(request.params), StreamDecoder(tok), StopMatcher(request.stop)
        keep = model.cached_prefix(ids, slot) if request.reuse_cache and not request.prompt_logprobs else 0
        model.rewind(keep, slot)
        res.prompt_tokens, res.cached_tokens = len(ids), keep
        self.todo = ids[keep:]     # prompt ids not computed yet
        self.rows = []             # with prompt logprobs: the logits of every prompt row so far
        self.last = None           # the sampled token whose logits come next
        self.seen, self.counts = list(ids), {}
        self.penalized = request.presence_penalty != 0 or request.frequency_penalty != 0
        self.limit = min(request.params.max_new_tokens, model.n_ctx - len(ids))
        self.out, self.done = [], False
        self.t0 = time.perf_counter()

    @property
    def all_rows(self):
        """True while the prompt is computed with every row's logits (its log-probabilities)."""
        return self.request.prompt_logprobs and bool(self.todo)

    @property
    def prefilling(self):
        return bool(self.todo)

    def next_ids(self, budget=None):
        """The ids to compute next: the uncached prompt (at most ``budget`` of it), else the last
        sampled token."""
        if self.todo:
            return self.todo if budget is None else self.todo[:max(1, budget)]
        return [self.last]

    def feed(self, n, logits):
        """n ids of next_ids() were appended to the cache; ``logits`` the next token's (float32
        [vocab]; [n, vocab] when all_rows). Returns the pieces of reply text to send now."""
        req, res = self.request, self.request.result
        if self.todo:
            if self.all_rows:
                self.rows.append(logits)
                logits = logits[-1]
            self.todo = self.todo[n:]
            if self.todo:
                return []
            res.prefill_s = time.perf_counter() - self.t0
            if self.rows:
                every = np.concatenate(self.rows) if len(self.rows) > 1 else self.rows[0]
                res.prompt_logprobs = _prompt_logprobs(self.tok, every, req.prompt_ids, req.logprobs)
                self.rows = []
        if len(res.token_ids) >= self.limit:
            return self._finish("length")
        con, gen = req.constraint, res.token_ids
        if self.counts:
            logits = _penalize(logits, self.counts, req.presence_penalty, req.frequency_penalty)
        nxt = self.sampler(logits if con is None else con.apply(logits), self.seen)
        if nxt in self.stops:
            return self._finish("stop")
        entry = None
        if req.logprobs is not None:
            entry = _logprob_entry(self.tok, logits, nxt, req.logprobs, len(self.dec.emitted))
        if con is not None:
            con.advance(nxt)
        self.seen.append(nxt)
        gen.append(nxt)
        if self.penalized:
            self.counts[nxt] = self.counts.get(nxt, 0) + 1
        res.completion_tokens += 1
        text = self.dec.push(nxt)
        if entry is not None:  # the token's text: what it adds to the decoded reply ("" for part of a character)
            entry["token"] = text
            res.logprobs.append(entry)
        pieces = self._send(self.matcher.feed(text))
        if self.matcher.hit or (con is not None and con.done()):  # a stop string, or the grammar is complete
            return pieces + self._finish("stop")
        if len(gen) >= self.limit:
            return pieces + self._finish("length")
        self.last = nxt
        return pieces

    def cancel(self):
        """The client went away: the reply ends here ("cancelled")."""
        if not self.done:
            self.request.result.finish_reason = "cancelled"
            self.close()

    def close(self):
        """Make the result final (also after an error): text, the log-probabilities it covers, timings."""
        if self.done:
            return
        self.done = True
        res = self.request.result
        res.text = "".join(self.out)
        if res.logprobs:  # the tokens of a cut stop string are not part of the reply
            res.logprobs = [e for e in res.logprobs if e["offset"] < len(res.text)]
        res.decode_s = time.perf_counter() - self.t0 - res.prefill_s

    def _send(self, piece):
        if piece:
            self.out.append(piece)
            return [piece]
        return []

    def _finish(self, reason):
        res, req = self.request.result, self.request
        res.finish_reason = reason
        pieces = []
        if not self.matcher.hit:
            piece = self.matcher.feed(self.dec.flush())
            piece += self.matcher.flush() if not self.matcher.hit else ""
            pieces = self._send(piece)
        raw = self.tok.decode(res.token_ids, skip_special_tokens=False)
        cuts = [p for p in (raw.find(s) for s in req.stop) if p >= 0]
        res.raw_text = raw[:min(cuts)] if cuts else raw
        self.close()
        return pieces


def run(model, request, cancelled=None):
    """Generate for ``request`` on ``model`` (slot 0; one at a time: the caller serializes): an
    iterator of text pieces whose concatenation is request.result.text. The request is checked
    now (a bad one raises GlmcpuError here, not at the first piece); the prompt's longest prefix
    already in the cache is kept (model.cached_prefix) and only the rest is computed."""
    return _drive(Sequence(model, request), model, cancelled)


def _drive(seq, model, cancelled):
    try:
        while not seq.done:
            if cancelled and cancelled():
                seq.cancel()
                return
            ids = seq.next_ids()
            logits = model.forward(ids, all_logits=seq.all_rows)
            yield from seq.feed(len(ids), logits if seq.all_rows else logits[0])
    finally:
        seq.close()


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
