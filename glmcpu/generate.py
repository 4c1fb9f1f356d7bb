"""Sampling and streaming detokenization."""
import numpy as np

from .errors import GlmcpuError


class SamplingParams:
    """temperature 0 means greedy. Defaults are the official ChatGLM chat defaults."""

    def __init__(self, max_new_tokens=512, temperature=0.8, top_k=0, top_p=0.8, repetition_penalty=1.0,
                 seed=None):
        if max_new_tokens is None or int(max_new_tokens) < 1:
            raise GlmcpuError(f"max_new_tokens must be >= 1, got {max_new_tokens!r}")
        if temperature < 0:
            raise GlmcpuError(f"temperature must be >= 0, got {temperature}")
        if not 0 < top_p <= 1:
            raise GlmcpuError(f"top_p must be in (0, 1], got {top_p}")
        if top_k < 0:
            raise GlmcpuError(f"top_k must be >= 0 (0 = off), got {top_k}")
        if repetition_penalty <= 0:
            raise GlmcpuError(f"repetition_penalty must be > 0, got {repetition_penalty}")
        self.max_new_tokens = int(max_new_tokens)
        self.temperature, self.top_k, self.top_p = float(temperature), int(top_k), float(top_p)
        self.repetition_penalty, self.seed = float(repetition_penalty), seed


def _top_p_set(probs, top_p, tries=(256, 4096)):
    """The smallest set of most likely ids whose probabilities reach top_p, in the order of a full
    stable sort by decreasing probability (ties by id). Sorting all 65k-150k probabilities costs
    milliseconds per token, so first only the ids at least as likely as the 256th (then the
    4096th) are sorted (ties at that value included, so their order is the full sort's prefix);
    the full sort runs only when they do not reach top_p. The result is the same set either way."""
    for first in tries:
        if probs.size <= first:
            break
        kth = np.partition(probs, probs.size - first)[probs.size - first]
        cand = np.flatnonzero(probs >= kth)
        order = cand[np.lexsort((cand, -probs[cand]))]
        cum = np.cumsum(probs[order])
        if cum[-1] >= top_p:
            return order[: int(np.searchsorted(cum, top_p) + 1)]
    order = np.argsort(-probs, kind="stable")
    cum = np.cumsum(probs[order])
    return order[: int(np.searchsorted(cum, top_p) + 1)]


class Sampler:
    def __init__(self, params):
        self.p = params
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits, seen):
        """Next token id from float32 logits [vocab]; ``seen``: ids so far (prompt + reply)."""
        p = self.p
        x = logits.astype(np.float64)
        if p.repetition_penalty != 1.0 and len(seen):
            idx = np.unique(np.asarray(seen, np.int64))
            v = x[idx]
            x[idx] = np.where(v > 0, v / p.repetition_penalty, v * p.repetition_penalty)  # as HF does
        if p.temperature == 0:
            return int(np.argmax(x))
        x = x / p.temperature
        if p.top_k and p.top_k < x.size:
            kth = np.partition(x, -p.top_k)[-p.top_k]
            x[x < kth] = -np.inf
        x -= x.max()
        probs = np.exp(x)
        probs /= probs.sum()
        if p.top_p < 1.0:
            keep = _top_p_set(probs, p.top_p)
            mask = np.zeros_like(probs)
            mask[keep] = probs[keep]
            probs = mask / mask.sum()
        return int(self.rng.choice(probs.size, p=probs))


class StreamDecoder:
    """Turns token ids into text pieces whose concatenation is exactly decode(all ids).

    A piece is emitted only when the decoded text so far extends what was already emitted and
    does not end in an incomplete UTF-8 sequence (U+FFFD), so no half character ever appears."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.ids = []
        self.emitted = ""

    def push(self, token_id):
        self.ids.append(int(token_id))
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd") or not text.startswith(self.emitted):
            return ""
        piece, self.emitted = text[len(self.emitted):], text
        return piece

    def flush(self):
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if text.startswith(self.emitted):
            piece, self.emitted = text[len(self.emitted):], text
            return piece
        return ""
