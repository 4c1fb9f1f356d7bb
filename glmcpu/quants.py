"""Quantization types: the scalar numpy reference (the executable spec of docs/FORMAT.md).

Weights are quantized row by row in groups of ``gs`` consecutive elements (gs = 32, 64 or 128)
with one float16 scale per group (plus a float16 minimum for q4_1). Inside every 32-element
sub-block the element order is ggml's: byte j of a 4-bit sub-block holds element j in its low
nibble and element j + 16 in its high nibble. With gs = 32 the bytes and scales are exactly
ggml's Q8_0 / Q4_0 / Q4_1 (``block_q4_0 = {f16 d; u8 qs[16]}``) with the blocks split into a
quant array and a scale array.

On disk the quant and scale arrays are *row-tiled* (``tile`` / ``untile``): rows are grouped
in tiles of R rows, and for each tile the bytes of the R rows are interleaved so that the R
values of one byte position are contiguous. The kernels then run R rows in the lanes of one
vector with no horizontal sums. Tiling is a byte permutation: no value changes.

Activations (the inputs of a matrix product) are quantized per 32-element block to int8 with a
float32 scale for the fast kernels (``quantize_act``), as ggml's Q8_0 activations are; the
kernels' result is defined as ``matmul_ref``: the float dot product of the dequantized weights
and the dequantized activations.
"""
import numpy as np

QK = 32  # elements per sub-block (the ggml block size)
GROUP_SIZES = (32, 64, 128)


def _roundf(v):
    """C roundf (half away from zero) of float32 values, exactly."""
    v = np.asarray(v, np.float64)
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def _groups(x, gs):
    x = np.asarray(x, np.float32)
    n, k = x.shape
    assert k % gs == 0 and gs % QK == 0, (k, gs)
    assert np.isfinite(x).all(), "NaN or infinity in a tensor to quantize"
    return x.reshape(n, k // gs, gs)


def _pack_nibbles(q):
    """q [n, k] uint8 values 0..15 -> [n, k/2] bytes: per 32-block, byte j = q[j] | q[j+16] << 4."""
    n, k = q.shape
    b = q.reshape(n, k // QK, 2, QK // 2)
    return (b[:, :, 0, :] | (b[:, :, 1, :] << 4)).reshape(n, k // 2).astype(np.uint8)


def _unpack_nibbles(qs):
    n, kh = qs.shape
    b = qs.reshape(n, kh // 16, 16)
    return np.concatenate([b & 15, b >> 4], axis=2).reshape(n, kh * 2)


# ---------------------------------------------------------------- q8_0: int8, d = amax / 127

def quantize_q8_0(x, gs=32):
    """x [n, k] float32 -> (q [n, k] int8, d [n, k/gs] float16)."""
    g = _groups(x, gs)
    amax = np.abs(g).max(axis=2)
    d = (amax / np.float32(127)).astype(np.float32)
    inv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, 1), 0).astype(np.float32)
    q = _roundf(g * inv[:, :, None]).astype(np.int8)
    with np.errstate(over="ignore"):  # an overflow is reported by the converter's check
        return q.reshape(x.shape), d.astype(np.float16)


def dequantize_q8_0(q, d, gs=32):
    n, k = q.shape
    return (q.reshape(n, k // gs, gs).astype(np.float32) * d.astype(np.float32)[:, :, None]).reshape(n, k)


# ---------------------------------------------------------------- q4_0: 4-bit, d = signed max / -8

def quantize_q4_0(x, gs=32):
    """x [n, k] -> (qs [n, k/2] uint8, d [n, k/gs] float16); value = (nibble - 8) * d."""
    g = _groups(x, gs)
    idx = np.abs(g).argmax(axis=2)
    mx = np.take_along_axis(g, idx[:, :, None], axis=2)[:, :, 0]  # the signed value of largest |x|
    d = (mx / np.float32(-8)).astype(np.float32)
    inv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, 1), 0).astype(np.float32)
    v = (g * inv[:, :, None]).astype(np.float32) + np.float32(8.5)
    q = np.minimum(15, np.trunc(v)).astype(np.uint8)  # (int8_t)(x*id + 8.5f), capped at 15
    with np.errstate(over="ignore"):
        return _pack_nibbles(q.reshape(x.shape)), d.astype(np.float16)


def dequantize_q4_0(qs, d, gs=32):
    q = _unpack_nibbles(qs).astype(np.float32) - 8
    n, k = q.shape
    return (q.reshape(n, k // gs, gs) * d.astype(np.float32)[:, :, None]).reshape(n, k)


# ---------------------------------------------------------------- q4_1: 4-bit, d = (max - min) / 15, m = min

def quantize_q4_1(x, gs=32):
    """x [n, k] -> (qs [n, k/2] uint8, d [n, k/gs] float16, m [n, k/gs] float16); value = nibble * d + m."""
    g = _groups(x, gs)
    mn, mx = g.min(axis=2), g.max(axis=2)
    d = ((mx - mn) / np.float32(15)).astype(np.float32)
    inv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, 1), 0).astype(np.float32)
    v = ((g - mn[:, :, None]) * inv[:, :, None]).astype(np.float32) + np.float32(0.5)
    q = np.minimum(15, np.trunc(v)).astype(np.uint8)
    with np.errstate(over="ignore"):
        return _pack_nibbles(q.reshape(x.shape)), d.astype(np.float16), mn.astype(np.float16)


def dequantize_q4_1(qs, d, m, gs=32):
    q = _unpack_nibbles(qs).astype(np.float32)
    n, k = q.shape
    return (q.reshape(n, k // gs, gs) * d.astype(np.float32)[:, :, None]
            + m.astype(np.float32)[:, :, None]).reshape(n, k)


# ---------------------------------------------------------------- q5_0: ggml's block, stored as ggml's rows

Q5_0_BYTES = 22  # block_q5_0 {f16 d; u32 qh; u8 qs[16]}: 32 values


def quantize_q5_0(x):
    """x [n, k] -> ggml's block_q5_0 rows, uint8 [n, k/32 * 22] (quantize_row_q5_0_ref): d = m / -16
    with m the signed value of largest |x|, q = min(31, trunc(x * (1/d) + 16.5)); byte j of qs holds
    q[j] & 15 | (q[j + 16] & 15) << 4, bit j of qh bit 4 of q[j], bit j + 16 that of q[j + 16]."""
    g = _groups(x, QK)
    n, nb, _ = g.shape
    idx = np.abs(g).argmax(axis=2)
    mx = np.take_along_axis(g, idx[:, :, None], axis=2)[:, :, 0]
    d = (mx / np.float32(-16)).astype(np.float32)
    inv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, 1), 0).astype(np.float32)
    q = np.minimum(31, np.trunc((g * inv[:, :, None]).astype(np.float32) + np.float32(16.5))).astype(np.uint32)
    out = np.empty((n, nb, Q5_0_BYTES), np.uint8)
    with np.errstate(over="ignore"):
        out[:, :, 0:2] = d.astype(np.float16).view(np.uint8).reshape(n, nb, 2)
    qh = (((q >> 4) & 1) << np.arange(32, dtype=np.uint32)).sum(axis=2, dtype=np.uint32)
    out[:, :, 2:6] = qh.astype("<u4").view(np.uint8).reshape(n, nb, 4)
    out[:, :, 6:] = ((q[:, :, :16] & 15) | ((q[:, :, 16:] & 15) << 4)).astype(np.uint8)
    return out.reshape(n, nb * Q5_0_BYTES)


def unpack_q5_0(b, k):
    """ggml rows [n, k/32 * 22] -> (q [n, k] int values 0..31, d [n, k/32] float16)."""
    n = b.shape[0]
    blk = np.ascontiguousarray(b).reshape(n, k // QK, Q5_0_BYTES)
    d = blk[:, :, 0:2].copy().view(np.float16)[:, :, 0]
    qh = blk[:, :, 2:6].copy().view("<u4")[:, :, 0]
    qs = blk[:, :, 6:]
    bits = (qh[:, :, None] >> np.arange(32, dtype=np.uint32)) & 1
    q = np.concatenate([qs & 15, qs >> 4], axis=2).astype(np.int32) | (bits.astype(np.int32) << 4)
    return q.reshape(n, k), d


def dequantize_q5_0(b, k):
    """ggml's dequantize_row_q5_0: (q - 16) * d."""
    q, d = unpack_q5_0(b, k)
    n = q.shape[0]
    return ((q.reshape(n, k // QK, QK) - 16).astype(np.float32) * d.astype(np.float32)[:, :, None]).reshape(n, k)


# ---------------------------------------------------------------- q5_1: ggml's block, stored as ggml's rows

Q5_1_BYTES = 24  # block_q5_1 {f16 d; f16 m; u32 qh; u8 qs[16]}: 32 values


def quantize_q5_1(x):
    """x [n, k] -> ggml's block_q5_1 rows, uint8 [n, k/32 * 24] (quantize_row_q5_1_ref): per block
    lo = min, hi = max, d = (hi - lo) / 31, q = trunc((x - lo) * (1/d) + 0.5) (0 when d is 0),
    stored as m = f16(lo), d = f16(d) and the same nibble / high-bit packing as q5_0."""
    g = _groups(x, QK)
    n, nb, _ = g.shape
    lo, hi = g.min(axis=2), g.max(axis=2)
    d = ((hi - lo) / np.float32(31)).astype(np.float32)
    inv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, 1), 0).astype(np.float32)
    v = ((g - lo[:, :, None]).astype(np.float32) * inv[:, :, None]).astype(np.float32) + np.float32(0.5)
    q = np.trunc(v).astype(np.uint32)       # in [0, 31.5]: the C code's (uint8_t) cast, no clamp needed
    out = np.empty((n, nb, Q5_1_BYTES), np.uint8)
    with np.errstate(over="ignore"):
        out[:, :, 0:2] = d.astype(np.float16).view(np.uint8).reshape(n, nb, 2)
        out[:, :, 2:4] = lo.astype(np.float16).view(np.uint8).reshape(n, nb, 2)
    qh = (((q >> 4) & 1) << np.arange(32, dtype=np.uint32)).sum(axis=2, dtype=np.uint32)
    out[:, :, 4:8] = qh.astype("<u4").view(np.uint8).reshape(n, nb, 4)
    out[:, :, 8:] = ((q[:, :, :16] & 15) | ((q[:, :, 16:] & 15) << 4)).astype(np.uint8)
    return out.reshape(n, nb * Q5_1_BYTES)


def unpack_q5_1(b, k):
    """ggml rows [n, k/32 * 24] -> (q [n, k] int values 0..31, d, m [n, k/32] float16)."""
    n = b.shape[0]
    blk = np.ascontiguousarray(b).reshape(n, k // QK, Q5_1_BYTES)
    d = blk[:, :, 0:2].copy().view(np.float16)[:, :, 0]
    m = blk[:, :, 2:4].copy().view(np.float16)[:, :, 0]
    qh = blk[:, :, 4:8].copy().view("<u4")[:, :, 0]
    qs = blk[:, :, 8:]
    bits = (qh[:, :, None] >> np.arange(32, dtype=np.uint32)) & 1
    q = np.concatenate([qs & 15, qs >> 4], axis=2).astype(np.int32) | (bits.astype(np.int32) << 4)
    return q.reshape(n, k), d, m


def dequantize_q5_1(b, k):
    """ggml's dequantize_row_q5_1: q * d + m."""
    q, d, m = unpack_q5_1(b, k)
    n = q.shape[0]
    v = q.reshape(n, k // QK, QK).astype(np.float32) * d.astype(np.float32)[:, :, None] + m.astype(np.float32)[:, :, None]
    return v.reshape(n, k)


# ---------------------------------------------------------------- row tiling (storage layout)

def tile(a, R, per):
    """Row-major [n, c] -> tiled [ceil(n/R), c/per, per, R]: tile t, column-chunk b, byte j, row r
    holds a[t*R + r, b*per + j]. Missing rows of the last tile are zero."""
    n, c = a.shape
    nt = -(-n // R)
    pad = np.zeros((nt * R, c), a.dtype)
    pad[:n] = a
    return np.ascontiguousarray(pad.reshape(nt, R, c // per, per).transpose(0, 2, 3, 1))


def untile(t, n):
    nt, nb, per, R = t.shape
    return t.transpose(0, 3, 1, 2).reshape(nt * R, nb * per)[:n]


# ---------------------------------------------------------------- activations and the kernel contract

def quantize_act(x):
    """x [T, k] float32 -> (xq [T, k] int8, xd [T, k/32] float32): per 32-block, xd = amax / 127,
    xq = rint(x * (1 / xd)) (round half to even), 0 where the block is all zero, and a block so small
    that 1 / xd overflows (largest |x| below ~4e-37) quantized as zero with xd = 0."""
    x = np.asarray(x, np.float32)
    T, k = x.shape
    g = x.reshape(T, k // QK, QK)
    xd = (np.abs(g).max(axis=2) / np.float32(127)).astype(np.float32)
    with np.errstate(over="ignore"):
        inv = np.where(xd != 0, np.float32(1) / np.where(xd != 0, xd, 1), 0).astype(np.float32)
    tiny = np.isinf(inv)
    xd[tiny], inv[tiny] = 0, 0
    xq = np.rint((g * inv[:, :, None]).astype(np.float32)).astype(np.int8)
    return xq.reshape(T, k), xd


def dequantize_act(xq, xd):
    T, k = xq.shape
    return (xq.reshape(T, k // QK, QK).astype(np.float32) * xd[:, :, None]).reshape(T, k)


def matmul_ref(kind, q, d, m, gs, x):
    """What the fast kernels compute, bit for bit: out [T, n] = x W^T for a q8_0 / q4_0 / q4_1
    matrix in row-major (untiled) form q [n, k] int8 or [n, k/2] packed nibbles, d and m
    [n, k/gs] float16 (m only for q4_1); for q5_0 and q5_1, q is ggml's rows and d, m, gs are unused.

    Activations are quantized with quantize_act. For each 32-element sub-block sb (in order) the
    integer sum isum = sum_j w_j * xq_j is exact (w_j = q_j for q8_0, nibble_j - 8 for q4_0 and
    q4_1), and in float32, operation by operation:
        q8_0, q4_0:  acc = acc + float(isum) * (xd[sb] * d[g])
        q4_1:        acc = acc + xd[sb] * (d[g] * (float(isum) + 8 * sx) + m[g] * sx),  sx = float(sum_j xq_j)
        q5_1:        the same with w_j = q_j - 16 and 16 * sx
    where g = sb // (gs / 32) is the weight group holding sub-block sb (q5_0, q5_1: the block).
    """
    x = np.asarray(x, np.float32)
    T, k = x.shape
    xq, xd = quantize_act(x)
    nsb, spg = k // QK, gs // QK
    if kind == "q5_0":  # q: ggml's q5_0 rows; the same formula as q4_0 with w = q - 16
        wq, d = unpack_q5_0(q, k)
        return matmul_ref("q8_0", (wq - 16).astype(np.int8), d, None, QK, x)
    offset = 8
    if kind == "q5_1":  # q: ggml's q5_1 rows; q4_1's formula with w = q - 16
        wq, d, m = unpack_q5_1(q, k)
        w, spg, offset = wq.astype(np.int64) - 16, 1, 16
    elif kind == "q8_0":
        w = q.astype(np.int64)
    else:
        w = _unpack_nibbles(q).astype(np.int64) - 8
    n = w.shape[0]
    isum = np.einsum("nbj,tbj->tnb", w.reshape(n, nsb, QK), xq.reshape(T, nsb, QK).astype(np.int64))
    xs = xq.reshape(T, nsb, QK).astype(np.int64).sum(axis=2).astype(np.float32)   # [T, nsb]
    dd = d.astype(np.float32)
    mm = m.astype(np.float32) if m is not None else None
    acc = np.zeros((T, n), np.float32)
    for sb in range(nsb):
        g = sb // spg
        s = xd[:, sb, None]                                              # [T, 1]
        p = isum[:, :, sb].astype(np.float32)                            # [T, n]
        if kind in ("q4_1", "q5_1"):
            sx = xs[:, sb, None]
            acc = acc + s * (dd[None, :, g] * (p + np.float32(offset) * sx) + mm[None, :, g] * sx)
        else:
            acc = acc + p * (s * dd[None, :, g])
    return acc
