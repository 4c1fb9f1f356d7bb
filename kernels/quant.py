"""Kernels for the group-quantized types (layouts in glmcpu/quants.py and docs/FORMAT.md).

Weights are row-tiled: qs[tile, sub, j, r] is byte j of 32-element sub-block ``sub`` of row
tile*R + r, so the innermost loops run over the R rows of a tile, which LLVM vectorizes with
no horizontal sums. Activations are int8 per 32-block (``quantize_act``); a 4-bit sub-block's
32 products (|q - 8| <= 8, |x| <= 127) sum to at most 32512 and are accumulated exactly in
int16 lanes (32 per AVX-512 register), then scaled into float32 once per sub-block.

No fastmath here: the integer loops vectorize without it, and the float32 block terms are
then computed in exactly the order written, so the kernels equal glmcpu.quants.matmul_ref
bit for bit on every machine.

matvec_*: one token; matmul_*: T tokens, each unpacked weight byte reused for a block of
tokens. Both are parallel over contiguous ranges of tiles; ``scr_*`` are per-range scratch
buffers (first axis: range), so nothing is allocated here.
"""
import numpy as np
from numba import njit, prange

from .f16 import f16_to_f32

TB = 16  # tokens per block in matmul: int16 partial sums [TB, R] stay in L1


@njit(cache=True)  # no fastmath: must equal the numpy reference bit for bit
def quantize_act(xq, xd, xs, x):
    """x [T, K] float32 -> xq [T, K] int8, xd [T, K/32] float32 scale, xs [T, K/32] int32 sum of xq.

    A block so small that 1 / d overflows (largest |x| below ~4e-37) is quantized as all zero, d = 0
    (x * inf would give infinities, and NaN for its zeros, which no int8 holds).
    A block holding a NaN or an infinity gets the scale NaN or inf and zero quants (converting
    NaN to int8 would give an arbitrary number), so the matmul's output is NaN there: a broken
    activation reaches the logits instead of being hidden as a finite value.

    Serial: it is microseconds per token, and a parallel region costs more than that, far more
    on a busy machine, where a region ends only when its last thread gets a core again."""
    T, K = x.shape
    for t in range(T):
        for b in range(K // 32):
            amax = np.float32(0.0)
            for j in range(32):
                a = abs(x[t, b * 32 + j])
                amax = a if (a > amax) | (a != a) else amax    # max, but a NaN sticks
            d = amax / np.float32(127.0)
            inv = np.float32(1.0) / d if d != 0 else np.float32(0.0)
            if inv > np.float32(3.4028234663852886e38):        # 1 / d overflowed (amax < ~4e-37):
                d = np.float32(0.0)                            # the block counts as zero
                inv = np.float32(0.0)
            s = np.int32(0)
            if amax <= np.float32(3.4028234663852886e38):      # finite
                for j in range(32):
                    q = np.int8(np.rint(x[t, b * 32 + j] * inv))
                    xq[t, b * 32 + j] = q
                    s += np.int32(q)   # int32: with the JIT off numpy would add int8s, and overflow
            else:
                for j in range(32):
                    xq[t, b * 32 + j] = 0
            xd[t, b] = d
            xs[t, b] = s


@njit(cache=True, inline="always")
def add_block_q8_0(acc, p, s, d, ti, g):
    """acc[r] += one 32-block's term for each row r of tile ti: p[r] the block's exact integer sum
    of q x, s the activations' scale, g the weights' group; the float32 expression and its order
    are the numpy reference's (glmcpu.quants.matmul_ref). Shared by the portable and AVX2 kernels."""
    for r in range(acc.shape[0]):
        acc[r] += np.float32(p[r]) * (s * f16_to_f32(d[ti, g, r]))


# ---------------------------------------------------------------- 4-bit core (q4_0 and q4_1)

@njit(cache=True, inline="always")  # inlined into the kernels: a call per block costs 10-50%
def add_block_q4(acc, p, corr, s, sxi, d, m, ti, g):
    """acc[r] += one 32-block's term for each row r of tile ti: pt = int16(p[r] - corr) is the
    block's integer sum of (q - 8) x (corr: what the caller's int16 lanes still hold beyond it,
    0 for the portable kernels), s the activations' scale, sxi their integer sum, g the
    weights' group. q4_0 when m has zero size ((q - 8) d), q4_1 otherwise (q d + m). The float32
    expression and its order are the numpy reference's (glmcpu.quants.matmul_ref)."""
    if m.size > 0:
        sx = np.float32(sxi)
        sx8 = np.float32(8.0) * sx
        for r in range(acc.shape[0]):
            pt = np.int16(p[r] - corr)
            acc[r] += s * (f16_to_f32(d[ti, g, r]) * (np.float32(pt) + sx8) + f16_to_f32(m[ti, g, r]) * sx)
    else:
        for r in range(acc.shape[0]):
            pt = np.int16(p[r] - corr)
            acc[r] += np.float32(pt) * (s * f16_to_f32(d[ti, g, r]))


@njit(cache=True, parallel=True)
def matvec_q4(out, scr_acc, scr_p, xq, xd, xs, qs, d, m, n_out):
    """out [n_out] = W x. q4_0 when m has zero size (value (q - 8) d), q4_1 otherwise (q d + m).

    scr_acc [n_ranges, R] float32, scr_p [n_ranges, R] int16."""
    n_tiles, n_sub, _, R = qs.shape
    spg = n_sub // d.shape[1]
    n_ranges = scr_p.shape[0]
    per = (n_tiles + n_ranges - 1) // n_ranges
    for c in prange(n_ranges):
        acc = scr_acc[c]
        p = scr_p[c]
        for ti in range(c * per, min(n_tiles, (c + 1) * per)):
            for r in range(R):
                acc[r] = 0.0
            for sb in range(n_sub):
                g = sb // spg
                for r in range(R):
                    p[r] = 0
                for j in range(16):
                    x0 = np.int16(xq[0, sb * 32 + j])
                    x1 = np.int16(xq[0, sb * 32 + 16 + j])
                    for r in range(R):
                        q = qs[ti, sb, j, r]
                        p[r] = np.int16(p[r] + (np.int16(q & 15) - 8) * x0 + (np.int16(q >> 4) - 8) * x1)
                add_block_q4(acc, p, 0, xd[0, sb], xs[0, sb], d, m, ti, g)
            for r in range(min(R, n_out - ti * R)):
                out[ti * R + r] = acc[r]


@njit(cache=True, parallel=True)
def matmul_q4(out, scr_acc, scr_p, scr_w, xq, xd, xs, qs, d, m, n_out):
    """out [T, n_out] = x W^T for T tokens. scr_acc [n_ranges, TB, R] float32,
    scr_p [n_ranges, TB, R] int16, scr_w [n_ranges, 32, R] int16 (a sub-block, unpacked once
    and used by a block of TB tokens; four products per int16 update)."""
    n_tiles, n_sub, _, R = qs.shape
    T = xq.shape[0]
    spg = n_sub // d.shape[1]
    n_ranges = scr_p.shape[0]
    per = (n_tiles + n_ranges - 1) // n_ranges
    for c in prange(n_ranges):
        acc = scr_acc[c]
        p = scr_p[c]
        w = scr_w[c]
        for ti in range(c * per, min(n_tiles, (c + 1) * per)):
            r_end = min(R, n_out - ti * R)
            for t0 in range(0, T, TB):
                nt = min(TB, T - t0)
                for t in range(nt):
                    for r in range(R):
                        acc[t, r] = 0.0
                for sb in range(n_sub):
                    g = sb // spg
                    for j in range(16):
                        for r in range(R):
                            q = qs[ti, sb, j, r]
                            w[j, r] = np.int16(q & 15) - 8
                            w[j + 16, r] = np.int16(q >> 4) - 8
                    for t in range(nt):
                        xb = xq[t0 + t, sb * 32: sb * 32 + 32]
                        pt = p[t]
                        for r in range(R):
                            pt[r] = 0
                        for j in range(0, 32, 4):
                            a0 = np.int16(xb[j])
                            a1 = np.int16(xb[j + 1])
                            a2 = np.int16(xb[j + 2])
                            a3 = np.int16(xb[j + 3])
                            for r in range(R):
                                pt[r] = np.int16(pt[r] + w[j, r] * a0 + w[j + 1, r] * a1
                                                 + w[j + 2, r] * a2 + w[j + 3, r] * a3)
                        add_block_q4(acc[t], pt, 0, xd[t0 + t, sb], xs[t0 + t, sb], d, m, ti, g)
                for t in range(nt):
                    for r in range(r_end):
                        out[t0 + t, ti * R + r] = acc[t, r]


# ---------------------------------------------------------------- q8_0

@njit(cache=True, parallel=True)
def matvec_q8_0(out, scr_acc, scr_p, xq, xd, qs, d, n_out):
    """out [n_out] = W x; scr_acc [n_ranges, R] float32, scr_p [n_ranges, R] int32."""
    n_tiles, n_sub, _, R = qs.shape
    spg = n_sub // d.shape[1]
    n_ranges = scr_p.shape[0]
    per = (n_tiles + n_ranges - 1) // n_ranges
    for c in prange(n_ranges):
        acc = scr_acc[c]
        p = scr_p[c]
        for ti in range(c * per, min(n_tiles, (c + 1) * per)):
            for r in range(R):
                acc[r] = 0.0
            for sb in range(n_sub):
                g = sb // spg
                for r in range(R):
                    p[r] = 0
                for j in range(0, 32, 2):
                    x0 = np.int16(xq[0, sb * 32 + j])
                    x1 = np.int16(xq[0, sb * 32 + j + 1])
                    for r in range(R):
                        # two int8 products fit int16 (<= 2 * 127 * 127); sums of 32 need int32
                        p[r] += np.int32(np.int16(qs[ti, sb, j, r]) * x0 + np.int16(qs[ti, sb, j + 1, r]) * x1)
                add_block_q8_0(acc, p, xd[0, sb], d, ti, g)
            for r in range(min(R, n_out - ti * R)):
                out[ti * R + r] = acc[r]


@njit(cache=True, parallel=True)
def matmul_q8_0(out, scr_acc, scr_p, scr_w, xq, xd, qs, d, n_out):
    """out [T, n_out]; scr_acc [n_ranges, TB, R] float32, scr_p [n_ranges, TB, R] int32,
    scr_w [n_ranges, 32, R] int16."""
    n_tiles, n_sub, _, R = qs.shape
    T = xq.shape[0]
    spg = n_sub // d.shape[1]
    n_ranges = scr_p.shape[0]
    per = (n_tiles + n_ranges - 1) // n_ranges
    for c in prange(n_ranges):
        acc = scr_acc[c]
        p = scr_p[c]
        w = scr_w[c]
        for ti in range(c * per, min(n_tiles, (c + 1) * per)):
            r_end = min(R, n_out - ti * R)
            for t0 in range(0, T, TB):
                nt = min(TB, T - t0)
                for t in range(nt):
                    for r in range(R):
                        acc[t, r] = 0.0
                for sb in range(n_sub):
                    g = sb // spg
                    for j in range(32):
                        for r in range(R):
                            w[j, r] = qs[ti, sb, j, r]
                    for t in range(nt):
                        xb = xq[t0 + t, sb * 32: sb * 32 + 32]
                        pt = p[t]
                        for r in range(R):
                            pt[r] = 0
                        for j in range(0, 32, 4):
                            a0 = np.int16(xb[j])
                            a1 = np.int16(xb[j + 1])
                            a2 = np.int16(xb[j + 2])
                            a3 = np.int16(xb[j + 3])
                            for r in range(R):
                                # a pair of int8 products fits int16 (<= 2 * 127 * 127)
                                pt[r] += np.int32(w[j, r] * a0 + w[j + 1, r] * a1) \
                                    + np.int32(w[j + 2, r] * a2 + w[j + 3, r] * a3)
                        add_block_q8_0(acc[t], pt, xd[t0 + t, sb], d, ti, g)
                for t in range(nt):
                    for r in range(r_end):
                        out[t0 + t, ti * R + r] = acc[t, r]


# ---------------------------------------------------------------- dequantization of rows

@njit(cache=True)
def dequant_row_q4(out, qs, d, m, row):
    """out [K] float32 <- row ``row`` of a tiled q4_0 (m empty) / q4_1 matrix."""
    n_tiles, n_sub, _, R = qs.shape
    spg = n_sub // d.shape[1]
    ti, r = row // R, row % R
    for sb in range(n_sub):
        g = sb // spg
        dd = f16_to_f32(d[ti, g, r])
        mm = f16_to_f32(m[ti, g, r]) if m.size > 0 else np.float32(-8.0) * dd
        for j in range(16):
            q = qs[ti, sb, j, r]
            out[sb * 32 + j] = np.float32(q & 15) * dd + mm
            out[sb * 32 + 16 + j] = np.float32(q >> 4) * dd + mm


@njit(cache=True)
def dequant_row_q8_0(out, qs, d, row):
    n_tiles, n_sub, _, R = qs.shape
    spg = n_sub // d.shape[1]
    ti, r = row // R, row % R
    for sb in range(n_sub):
        dd = f16_to_f32(d[ti, sb // spg, r])
        for j in range(32):
            out[sb * 32 + j] = np.float32(qs[ti, sb, j, r]) * dd


@njit(cache=True)
def embed_q4(out, qs, d, m, ids):
    for t in range(ids.shape[0]):
        dequant_row_q4(out[t], qs, d, m, ids[t])


@njit(cache=True)
def embed_q8_0(out, qs, d, ids):
    for t in range(ids.shape[0]):
        dequant_row_q8_0(out[t], qs, d, ids[t])
