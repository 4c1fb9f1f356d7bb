import numpy as np
from numba import njit, prange

from .f16 import widen
from .fastexp import exp_nonpos


@njit(cache=True, parallel=True, fastmath={"reassoc", "contract"})
def attention(out, scr, q, k_cache, v_cache, slot, pos, scale, n_bidir):
    """Causal attention over the KV cache with grouped (multi-query) KV heads.

    out [T, n_head, head_dim]; q [T, >= n_head, head_dim] (the first n_head heads are used, so the
    fused qkv buffer can be passed as is); k_cache, v_cache [n_slots, n_kv_head, n_ctx, head_dim],
    float32 or float16 bits (uint16, widened exactly as read). Row t belongs to the sequence in
    cache slot slot[t] at position pos[t] (slot, pos [T] int64: one step may carry rows of several
    sequences), and that slot already holds its positions 0 .. pos[t].
    scr [n_threads, group + 1, max(n_ctx + 1, 8 head_dim)] float32 scratch, a slab per thread
    (group = n_head / n_kv_head): rows 0 .. group-1 the scores of one item's heads, with each
    head's softmax denominator in the last column; row ``group`` eight widened key or value rows.
    Query t attends to positions 0 .. pos[t] of its slot, and to all of 0 .. n_bidir-1
    (ChatGLM-6B's bidirectional prompt prefix; 0 for causal models).

    An item is one token and the query heads that share a KV head (all of them, or a part when
    there are fewer items than threads): each cached key and value row is read and widened once
    for all of those heads, eight keys (four values) at a time so the products stay in registers.
    Softmax as the official code computes it, two passes, exact: scores in float32, minus their
    max, exp (kernels.fastexp, within 1 ulp), sum, then the weighted sum of the values divided by
    the sum.
    """
    n_tok, n_head, head_dim = out.shape
    n_kv = k_cache.shape[1]
    group = n_head // n_kv
    last = scr.shape[2] - 1                                    # the denominators' column
    n_ranges = scr.shape[0]                                    # one per thread
    parts = min(group, max(1, -(-n_ranges // (n_tok * n_kv))))
    per = -(-group // parts)                                   # heads per item
    n_items = n_tok * n_kv * parts
    for c in prange(n_ranges):
        sc = scr[c]
        buf = sc[group]                                        # widened cache rows
        for it in range(c, n_items, n_ranges):
            t = it // (n_kv * parts)
            g = (it // parts) % n_kv
            h0 = g * group + (it % parts) * per
            nh = min(per, (g + 1) * group - h0)
            if nh <= 0:
                continue
            n = max(pos[t] + 1, n_bidir)
            kc, vc = k_cache[slot[t], g], v_cache[slot[t], g]
            qs = q[t]
            s = 0
            while s + 8 <= n:                                  # scores q_h . k_s, eight keys a pass
                for j in range(8):
                    kr = kc[s + j]
                    for d in range(head_dim):
                        buf[j * head_dim + d] = widen(kr[d])
                for i in range(nh):
                    qh = qs[h0 + i]
                    a0 = np.float32(0.0)
                    a1 = np.float32(0.0)
                    a2 = np.float32(0.0)
                    a3 = np.float32(0.0)
                    a4 = np.float32(0.0)
                    a5 = np.float32(0.0)
                    a6 = np.float32(0.0)
                    a7 = np.float32(0.0)
                    for d in range(head_dim):
                        x = qh[d]
                        a0 += x * buf[d]
                        a1 += x * buf[head_dim + d]
                        a2 += x * buf[2 * head_dim + d]
                        a3 += x * buf[3 * head_dim + d]
                        a4 += x * buf[4 * head_dim + d]
                        a5 += x * buf[5 * head_dim + d]
                        a6 += x * buf[6 * head_dim + d]
                        a7 += x * buf[7 * head_dim + d]
                    sc[i, s] = a0 * scale
                    sc[i, s + 1] = a1 * scale
                    sc[i, s + 2] = a2 * scale
                    sc[i, s + 3] = a3 * scale
                    sc[i, s + 4] = a4 * scale
                    sc[i, s + 5] = a5 * scale
                    sc[i, s + 6] = a6 * scale
                    sc[i, s + 7] = a7 * scale
                s += 8
            while s < n:
                kr = kc[s]
                for d in range(head_dim):
                    buf[d] = widen(kr[d])
                for i in range(nh):
                    qh = qs[h0 + i]
                    a = np.float32(0.0)
                    for d in range(head_dim):
                        a += qh[d] * buf[d]
                    sc[i, s] = a * scale
                s += 1
            for i in range(nh):                                # exp(score - max), and the sum
                m = np.float32(-np.inf)
                for s in range(n):
                    m = max(m, sc[i, s])
                den = np.float32(0.0)
                for s in range(n):
                    p = exp_nonpos(sc[i, s] - m)
                    sc[i, s] = p
                    den += p
                sc[i, last] = den
                o = out[t, h0 + i]
                for d in range(head_dim):
                    o[d] = np.float32(0.0)
            s = 0
            while s + 4 <= n:                                  # sum_s p_s v_s, four values a pass
                v0, v1, v2, v3 = vc[s], vc[s + 1], vc[s + 2], vc[s + 3]
                for d in range(head_dim):
                    buf[d] = widen(v0[d])
                    buf[head_dim + d] = widen(v1[d])
                    buf[2 * head_dim + d] = widen(v2[d])
                    buf[3 * head_dim + d] = widen(v3[d])
                for i in range(nh):
                    p0, p1, p2, p3 = sc[i, s], sc[i, s + 1], sc[i, s + 2], sc[i, s + 3]
                    o = out[t, h0 + i]
                    for d in range(head_dim):
                        o[d] += (p0 * buf[d] + p1 * buf[head_dim + d]
                                 + p2 * buf[2 * head_dim + d] + p3 * buf[3 * head_dim + d])
                s += 4
            while s < n:
                vr = vc[s]
                for d in range(head_dim):
                    buf[d] = widen(vr[d])
                for i in range(nh):
                    p = sc[i, s]
                    o = out[t, h0 + i]
                    for d in range(head_dim):
                        o[d] += p * buf[d]
                s += 1
            for i in range(nh):
                inv = np.float32(1.0) / sc[i, last]
                o = out[t, h0 + i]
                for d in range(head_dim):
                    o[d] *= inv
