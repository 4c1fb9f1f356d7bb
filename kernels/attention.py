import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True, fastmath={"reassoc", "contract"})
def attention(out, scr, q, k_cache, v_cache, pos0, scale, n_bidir):
    """Causal attention over the KV cache with grouped (multi-query) KV heads.

    out [T, n_head, head_dim]; scr [n_ranges, >= n_ctx] float32 scratch for scores (one row per
    parallel range); q [T, >= n_head, head_dim] (the first n_head heads are used, so the fused
    qkv buffer can be passed as is); k_cache, v_cache [n_kv_head, n_ctx, head_dim] already
    holding positions 0 .. pos0+T-1. Query t (position pos0+t) attends to positions 0 .. pos0+t,
    and to all of 0 .. n_bidir-1 (ChatGLM-6B's bidirectional prompt prefix; 0 for causal models).
    Softmax as the official code computes it: scores in float32, minus their max, exp, sum,
    then the weighted sum of values divided by the sum. Range c takes the (token, head) items
    c, c + n_ranges, ... so that long and short causal rows are spread over the threads.
    """
    n_tok, n_head, head_dim = out.shape
    n_kv = k_cache.shape[0]
    group = n_head // n_kv
    n_items = n_tok * n_head
    n_ranges = scr.shape[0]
    for c in prange(n_ranges):
        sc = scr[c]
        for th in range(c, n_items, n_ranges):
            t = th // n_head
            h = th % n_head
            g = h // group
            n = max(pos0 + t + 1, n_bidir)
            qh = q[t, h]
            m = np.float32(-np.inf)
            for s in range(n):                                   # scores: q . k_s
                kr = k_cache[g, s]
                a = np.float32(0.0)
                for d in range(head_dim):
                    a += qh[d] * kr[d]
                a *= scale
                sc[s] = a
                m = max(m, a)
            den = np.float32(0.0)
            for s in range(n):                                   # exp(score - max)
                p = np.float32(np.exp(sc[s] - m))
                sc[s] = p
                den += p
            o = out[t, h]
            for d in range(head_dim):
                o[d] = np.float32(0.0)
            s = 0
            while s + 4 <= n:                                    # sum_s p_s v_s, four rows a pass
                p0, p1, p2, p3 = sc[s], sc[s + 1], sc[s + 2], sc[s + 3]
                v0, v1, v2, v3 = v_cache[g, s], v_cache[g, s + 1], v_cache[g, s + 2], v_cache[g, s + 3]
                for d in range(head_dim):
                    o[d] += p0 * v0[d] + p1 * v1[d] + p2 * v2[d] + p3 * v3[d]
                s += 4
            while s < n:
                p0 = sc[s]
                v0 = v_cache[g, s]
                for d in range(head_dim):
                    o[d] += p0 * v0[d]
                s += 1
            inv = np.float32(1.0) / den
            for d in range(head_dim):
                o[d] *= inv
