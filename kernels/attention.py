import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True, fastmath={"reassoc", "contract"})
def attention(out, q, k_cache, v_cache, pos0, scale, n_bidir):
    """Causal attention over the KV cache with grouped (multi-query) KV heads.

    out [T, n_head, head_dim]; q [T, >= n_head, head_dim] (the first n_head heads are used, so the
    fused qkv buffer can be passed as is); k_cache, v_cache [n_kv_head, n_ctx, head_dim] already holding
    positions 0 .. pos0+T-1. Query t (position pos0+t) attends to positions 0 .. pos0+t, and to
    all of 0 .. n_bidir-1 (ChatGLM-6B's bidirectional prompt prefix; 0 for causal models).
    Scores and softmax in float32 with a running max (online softmax), so no score buffer is
    needed: out[t, h] doubles as the accumulator.
    """
    n_tok, n_head, head_dim = out.shape
    n_kv = k_cache.shape[0]
    group = n_head // n_kv
    for th in prange(n_tok * n_head):
        t = th // n_head
        h = th % n_head
        g = h // group
        acc = out[t, h]
        for d in range(head_dim):
            acc[d] = np.float32(0.0)
        m = np.float32(-np.inf)
        denom = np.float32(0.0)
        for s in range(max(pos0 + t + 1, n_bidir)):
            score = np.float32(0.0)
            for d in range(head_dim):
                score += q[t, h, d] * k_cache[g, s, d]
            score *= scale
            if score > m:
                corr = np.float32(np.exp(m - score))
                denom *= corr
                for d in range(head_dim):
                    acc[d] *= corr
                m = score
            p = np.float32(np.exp(score - m))
            denom += p
            for d in range(head_dim):
                acc[d] += p * v_cache[g, s, d]
        inv = np.float32(1.0) / denom
        for d in range(head_dim):
            acc[d] *= inv
