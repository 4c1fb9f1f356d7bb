"""K-quants: q4_K, q5_K, q6_K and the q8_K activations, the numpy reference (the spec).

The bytes are ggml's: a row of n values (n a multiple of 256) is n/256 super-blocks laid end to
end, each exactly ggml's ``block_q4_K`` / ``block_q5_K`` / ``block_q6_K`` / ``block_q8_K``
(little-endian; f16 is IEEE half). ``quantize_<type>`` reproduces ggml's reference quantizers
(``quantize_row_<type>_ref``, what llama.cpp writes when no importance matrix is given) byte for
byte, ``dequantize_<type>`` ggml's ``dequantize_row_<type>`` bit for bit, and
``vec_dot_<type>_q8_K`` ggml's scalar dot products (``ggml_vec_dot_<type>_q8_K_generic``);
``kernel_dot`` is the dot glmcpu's kernels compute (the same integers, one float32 sum per row).

q4_K, 144 bytes = 256 weights (4.5 bits/weight), eight sub-blocks of 32:
    0    f16 d        super-scale of the sub-block scales
    2    f16 dmin     super-scale of the sub-block minimums
    4    u8 scales[12]  eight 6-bit scales sc[j] and eight 6-bit minimums m[j]:
                    j < 4:  sc[j] = b[j] & 63,            m[j] = b[j+4] & 63
                    j >= 4: sc[j] = b[j+4] & 15 | (b[j-4] >> 6) << 4,
                            m[j]  = b[j+4] >> 4 | (b[j]   >> 6) << 4
    16   u8 qs[128]   4-bit q: byte 32c + l holds element 64c + l (low nibble) and 64c + 32 + l (high)
    value of element i in sub-block j:  (d * sc[j]) * q_i - (dmin * m[j])
q5_K, 176 bytes (5.5 bits/weight): d, dmin, scales[12] as q4_K, then u8 qh[32] (bit 2c of byte l is
    bit 4 of element 64c + l, bit 2c+1 that of element 64c + 32 + l), then qs[128] as q4_K; q is 0..31.
q6_K, 210 bytes (6.5625 bits/weight), sixteen sub-blocks of 16:
    0    u8 ql[128]   low 4 bits: byte 64h + l holds element 128h + l (low nibble) and 128h + 64 + l
                      (high); byte 64h + 32 + l holds 128h + 32 + l and 128h + 96 + l
    128  u8 qh[64]    high 2 bits: byte 32h + l, bits 2k..2k+1 belong to element 128h + 32k + l
    192  i8 scales[16]
    208  f16 d
    value: (d * scales[i // 16]) * (q_i - 32)
q8_K, 292 bytes: f32 d, i8 qs[256], i16 bsums[16] (sum of each 16 qs); value d * q_i.

All arithmetic is float32, one IEEE operation at a time in C's order (no fused multiply-add:
ggml builds these functions in ggml-base, without -march, so on x86-64 the compiler emits none),
including the order of every running sum, ggml's ``nearest_int`` bit trick (exact even where its
debug assert would fire) and the C integer conversions (int -> uint8 / int8 keep the low byte).
The search is vectorised over sub-blocks, one numpy operation per C statement, so no bit moves.

``quantize_fast(kind, x)`` gives the same bytes from the numba kernels (kernels/kquant_quantize.py:
about 5x less CPU time per byte than this numpy, on every core): what ``glmcpu convert`` uses.
QUANTIZE stays the numpy reference.
"""
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .errors import GlmcpuError

QK_K = 256
BLOCK_BYTES = {"q4_K": 144, "q5_K": 176, "q6_K": 210, "q8_K": 292}
GGML_TYPE = {"q4_K": 12, "q5_K": 13, "q6_K": 14, "q8_K": 15}   # enum ggml_type
GROUP_MAX_EPS = np.float32(1e-15)
CHUNK = 1024   # super-blocks per numpy pass: the search's temporaries stay in cache

F32 = np.float32
MAGIC = np.float32(12582912)   # 1.5 * 2^23: nearest_int's rounding constant


# ---------------------------------------------------------------- checks and small helpers

def _check_x(x, kind):
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        raise GlmcpuError(f"{kind}: expected a 2-D float32 array [rows, n] to quantize, "
                          f"got {type(x).__name__} of shape {getattr(x, 'shape', '?')}")
    if x.shape[1] % QK_K:
        raise GlmcpuError(f"{kind}: row length {x.shape[1]} is not a multiple of {QK_K} (the K-quant "
                          f"super-block); quantize this tensor with a 32-block type (q8_0, q4_0, q4_1)")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise GlmcpuError(f"{kind}: NaN or infinity in the values to quantize; fix the source tensor")
    return x


def _check_b(b, n, kind):
    """b [rows, n/256 * block] uint8 -> [rows * n/256, block] (a view when possible)."""
    bb = BLOCK_BYTES[kind]
    if not isinstance(n, (int, np.integer)) or n <= 0 or n % QK_K:
        raise GlmcpuError(f"{kind}: row length {n} is not a positive multiple of {QK_K}")
    if not isinstance(b, np.ndarray) or b.dtype != np.uint8 or b.ndim != 2 or b.shape[1] != n // QK_K * bb:
        raise GlmcpuError(f"{kind}: expected uint8 bytes of shape [rows, {n // QK_K * bb}] for rows of "
                          f"{n} values ({bb} bytes per {QK_K}), got {getattr(b, 'dtype', type(b).__name__)} "
                          f"{getattr(b, 'shape', '')}")
    return np.ascontiguousarray(b).reshape(-1, bb)


def nearest_int(f):
    """ggml's nearest_int of float32 values: the low mantissa bits of f + 1.5 * 2^23 (round half
    to even for |f| < 2^22; any other input gives what the C gives in a release build)."""
    v = np.asarray(np.asarray(f, F32) + MAGIC, F32)
    return (v.view(np.int32) & 0x7FFFFF) - 0x400000


def _seqsum(t):
    """t [k, S] float32 -> [S]: ((0 + t[0]) + t[1]) + ... in float32, the C loop's order."""
    acc = np.zeros(t.shape[1], F32)
    for row in t:
        acc += row
    return acc


def _f16(v):
    """float32 -> IEEE half bits (round to nearest even, overflow to inf), as GGML_FP32_TO_FP16."""
    with np.errstate(over="ignore"):
        return np.asarray(v, F32).astype(np.float16)


def _pack_k4_scales(ls, lm):
    """6-bit scales ls [B, 8] and minimums lm [B, 8] (uint8) -> the 12 bytes [B, 12] of q4_K/q5_K."""
    b = np.empty((ls.shape[0], 12), np.uint8)
    b[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    b[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    b[:, 8:12] = (ls[:, 4:] & 15) | ((lm[:, 4:] & 15) << 4)
    return b


def _unpack_k4_scales(b):
    """[B, 12] bytes -> (sc [B, 8], m [B, 8]) uint8, ggml's get_scale_min_k4."""
    sc = np.concatenate([b[:, 0:4] & 63, (b[:, 8:12] & 15) | ((b[:, 0:4] >> 6) << 4)], axis=1)
    m = np.concatenate([b[:, 4:8] & 63, (b[:, 8:12] >> 4) | ((b[:, 4:8] >> 6) << 4)], axis=1)
    return sc, m


# ---------------------------------------------------------------- the searches

def _levels(v, lo, hi, small):
    """clip(nearest_int(v), lo, hi) as float32, v [k, S] float32 (overwritten). small: every |v| is
    known to be < 2^21, where nearest_int(v) is (v + 1.5 * 2^23) - 1.5 * 2^23 exactly in float32
    (the sum lands in [2^23, 2^24), whose spacing is 1); otherwise the bit trick itself."""
    if not small:
        return np.clip(nearest_int(v), lo, hi).astype(F32)
    v += MAGIC
    v -= MAGIC
    return np.clip(v, F32(lo), F32(hi), out=v)


def _small(iscale, span):
    """True when |iscale * x| < 2^21 is certain for every x of a column: span [S] bounds |x| there
    (float rounding is monotonic, so the bound survives it); NaN or overflow answer False."""
    with np.errstate(all="ignore"):
        return bool(np.all(np.abs(iscale) * span < F32(2097152)))


def _make_qkx2_quants(xt, nmax, rmin, rdelta, nstep):
    """ggml's make_qkx2_quants for every sub-block at once, with quantize_row_q4_K/q5_K_ref's
    weights (av_x + |x|, av_x = sqrt(sum x^2 / 32)) and use_mad = false.

    xt [32, S] float32 (column s = sub-block s) -> (L [32, S] int32 in 0..nmax, scale [S], the_min [S]).
    Each step's candidate levels are not kept: the winner's iscale and min are, and its levels are
    recomputed once at the end (the same float operations on the same values)."""
    n, S = xt.shape
    sum_x2 = _seqsum(xt * xt)
    av_x = np.sqrt(sum_x2 / F32(n))
    w = av_x + np.abs(xt)                                            # [32, S] weights

    xlo = xt.min(axis=0)
    mx = xt.max(axis=0)
    mn = np.where(xlo > 0, F32(0), xlo)                              # if (min > 0) min = 0
    sum_w = w[0].copy()
    sum_x = sum_w * xt[0]
    for i in range(1, n):
        sum_w += w[i]
        sum_x += w[i] * xt[i]
    flat = mx == mn

    iscale = F32(nmax) / (mx - mn)
    scale = F32(1) / iscale
    lf = _levels(iscale * (xt - mn), 0, nmax, False)
    diff = (scale * lf + mn) - xt
    best_error = _seqsum(w * (diff * diff))
    vmin = mn.copy()           # ggml's `min`: the search goes on from the best minimum so far
    best_iscale, best_vmin = iscale, mn    # the levels L came from
    v = np.empty_like(xt)
    wl = np.empty_like(xt)
    t = np.empty_like(xt)
    for step in range(nstep + 1):
        iscale = (F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / (mx - vmin)
        np.subtract(xt, vmin, out=v)
        v *= iscale
        lf = _levels(v, 0, nmax, _small(iscale, np.maximum(np.abs(mx - vmin), np.abs(xlo - vmin))))
        np.multiply(w, lf, out=wl)
        sum_l = _seqsum(wl)
        sum_l2 = _seqsum(np.multiply(wl, lf, out=t))
        sum_xl = _seqsum(np.multiply(wl, xt, out=t))
        D = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
        pos = this_min > 0
        this_min = np.where(pos, F32(0), this_min)
        this_scale = np.where(pos, sum_xl / sum_l2, this_scale)
        np.multiply(lf, this_scale, out=t)
        t += this_min
        t -= xt
        t *= t
        t *= w
        cur_error = _seqsum(t)
        better = (D > 0) & (cur_error < best_error)
        best_error = np.where(better, cur_error, best_error)
        scale = np.where(better, this_scale, scale)
        best_iscale = np.where(better, iscale, best_iscale)
        best_vmin = np.where(better, vmin, best_vmin)
        vmin = np.where(better, this_min, vmin)
    L = np.clip(nearest_int(best_iscale * (xt - best_vmin)), 0, nmax)
    L[:, flat] = 0
    scale[flat] = 0
    vmin[flat] = mn[flat]
    return L, scale, -vmin


def _make_qx_quants(xt, nmax):
    """ggml's make_qx_quants(n, nmax, x, L, rmse_type=1, qw=NULL) for every sub-block at once.

    xt [n, S] float32 -> (L [n, S] int32 in 0..2*nmax-1, scale [S])."""
    n, S = xt.shape
    cols = np.arange(S)
    ax = np.abs(xt)
    imax = ax.argmax(axis=0)                                         # first of the largest |x|
    amax = ax[imax, cols]
    vmax = xt[imax, cols]
    zero = amax < GROUP_MAX_EPS
    w = xt * xt
    wx = w * xt
    v = np.empty_like(xt)
    t = np.empty_like(xt)

    def trial(iscale):
        np.multiply(xt, iscale, out=v)
        lf = _levels(v, -nmax, nmax - 1, _small(iscale, amax))
        sumlx = _seqsum(np.multiply(wx, lf, out=t))
        np.multiply(w, lf, out=t)
        np.multiply(t, lf, out=t)
        return sumlx, _seqsum(t)

    iscale = F32(-nmax) / vmax
    sumlx, suml2 = trial(iscale)
    best_iscale = iscale
    scale = np.where(suml2 != 0, sumlx / suml2, F32(0))
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(F32(nmax) + F32(0.1) * F32(step)) / vmax
        sumlx, suml2 = trial(iscale)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        best_iscale = np.where(better, iscale, best_iscale)
        scale = np.where(better, sumlx / suml2, scale)
        best = np.where(better, scale * sumlx, best)
    L = np.clip(nearest_int(best_iscale * xt), -nmax, nmax - 1) + nmax
    L[:, zero] = 0
    scale[zero] = 0
    return L, scale


# ---------------------------------------------------------------- q4_K and q5_K

def _q45_blocks(xb, nmax, rmin, rdelta, nstep):
    """xb [B, 256] -> (d f16 [B], dmin f16 [B], scale bytes [B, 12], L [B, 256] uint8 0..nmax)."""
    B = xb.shape[0]
    xt = np.ascontiguousarray(xb.reshape(B * 8, 32).T)               # [32, B*8]
    L, scales, mins = _make_qkx2_quants(xt, nmax, rmin, rdelta, nstep)
    L = L.T.reshape(B, 8, 32)
    scales = scales.reshape(B, 8)
    mins = mins.reshape(B, 8)
    # running maxima from 0 (`if (scale > max_scale)`): non-positive or NaN entries never win
    max_scale = np.where(scales > 0, scales, F32(0)).max(axis=1)
    max_min = np.where(mins > 0, mins, F32(0)).max(axis=1)
    inv_scale = np.where(max_scale > 0, F32(63) / np.where(max_scale > 0, max_scale, F32(1)), F32(0))
    inv_min = np.where(max_min > 0, F32(63) / np.where(max_min > 0, max_min, F32(1)), F32(0))
    ls = np.minimum(nearest_int(inv_scale[:, None] * scales) & 0xFF, 63).astype(np.uint8)
    lm = np.minimum(nearest_int(inv_min[:, None] * mins) & 0xFF, 63).astype(np.uint8)
    d = _f16(max_scale / F32(63))
    dmin = _f16(max_min / F32(63))
    # requantize every element with the scales as stored
    dj = d.astype(F32)[:, None] * ls.astype(F32)                     # [B, 8]
    dm = dmin.astype(F32)[:, None] * lm.astype(F32)
    live = dj != 0                                                   # `if (!d) continue;`
    l = np.clip(nearest_int((xb.reshape(B, 8, 32) + dm[:, :, None]) / dj[:, :, None]), 0, nmax)
    L = np.where(live[:, :, None], l, L).astype(np.uint8)
    return d, dmin, _pack_k4_scales(ls, lm), L.reshape(B, 256)


def _pack_nibbles_k(L):
    """L [B, 256] (low 4 bits used) -> [B, 128]: byte 32c + l = L[64c + l] | L[64c + 32 + l] << 4."""
    q = L.reshape(-1, 4, 2, 32) & 15
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)


def _k45_bytes(xb, kind, nmax, rmin, rdelta, nstep):
    """xb [B, 256] -> [B, 144 or 176] bytes of q4_K / q5_K."""
    d, dmin, sc, L = _q45_blocks(xb, nmax, rmin, rdelta, nstep)
    o = np.empty((xb.shape[0], BLOCK_BYTES[kind]), np.uint8)
    o[:, 0:2] = d.view(np.uint8).reshape(-1, 2)
    o[:, 2:4] = dmin.view(np.uint8).reshape(-1, 2)
    o[:, 4:16] = sc
    if kind == "q5_K":
        hb = (L.reshape(-1, 4, 2, 32) >> 4) & 1                      # [B, c, half, l]
        shift = (2 * np.arange(4)[:, None] + np.arange(2)[None, :]).astype(np.uint8)
        o[:, 16:48] = (hb << shift[None, :, :, None]).sum(axis=(1, 2), dtype=np.uint8)
    o[:, -128:] = _pack_nibbles_k(L)
    return o


def _quantize(x, kind, threads):
    """Checks, then the super-blocks of x in chunks of CHUNK through _BLOCKS[kind] (chunks on
    `threads` threads: numpy releases the GIL, and chunks share nothing)."""
    x = _check_x(x, kind)
    xb = x.reshape(-1, QK_K)
    out = np.empty((xb.shape[0], BLOCK_BYTES[kind]), np.uint8)
    fn = _BLOCKS[kind]

    def run(s):
        with np.errstate(all="ignore"):
            out[s:s + CHUNK] = fn(xb[s:s + CHUNK])

    starts = range(0, xb.shape[0], CHUNK)
    if threads > 1 and len(starts) > 1:
        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(run, starts))
    else:
        for s0 in starts:
            run(s0)
    return out.reshape(x.shape[0], -1)


def quantize_q4_K(x, threads=1):
    """x [rows, n] float32 (n % 256 == 0) -> [rows, n/256 * 144] uint8, ggml's quantize_row_q4_K_ref:
    per 32-sub-block make_qkx2_quants(nmax 15, rmin -1, rdelta 0.1, nstep 20), then 6-bit scales
    and minimums relative to the largest of each, then every element requantized with them."""
    return _quantize(x, "q4_K", threads)


def quantize_q5_K(x, threads=1):
    """x [rows, n] -> [rows, n/256 * 176] uint8, ggml's quantize_row_q5_K_ref (as q4_K with
    nmax 31, rmin -0.5, rdelta 0.1, nstep 15)."""
    return _quantize(x, "q5_K", threads)


def _dequantize_k45(b, n, kind):
    blk = _check_b(b, n, kind)
    rows = b.shape[0]
    d = blk[:, 0:2].copy().view(np.float16).astype(F32)             # [B, 1]
    dmin = blk[:, 2:4].copy().view(np.float16).astype(F32)
    sc, m = _unpack_k4_scales(blk[:, 4:16])
    qs = blk[:, -128:].reshape(-1, 4, 1, 32)
    q = np.concatenate([qs & 15, qs >> 4], axis=2).reshape(-1, 8, 32)
    if kind == "q5_K":
        qh = blk[:, 16:48]
        bits = (qh[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1   # [B, 8, 32]
        q = q | (bits << 4)
    with np.errstate(all="ignore"):
        d1 = d * sc.astype(F32)                                      # [B, 8]
        m1 = dmin * m.astype(F32)
        y = d1[:, :, None] * q.astype(F32) - m1[:, :, None]
    return y.reshape(rows, n)


def dequantize_q4_K(b, n):
    """b [rows, n/256 * 144] uint8 -> [rows, n] float32, ggml's dequantize_row_q4_K."""
    return _dequantize_k45(b, n, "q4_K")


def dequantize_q5_K(b, n):
    """b [rows, n/256 * 176] uint8 -> [rows, n] float32, ggml's dequantize_row_q5_K."""
    return _dequantize_k45(b, n, "q5_K")


# ---------------------------------------------------------------- q6_K

def _q6_K_bytes(xb):
    """xb [B, 256] -> [B, 210] bytes."""
    B = xb.shape[0]
    xt = np.ascontiguousarray(xb.reshape(B * 16, 16).T)              # [16, B*16]
    L, scales = _make_qx_quants(xt, 32)
    L = L.T.reshape(B, 16, 16)
    scales = scales.reshape(B, 16)
    # running max of |scale| from 0: the first sub-block of largest |scale| wins, NaN never
    a = np.abs(scales)
    a = np.where(a > 0, a, F32(0))
    ib = a.argmax(axis=1)
    max_abs = a[np.arange(B), ib]
    max_scale = np.where(max_abs > 0, scales[np.arange(B), ib], F32(0))
    empty = max_abs < GROUP_MAX_EPS
    iscale = F32(-128) / np.where(empty, F32(1), max_scale)
    d = _f16(F32(1) / iscale)
    sc = (np.minimum(nearest_int(iscale[:, None] * scales), 127) & 0xFF).astype(np.uint8).view(np.int8)
    dj = d.astype(F32)[:, None] * sc.astype(F32)                     # [B, 16]
    live = dj != 0
    l = np.clip(nearest_int(xb.reshape(B, 16, 16) / dj[:, :, None]), -32, 31) + 32
    L = np.where(live[:, :, None], l, L).astype(np.uint8).reshape(B, 2, 4, 32)   # [B, half, k, l]
    out = np.empty((B, 210), np.uint8)
    lo = L & 15
    out[:, 0:128] = (lo[:, :, 0:2] | (lo[:, :, 2:4] << 4)).reshape(B, 128)
    hi = L >> 4
    qh = hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)   # [B, half, l]
    out[:, 128:192] = qh.reshape(B, 64)
    out[:, 192:208] = sc.view(np.uint8)
    out[:, 208:210] = d.view(np.uint8).reshape(B, 2)
    out[empty] = 0                                                   # memset, d = +0
    return out


def quantize_q6_K(x, threads=1):
    """x [rows, n] float32 (n % 256 == 0) -> [rows, n/256 * 210] uint8, ggml's quantize_row_q6_K_ref:
    per 16-sub-block make_qx_quants(nmax 32, rmse_type 1), 8-bit scales relative to the scale of
    largest magnitude (d = max_scale / -128), then every element requantized with them."""
    return _quantize(x, "q6_K", threads)


def _unpack_q6_K(blk):
    """[B, 210] -> (q [B, 256] int8 in -32..31, scales [B, 16] int8, d [B] float32)."""
    B = blk.shape[0]
    ql = blk[:, 0:128].reshape(B, 2, 2, 32)                          # [B, half, which 32, l]
    qh = blk[:, 128:192].reshape(B, 2, 1, 32)
    lo = np.concatenate([ql & 15, ql >> 4], axis=2)                  # [B, half, k, l], k = 0..3
    hi = (qh >> (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]) & 3
    q = (lo | (hi << 4)).astype(np.int8) - np.int8(32)
    scales = blk[:, 192:208].view(np.int8)
    d = blk[:, 208:210].copy().view(np.float16)[:, 0].astype(F32)
    return q.reshape(B, 256), scales, d


def dequantize_q6_K(b, n):
    """b [rows, n/256 * 210] uint8 -> [rows, n] float32, ggml's dequantize_row_q6_K: (d * sc) * q."""
    blk = _check_b(b, n, "q6_K")
    q, scales, d = _unpack_q6_K(blk)
    with np.errstate(all="ignore"):
        ds = d[:, None] * scales.astype(F32)                         # [B, 16]
        y = ds[:, :, None] * q.reshape(-1, 16, 16).astype(F32)
    return y.reshape(b.shape[0], n)


# ---------------------------------------------------------------- q8_K (activations)

def _q8_K_bytes(xb):
    """xb [B, 256] -> [B, 292] bytes of q8_K."""
    B = xb.shape[0]
    ax = np.abs(xb)
    i = ax.argmax(axis=1)                                            # the first of the largest |x|
    amax = ax[np.arange(B), i]
    vmax = xb[np.arange(B), i]
    zero = amax == 0
    iscale = F32(-127) / np.where(zero, F32(1), vmax)
    q = (np.minimum(nearest_int(iscale[:, None] * xb), 127) & 0xFF).astype(np.uint8).view(np.int8)
    d = F32(1) / iscale
    q[zero] = 0
    d = np.where(zero, F32(0), d).astype(F32)
    bsums = q.reshape(B, 16, 16).astype(np.int32).sum(axis=2).astype(np.int16)
    out = np.empty((B, 292), np.uint8)
    out[:, 0:4] = d.astype("<f4").view(np.uint8).reshape(B, 4)
    out[:, 4:260] = q.view(np.uint8)
    out[:, 260:292] = bsums.astype("<i2").view(np.uint8).reshape(B, 32)
    return out


def quantize_q8_K(x, threads=1):
    """x [rows, n] float32 (n % 256 == 0) -> [rows, n/256 * 292] uint8, ggml's quantize_row_q8_K_ref:
    per super-block d = max / -127 with max the signed value of largest |x| (the first one),
    q = min(127, nearest_int(x * (-127 / max))), bsums = sums of 16 q. An all-zero block is d = 0,
    q = 0 and (ggml leaves them unwritten) bsums = 0."""
    return _quantize(x, "q8_K", threads)


def _unpack_q8_K(blk):
    """[B, 292] -> (d [B] float32, q [B, 256] int8, bsums [B, 16] int16)."""
    blk = np.ascontiguousarray(blk)
    d = blk[:, 0:4].copy().view("<f4")[:, 0].astype(F32)
    q = blk[:, 4:260].view(np.int8)
    bsums = blk[:, 260:292].copy().view("<i2").astype(np.int16)
    return d, q, bsums


def dequantize_q8_K(b, n):
    """b [rows, n/256 * 292] uint8 -> [rows, n] float32: d * q."""
    blk = _check_b(b, n, "q8_K")
    d, q, _ = _unpack_q8_K(blk)
    with np.errstate(all="ignore"):
        return (d[:, None] * q.astype(F32)).reshape(b.shape[0], n)


# ---------------------------------------------------------------- the dot products

def _dot_args(w, a, kind):
    bb = BLOCK_BYTES[kind]
    if not isinstance(w, np.ndarray) or w.dtype != np.uint8 or w.ndim != 2 or w.shape[1] % bb:
        raise GlmcpuError(f"vec_dot_{kind}_q8_K: weights must be uint8 [rows, k/256 * {bb}], "
                          f"got {getattr(w, 'dtype', type(w).__name__)} {getattr(w, 'shape', '')}")
    nb = w.shape[1] // bb
    one = isinstance(a, np.ndarray) and a.ndim == 1
    a2 = a[None] if one else a
    if not isinstance(a2, np.ndarray) or a2.dtype != np.uint8 or a2.ndim != 2 or a2.shape[1] != nb * 292:
        raise GlmcpuError(f"vec_dot_{kind}_q8_K: activations must be q8_K bytes [T, {nb * 292}] (or one "
                          f"row) to match weights of {nb * QK_K} columns, got "
                          f"{getattr(a, 'dtype', type(a).__name__)} {getattr(a, 'shape', '')}")
    return w.reshape(-1, bb), nb, a2.reshape(-1, 292), one


def _dot_finish(R, T, nb, aux32, d_w, d_a, dmin_w=None, sumi=None):
    """The float part of ggml's generic K-quant dots, in its order. aux32 [T, R, nb, 8] int,
    d_w/dmin_w [R, nb] float32 (from f16), d_a [T, nb], sumi [T, R, nb] int -> [T, R] float32:
        per super-block i: d = d_w * d_a; sums[l] += d * aux32[l] (l = 0..7);
                           dmin = dmin_w * d_a; sumf -= dmin * sumi
        then sumf += sums[0], ..., sums[7]."""
    sums = np.zeros((T, R, 8), F32)
    sumf = np.zeros((T, R), F32)
    for i in range(nb):
        d = d_w[None, :, i] * d_a[:, None, i]                        # [T, R]
        sums += d[:, :, None] * aux32[:, :, i, :].astype(F32)
        if sumi is not None:
            dmin = dmin_w[None, :, i] * d_a[:, None, i]
            sumf -= dmin * sumi[:, :, i].astype(F32)
    for lane in range(8):
        sumf += sums[:, :, lane]
    return sumf


def _rowsum_finish(R, T, nb, isum, d_w, d_a, dmin_w=None, summ=None):
    """The float part of glmcpu's K-quant dots (kernel_dot). isum [T, R, nb] int (the super-block's
    exact integer sum of scale * q * a), d_w/dmin_w [R, nb] float32, d_a [T, nb], summ [T, R, nb]
    int -> [T, R] float32: per super-block i, in order,
        sumf += (d_w * d_a) * float32(isum);  sumf -= (dmin_w * d_a) * float32(summ)."""
    sumf = np.zeros((T, R), F32)
    for i in range(nb):
        d = d_w[None, :, i] * d_a[:, None, i]                        # [T, R]
        sumf += d * isum[:, :, i].astype(F32)
        if summ is not None:
            dmin = dmin_w[None, :, i] * d_a[:, None, i]
            sumf -= dmin * summ[:, :, i].astype(F32)
    return sumf


def _vec_dot(w, a, kind, order="ggml"):
    wb, nb, ab, one = _dot_args(w, a, kind)
    R, T = w.shape[0], ab.shape[0] // nb
    da, aq, bsums = _unpack_q8_K(ab)
    da = da.reshape(T, nb)
    aq = aq.reshape(T, nb, 32, 8).astype(np.int64)                    # element 8k + lane
    if kind == "q6_K":
        q, scales, d = _unpack_q6_K(wb)
        wq = q.astype(np.int64).reshape(-1, 16, 16) * scales.astype(np.int64)[:, :, None]
        dmin = sumi = None
    else:
        d = wb[:, 0:2].copy().view(np.float16)[:, 0].astype(F32)
        dmin = wb[:, 2:4].copy().view(np.float16)[:, 0].astype(F32).reshape(R, nb)
        sc, m = _unpack_k4_scales(wb[:, 4:16])
        qs = wb[:, -128:].reshape(-1, 4, 1, 32)
        q = np.concatenate([qs & 15, qs >> 4], axis=2).reshape(-1, 8, 32)
        if kind == "q5_K":
            bits = (wb[:, 16:48][:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
            q = q | (bits << 4)
        wq = q.astype(np.int64) * sc.astype(np.int64)[:, :, None]
        # sumi = sum_j bsums[j] * m[j / 2]
        sumi = np.einsum("rbj,tbj->trb", np.repeat(m.astype(np.int64), 2, axis=1).reshape(R, nb, 16),
                         bsums.astype(np.int64).reshape(T, nb, 16))
    wq = wq.reshape(R, nb, 32, 8)
    aux32 = np.einsum("rbkl,tbkl->trbl", wq, aq)                     # exact integers
    with np.errstate(all="ignore"):
        if order == "ggml":
            out = _dot_finish(R, T, nb, aux32, d.reshape(R, nb), da, dmin, sumi)
        else:
            out = _rowsum_finish(R, T, nb, aux32.sum(axis=3), d.reshape(R, nb), da, dmin, sumi)
    return out[0] if one else out


def vec_dot_q4_K_q8_K(w_bytes, a_bytes):
    """Dot products of q4_K weight rows w_bytes [R, k/256 * 144] with q8_K activation rows
    a_bytes [T, k/256 * 292] (or one row [k/256 * 292]) -> float32 [T, R] (or [R]), bit for bit
    as ggml_vec_dot_q4_K_q8_K_generic: per super-block the integer sums aux32[l] (l = 0..7,
    lane l takes elements l, l+8, ...: sum of sc[j] * q * a, exact) and sumi = sum bsums[j] * m[j/2];
    in float32, sums[l] += (d * d8) * aux32[l], sumf -= (dmin * d8) * sumi, super-block by
    super-block, and at the end sumf += sums[0] ... sums[7] in order (see _dot_finish)."""
    return _vec_dot(w_bytes, a_bytes, "q4_K")


def vec_dot_q5_K_q8_K(w_bytes, a_bytes):
    """As vec_dot_q4_K_q8_K for q5_K weights [R, k/256 * 176] (ggml_vec_dot_q5_K_q8_K_generic)."""
    return _vec_dot(w_bytes, a_bytes, "q5_K")


def vec_dot_q6_K_q8_K(w_bytes, a_bytes):
    """As vec_dot_q4_K_q8_K for q6_K weights [R, k/256 * 210] (ggml_vec_dot_q6_K_q8_K_generic):
    aux32[l] sums scales[j] * (q - 32) * a, no minimum term; sumf = 0 + sums[0] + ... + sums[7]."""
    return _vec_dot(w_bytes, a_bytes, "q6_K")


def kernel_dot(kind, w_bytes, a_bytes):
    """The dot products glmcpu's K-quant kernels compute (kernels/kquant.py, kernels/kquant_avx2.py;
    their spec): kind "q4_K" / "q5_K" / "q6_K" weight rows w_bytes [R, k/256 * block bytes] with
    q8_K activation rows a_bytes [T, k/256 * 292] (or one row) -> float32 [T, R] (or [R]).
    The integers are ggml's: per super-block isum = sum of sc[j] * q * a (q - 32 for q6_K), exact,
    and for q4_K / q5_K summ = sum bsums[j] * m[j/2]. The float part is one running float32 sum per
    row, super-block by super-block: sumf += (d * d8) * float32(isum), then sumf -= (dmin * d8) *
    float32(summ) - the order of a kernel that keeps each super-block's integer sum whole (in
    ggml's generic dot, vec_dot_*, the sum is split over eight float32 lanes, a layout the SIMD
    kernels would pay a shuffle per 32 weights to reproduce). The two differ by float32 rounding
    only (tests/test_kquant_types.py bounds it)."""
    return _vec_dot(w_bytes, a_bytes, kind, order="rowsum")


_BLOCKS = {"q4_K": lambda xb: _k45_bytes(xb, "q4_K", 15, -1.0, 0.1, 20),
           "q5_K": lambda xb: _k45_bytes(xb, "q5_K", 31, -0.5, 0.1, 15),
           "q6_K": _q6_K_bytes, "q8_K": _q8_K_bytes}
QUANTIZE = {"q4_K": quantize_q4_K, "q5_K": quantize_q5_K, "q6_K": quantize_q6_K, "q8_K": quantize_q8_K}
DEQUANTIZE = {"q4_K": dequantize_q4_K, "q5_K": dequantize_q5_K, "q6_K": dequantize_q6_K,
              "q8_K": dequantize_q8_K}
VEC_DOT = {"q4_K": vec_dot_q4_K_q8_K, "q5_K": vec_dot_q5_K_q8_K, "q6_K": vec_dot_q6_K_q8_K}


def quantize_fast(kind, x):
    """QUANTIZE[kind](x), the same bytes, from the numba kernels (kernels/kquant_quantize.py):
    x [rows, n] float32 (n % 256 == 0) -> [rows, n/256 * BLOCK_BYTES[kind]] uint8, in parallel
    over chunks of super-blocks. With the JIT off (NUMBA_DISABLE_JIT=1) the kernels would run as
    plain Python, far slower than numpy, so the numpy reference answers instead."""
    from glmcpu.kernels import kquant_quantize as KK
    from glmcpu.kernels.nojit import JIT
    if kind not in BLOCK_BYTES:
        raise GlmcpuError(f"unknown K-quant {kind!r}; the K-quants are {', '.join(BLOCK_BYTES)}")
    if not JIT:
        return QUANTIZE[kind](x)
    x = _check_x(x, kind)
    xb = x.reshape(-1, QK_K).view()
    xb.flags.writeable = False  # always read-only: numba compiles a second version for writable input
    out = np.empty((xb.shape[0], BLOCK_BYTES[kind]), np.uint8)
    if kind == "q4_K":
        KK.quantize_k45(out, xb, 15, F32(-1.0), F32(0.1), 20, KK.CHUNK)
    elif kind == "q5_K":
        KK.quantize_k45(out, xb, 31, F32(-0.5), F32(0.1), 15, KK.CHUNK)
    elif kind == "q6_K":
        KK.quantize_q6_K(out, xb, KK.CHUNK)
    else:
        KK.quantize_q8_K_rows(out, xb)
    return out.reshape(x.shape[0], -1)
