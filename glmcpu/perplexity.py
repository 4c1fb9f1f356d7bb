"""Perplexity of a model over a text file (the tool chatglm.cpp and llama.cpp users know).

The text is tokenized whole (the family's raw-prompt prefix, [gMASK] sop for ChatGLM2/3 and
GLM-4, first) and scored with windows of ``n_ctx`` tokens that advance by ``stride`` (default
n_ctx / 2): each window starts from an empty cache, and only the tokens not already scored by an
earlier window count, so every token is predicted once, with at least n_ctx - stride tokens of
context except at the start. perplexity = exp(mean negative log-likelihood).
"""
import math

import numpy as np

from .errors import GlmcpuError
from .progress import Progress


def log_softmax_at(logits, targets):
    """log p(target) for each row: logits [T, V] float32, targets [T]."""
    x = logits.astype(np.float64)
    mx = x.max(axis=1, keepdims=True)
    lse = mx[:, 0] + np.log(np.exp(x - mx).sum(axis=1))
    return x[np.arange(len(targets)), targets] - lse


def perplexity(model, text, n_ctx=None, stride=None, progress=None):
    """Returns (perplexity, number of scored tokens)."""
    if not model.arch.reuse_cache:
        raise GlmcpuError(f"perplexity is not implemented for {model.family}: its prompt prefix is bidirectional "
                          f"(ChatGLM-6B v1), so a window cannot be scored causally")
    tok = model.tokenizer
    ids = tok.prefix_ids() + tok.encode(text)
    n_ctx = min(n_ctx or model.n_ctx, model.n_ctx)
    if n_ctx < 2:
        raise GlmcpuError("--ctx must be at least 2")
    stride = stride or max(1, n_ctx // 2)
    if len(ids) < 2:
        raise GlmcpuError("the text is too short to score (fewer than 2 tokens)")
    starts = list(range(0, max(1, len(ids) - n_ctx + stride), stride))
    bar = Progress(len(starts), "perplexity", enabled=progress)
    nll, n, scored_to = 0.0, 0, 1  # token 0 is never predicted
    for s in starts:
        window = ids[s: s + n_ctx]
        if len(window) < 2 or s + len(window) <= scored_to:
            bar.update(1)
            continue
        model.reset()
        logits = model.forward(window)                                 # [len, vocab]
        first = max(scored_to, s + 1)                                  # first token not yet scored
        pos = np.arange(first, s + len(window))                        # absolute positions scored
        lp = log_softmax_at(logits[pos - s - 1], np.asarray(ids)[pos])
        nll -= float(lp.sum())
        n += len(pos)
        scored_to = s + len(window)
        bar.update(1, f"ppl {math.exp(nll / n):.3f}")
    bar.close()
    model.reset()
    return math.exp(nll / n), n
