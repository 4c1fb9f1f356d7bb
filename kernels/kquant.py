"""Kernels for the K-quant types q4_K, q5_K, q6_K (ggml's block layouts, glmcpu/kquants.py).

Weights are ggml's rows as they are: w [n_out, n_in / 256 * block bytes] uint8. Activations are
quantized per 256-block to q8_K (``quantize_q8_K``: int8 values, a float32 scale, int32 sums of
16) and each dot product is glmcpu.kquants.kernel_dot: ggml's integers (per super-block the exact
sum isum of scale * q * a, and for q4_K / q5_K summ of the minimums times the activation sums),
then in float32, one operation at a time, sumf += (d * d8) * isum and sumf -= (dmin * d8) * summ,
super-block by super-block. No fastmath (a fused multiply-add would change bits): these equal
kernel_dot bit for bit.

matmul_*: out [T, n_out] for T >= 1 tokens, parallel over ranges of rows; each weight row is
unpacked once into per-range scratch (q * sub-block scale as int32, and per super-block d, dmin
and the minimums) and reused for every token. Scratch (first axis: range): rq [n, K] int32,
rd [n, K/256] float32, rdm [n, K/256] float32, rm [n, K/256 * 16] int32.
"""
import numpy as np
from numba import njit, prange

from .f16 import f16_to_f32

QK_K = 256


@njit(cache=True, parallel=True)  # no fastmath: must equal glmcpu.kquants bit for bit
def quantize_q8_K(aq, ad, asum, x):
    """x [T, K] float32 -> aq [T, K] int8, ad [T, K/256] float32, asum [T, K/16] int32 (ggml's
    quantize_row_q8_K_ref: d = max / -127 with max the signed value of the first largest |x|,
    q = min(127, round-half-even(x * (-127 / max))); an all-zero block is d = 0, q = 0)."""
    T, K = x.shape
    for t in prange(T):
        for b in range(K // QK_K):
            o = b * QK_K
            amax = np.float32(0.0)
            vmax = np.float32(0.0)
            for j in range(QK_K):
                a = abs(x[t, o + j])
                if a > amax:
                    amax = a
                    vmax = x[t, o + j]
            if amax == 0:
                ad[t, b] = np.float32(0.0)
                for j in range(QK_K):
                    aq[t, o + j] = 0
                for g in range(16):
                    asum[t, b * 16 + g] = 0
                continue
            iscale = np.float32(np.float32(-127.0) / vmax)
            for g in range(16):
                s = np.int32(0)
                for j in range(16):
                    v = np.float32(iscale * x[t, o + g * 16 + j])
                    q = np.int32(np.rint(v))
                    if q > 127:
                        q = 127
                    aq[t, o + g * 16 + j] = np.int8(q)
                    s += q
                asum[t, b * 16 + g] = s
            ad[t, b] = np.float32(np.float32(1.0) / iscale)


@njit(cache=True, inline="always")
def _f16_at(w, r, o):
    return f16_to_f32(np.uint16(np.int32(w[r, o]) | (np.int32(w[r, o + 1]) << 8)))


@njit(cache=True, inline="always")
def _scale_min_k4(w, r, o, j):
    """ggml's get_scale_min_k4: the 6-bit scale and minimum of sub-block j of the q4_K / q5_K
    super-block at w[r, o:] (their 12 bytes start at o + 4)."""
    if j < 4:
        return np.int32(w[r, o + 4 + j] & 63), np.int32(w[r, o + 8 + j] & 63)
    return (np.int32((w[r, o + 8 + j] & 15) | ((w[r, o + j] >> 6) << 4)),
            np.int32((w[r, o + 8 + j] >> 4) | ((w[r, o + 4 + j] >> 6) << 4)))


@njit(cache=True, inline="always")
def _unpack_k45(rq, rd, rdm, rm, w, r, bpb, high_bits):
    """Row r of q4_K (bpb 144) / q5_K (176): rq[e] = q_e * sc[sub-block of e], rd/rdm[i] = d/dmin,
    rm[16 i + g] = the minimum of the sub-block holding 16-group g (ggml's m[g / 2])."""
    nb = w.shape[1] // bpb
    for i in range(nb):
        o = i * bpb
        rd[i] = _f16_at(w, r, o)
        rdm[i] = _f16_at(w, r, o + 2)
        for j in range(8):
            sc, mn = _scale_min_k4(w, r, o, j)
            rm[16 * i + 2 * j] = mn
            rm[16 * i + 2 * j + 1] = mn
            shift = 4 * (j % 2)
            qs = o + bpb - 128 + 32 * (j // 2)
            for l in range(32):
                v = np.int32((w[r, qs + l] >> shift) & 15)
                if high_bits:
                    v |= np.int32((w[r, o + 16 + l] >> j) & 1) << 4
                rq[QK_K * i + 32 * j + l] = v * sc


@njit(cache=True, inline="always")
def _q6_at(w, r, o, h, k, l):
    """q - 32 of element 128h + 32k + l of the q6_K block at w[r, o:]."""
    lo = w[r, o + 64 * h + 32 * (k % 2) + l]
    low = np.int32(lo & 15) if k < 2 else np.int32(lo >> 4)
    high = np.int32((w[r, o + 128 + 32 * h + l] >> (2 * k)) & 3)
    return (low | (high << 4)) - 32


@njit(cache=True, inline="always")
def _unpack_q6(rq, rd, w, r):
    """Row r of q6_K: rq[e] = (q_e - 32) * scale[e / 16], rd[i] = d."""
    nb = w.shape[1] // 210
    for i in range(nb):
        o = i * 210
        rd[i] = _f16_at(w, r, o + 208)
        for h in range(2):
            for k in range(4):
                for l in range(32):
                    e = 128 * h + 32 * k + l
                    rq[QK_K * i + e] = _q6_at(w, r, o, h, k, l) * np.int32(np.int8(w[r, o + 192 + e // 16]))


@njit(cache=True, inline="always")
def _dot_row(rq, rd, rdm, rm, aq, ad, asum, t, nb, with_min):
    """The dot of one row (unpacked) with token t, super-block by super-block: the exact integer
    sum isum, then sumf += (d * d8) * isum and, q4_K / q5_K, sumf -= (dmin * d8) * summ."""
    sumf = np.float32(0.0)
    for i in range(nb):
        base = QK_K * i
        isum = np.int32(0)
        for e in range(QK_K):
            isum += rq[base + e] * np.int32(aq[t, base + e])
        d = np.float32(rd[i] * ad[t, i])
        sumf = np.float32(sumf + np.float32(d * np.float32(isum)))
        if with_min:
            summ = np.int32(0)
            for g in range(16):
                summ += asum[t, 16 * i + g] * rm[16 * i + g]
            dmin = np.float32(rdm[i] * ad[t, i])
            sumf = np.float32(sumf - np.float32(dmin * np.float32(summ)))
    return sumf


@njit(cache=True, parallel=True)  # no fastmath
def matmul_kquant(out, rq, rd, rdm, rm, w, aq, ad, asum, kind):
    """out [T, n_out] = each q4_K (kind 4) / q5_K (5) / q6_K (6) row of w dotted with each token's
    q8_K activations (aq, ad, asum from quantize_q8_K), as glmcpu.kquants.kernel_dot."""
    T = aq.shape[0]
    n_out = w.shape[0]
    bpb = 144 if kind == 4 else (176 if kind == 5 else 210)
    nb = w.shape[1] // bpb
    n_ranges = rq.shape[0]
    per = (n_out + n_ranges - 1) // n_ranges
    for c in prange(n_ranges):
        for r in range(c * per, min(n_out, (c + 1) * per)):
            if kind == 6:
                _unpack_q6(rq[c], rd[c], w, r)
            else:
                _unpack_k45(rq[c], rd[c], rdm[c], rm[c], w, r, bpb, kind == 5)
            for t in range(T):
                out[t, r] = _dot_row(rq[c], rd[c], rdm[c], rm[c], aq, ad, asum, t, nb, kind != 6)


@njit(cache=True)  # no fastmath
def dequant_rows_kquant(out, w, ids, kind):
    """out [len(ids), K] float32 = rows ids of w dequantized as ggml's dequantize_row_<type>:
    q4_K / q5_K (d * sc) * q - (dmin * m); q6_K (d * scale) * (q - 32)."""
    bpb = 144 if kind == 4 else (176 if kind == 5 else 210)
    nb = w.shape[1] // bpb
    for n in range(ids.shape[0]):
        r = ids[n]
        for i in range(nb):
            o = i * bpb
            if kind == 6:
                d = _f16_at(w, r, o + 208)
                for h in range(2):
                    for k in range(4):
                        for l in range(32):
                            e = 128 * h + 32 * k + l
                            sc = np.float32(np.int8(w[r, o + 192 + e // 16]))
                            out[n, QK_K * i + e] = np.float32(np.float32(d * sc) * np.float32(_q6_at(w, r, o, h, k, l)))
                continue
            d = _f16_at(w, r, o)
            dmin = _f16_at(w, r, o + 2)
            for j in range(8):
                sc, mn = _scale_min_k4(w, r, o, j)
                d1 = np.float32(d * np.float32(sc))
                m1 = np.float32(dmin * np.float32(mn))
                shift = 4 * (j % 2)
                qs = o + bpb - 128 + 32 * (j // 2)
                for l in range(32):
                    v = np.int32((w[r, qs + l] >> shift) & 15)
                    if kind == 5:
                        v |= np.int32((w[r, o + 16 + l] >> j) & 1) << 4
                    out[n, QK_K * i + 32 * j + l] = np.float32(np.float32(d1 * np.float32(v)) - m1)


# ---------------------------------------------------------------- q5_0 (ggml rows; int8 activations per 32)

@njit(cache=True, inline="always")
def _u32_at(w, r, o):
    """The little-endian uint32 at bytes o .. o + 3 of row r (a q5_0 / q5_1 block's high bits)."""
    return np.uint32(w[r, o]) | (np.uint32(w[r, o + 1]) << np.uint32(8)) | \
        (np.uint32(w[r, o + 2]) << np.uint32(16)) | (np.uint32(w[r, o + 3]) << np.uint32(24))


@njit(cache=True, inline="always")
def _q5_at(w, r, qh, qs, j):
    """Value j (0 .. 31, unsigned) of a q5_0 / q5_1 block of row r: the low nibble of byte qs + j
    (j < 16) or the high nibble of byte qs + j - 16, with bit j of its high bits qh on top."""
    byte = np.int32(w[r, qs + (j & 15)])
    nibble = byte & 15 if j < 16 else byte >> 4
    return nibble | (np.int32((qh >> np.uint32(j)) & np.uint32(1)) << 4)


@njit(cache=True, parallel=True)  # no fastmath: equals glmcpu.quants.matmul_ref("q5_0") bit for bit
def matmul_q5_0(out, rq, rd, w, xq, xd):
    """out [T, n_out] for ggml's q5_0 rows w [n_out, K/32 * 22] and the int8 activations of
    kernels.quant.quantize_act (xq [T, K], xd [T, K/32]): per 32-block the exact integer sum of
    (q - 16) * xq, then acc = acc + float(isum) * (xd * d), block by block. rq [n, K] int32 and
    rd [n, K/32] float32: per-range scratch for the unpacked row."""
    T = xq.shape[0]
    n_out = w.shape[0]
    nb = w.shape[1] // 22
    n_ranges = rq.shape[0]
    per = (n_out + n_ranges - 1) // n_ranges
    for c in prange(n_ranges):
        q = rq[c]
        dd = rd[c]
        for r in range(c * per, min(n_out, (c + 1) * per)):
            for b in range(nb):
                o = b * 22
                dd[b] = _f16_at(w, r, o)
                qh = _u32_at(w, r, o + 2)
                for j in range(32):
                    q[32 * b + j] = _q5_at(w, r, qh, o + 6, j) - 16
            for t in range(T):
                acc = np.float32(0.0)
                for b in range(nb):
                    isum = np.int32(0)
                    for j in range(32):
                        isum += q[32 * b + j] * np.int32(xq[t, 32 * b + j])
                    acc = np.float32(acc + np.float32(np.float32(isum) * np.float32(xd[t, b] * dd[b])))
                out[t, r] = acc


@njit(cache=True)
def dequant_rows_q5_0(out, w, ids):
    """out [len(ids), K] = rows ids of ggml's q5_0 rows w: (q - 16) * d."""
    nb = w.shape[1] // 22
    for n in range(ids.shape[0]):
        r = ids[n]
        for b in range(nb):
            o = b * 22
            d = _f16_at(w, r, o)
            qh = _u32_at(w, r, o + 2)
            for j in range(32):
                out[n, 32 * b + j] = np.float32(np.float32(_q5_at(w, r, qh, o + 6, j) - 16) * d)
