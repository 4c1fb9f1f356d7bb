"""Kernels for ggml's q5_1 rows (block of 32: f16 d, f16 m, 32 high bits, 16 nibble bytes; value
q * d + m, glmcpu/quants.py), the type llama.cpp's Q5_K_M mix falls back to where a row is not
a whole number of 256-blocks. Portable numba loops: q5_1 holds a few matrices of a Q5_K_M file.

Activations are the int8 blocks of kernels.quant.quantize_act (xq, xd, xs). Per 32-block the
integer sum isum = sum (q - 16) * xq is exact, then in float32, in this order (no fastmath), as
glmcpu.quants.matmul_ref("q5_1") writes it:  acc = acc + xd * (d * (float(isum) + 16 * sx) + m * sx)
with sx = float(xs), the block's sum of xq.
"""
import numpy as np
from numba import njit, prange

from .kquant import _f16_at, _q5_at, _u32_at

BYTES = 24


@njit(cache=True, inline="always")
def _unpack_row(q, dd, mm, w, r):
    """Row r of w: q[e] = value - 16 (int32), dd[b] = d, mm[b] = m (float32) per block b."""
    for b in range(w.shape[1] // BYTES):
        o = b * BYTES
        dd[b] = _f16_at(w, r, o)
        mm[b] = _f16_at(w, r, o + 2)
        qh = _u32_at(w, r, o + 4)
        for j in range(32):
            q[32 * b + j] = _q5_at(w, r, qh, o + 8, j) - 16


@njit(cache=True, parallel=True)  # no fastmath: equals glmcpu.quants.matmul_ref("q5_1") bit for bit
def matmul_q5_1(out, rq, rd, rm, w, xq, xd, xs):
    """out [T, n_out] for q5_1 rows w [n_out, K/32 * 24] and int8 activations xq [T, K], xd, xs
    [T, K/32]. Per-range scratch for the unpacked row: rq [n, K] int32, rd, rm [n, K/32] float32."""
    T = xq.shape[0]
    n_out = w.shape[0]
    nb = w.shape[1] // BYTES
    n_ranges = rq.shape[0]
    per = (n_out + n_ranges - 1) // n_ranges
    for c in prange(n_ranges):
        q, dd, mm = rq[c], rd[c], rm[c]
        for r in range(c * per, min(n_out, (c + 1) * per)):
            _unpack_row(q, dd, mm, w, r)
            for t in range(T):
                acc = np.float32(0.0)
                for b in range(nb):
                    isum = np.int32(0)
                    for j in range(32):
                        isum += q[32 * b + j] * np.int32(xq[t, 32 * b + j])
                    sx = np.float32(xs[t, b])
                    term = np.float32(np.float32(dd[b] * np.float32(np.float32(isum) + np.float32(16.0) * sx))
                                      + np.float32(mm[b] * sx))
                    acc = np.float32(acc + np.float32(xd[t, b] * term))
                out[t, r] = acc


@njit(cache=True)
def dequant_rows_q5_1(out, w, ids):
    """out [len(ids), K] = rows ids of q5_1 rows w: q * d + m."""
    nb = w.shape[1] // BYTES
    for n in range(ids.shape[0]):
        r = ids[n]
        for b in range(nb):
            o = b * BYTES
            d = _f16_at(w, r, o)
            m = _f16_at(w, r, o + 2)
            qh = _u32_at(w, r, o + 4)
            for j in range(32):
                out[n, 32 * b + j] = np.float32(np.float32(_q5_at(w, r, qh, o + 8, j)) * d) + m
