"""AVX2 kernels for q8_0: ``vpmaddwd`` over sign-extended weight pairs, through LLVM intrinsics.

They equal kernels.quant.matvec_q8_0 / matmul_q8_0 (and so glmcpu.quants.matmul_ref) bit for
bit: the same exact int32 sum per 32-block and row, then the same float32 expression in the same
order, ``acc[r] += float32(p[r]) * (s * f16(d))`` (written here as in kernels.quant, compiled
without fast-math flags).

Layout. The weights are row-tiled, qs[tile, sub, j, r]: the R rows of byte j side by side. The
integer core takes the bytes j and j + 1 of 16 rows (two 16-byte loads, sign-extended to int16,
``vpmovsxbw``), interleaves them per row (``vpunpcklwd`` / ``vpunpckhwd``: int32 lane = the pair
(w_j, w_j+1) of one row) and multiplies by the activation pair (x_j, x_j+1) broadcast to every
int32 lane (``vpmaddwd``): each int32 lane gains w_j x_j + w_j+1 x_j+1 of its own row, exactly
(int16 x int16 products, any int8 values, -128 included), and 16 such steps give the block's sum
with no horizontal adds and no saturation anywhere (|sum| <= 32 * 128 * 128 = 2^19). Why not
vpmaddubsw (the 4-bit kernels' instruction)? It pairs neighbouring bytes, which here are
neighbouring rows; after interleaving, its int16 pair sums (up to 2 * 128 * 127) would still have
to be widened to int32 with a second multiply (vpmaddwd by ones) and need |w| / sign(w) * x first
(vpsignb, wrong for -128): the same two multiplies per 32 products, more instructions, and not
exact for every byte. vpmaddwd on int16 pairs is exact for all int8 inputs.

  - matvec_q8_0_avx2 (one token, bandwidth-bound): every weight byte is loaded once, straight
    from the stored tile; per 16 rows and byte pair: 2 loads with sign extension, 2 interleaves,
    2 vpmaddwd, 2 adds (``madd_q8_lo`` / ``madd_q8_hi``; the interleave leaves rows 0-3, 8-11 in
    one register and 4-7, 12-15 in the other, and ``store8x2`` puts them back in order), 64 rows
    (8 accumulators, whole cache lines) a pass. The activation pair is broadcast straight from
    the int8 activations (``bcast_x8``: vpbroadcastw + vpmovsxbw), once per 64 rows. Each step
    also prefetches two cache lines of the block two ahead (8 KB at R = 128), in memory order:
    one thread then streams at 80-98% of a sum over as many bytes instead of 55-70% (the two
    passes over a block's 128-byte lines look like two strided streams to the hardware
    prefetcher; prefetching the lines in the order the loads meet them helped little).
  - matmul_q8_0_avx2 (T tokens, compute-bound): each 32-block of a tile is interleaved once per
    TA tokens (the float sums of TA tokens stay in scratch: 256 in the model, so once per chunk)
    into scratch (``interleave_q8``: int16 pairs, rows in order), then for each TP tokens its
    activations are widened to int16 (``scr_x``) and a register tile of 4 tokens x 16 rows
    (8 accumulators, 2 weight vectors, 4 activation broadcasts, ``bcast32``: one vpbroadcastd)
    runs over it: every loaded weight vector serves 4 tokens, every broadcast 16 rows, and the
    inner loop is vpmaddwd + vpaddd and loads. Below FEW tokens (a batch of decode rows) the
    copy would serve too few tokens: the matmul then works like the matvec, straight from the
    stored tile, two tokens per interleaved weight pair (``_dot_sub_q8_2``).

Activations can be -128: quantize_act gives -128 quants for a block whose scale amax / 127 is
so small that 1 / scale overflows (amax below ~3.7e-37); the portable kernels multiply them
exactly, and so does vpmaddwd (tests/test_q8_avx2.py has the case).

With the JIT off (NUMBA_DISABLE_JIT=1) each intrinsic is its numpy twin (``*_py``, same lanes,
kernels.nojit), so these kernels run (slowly) in Python too; the model then takes the portable
kernels anyway (kernels.avx2.available() is False).
"""
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .avx2 import _D, _c_array, _elem_ptr, _int, _load, _shuffle, _store, i32x8, prefetch, store8, zero8
from .quant import add_block_q8_0
from .nojit import fallback


_W = ir.VectorType(ir.IntType(16), 16)
_B16 = ir.VectorType(ir.IntType(8), 16)


# shuffle masks over the concatenation of two <16 x i16> (rows of byte j, rows of byte j + 1),
# shared by the LLVM code and the numpy twins
_LO = [k for L in (0, 1) for i in range(4) for k in (8 * L + i, 16 + 8 * L + i)]        # vpunpcklwd
_HI = [k for L in (0, 1) for i in range(4, 8) for k in (8 * L + i, 16 + 8 * L + i)]     # vpunpckhwd
_ROWS = [0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15]   # (lo, hi) int32 lanes -> rows 0..15
_PAIRS = [k for i in range(16) for k in (i, 16 + i)]             # full interleave, rows in order


def _pmaddwd(builder, a, b):
    """vpmaddwd: int32 lane i = a[2i] b[2i] + a[2i+1] b[2i+1] (int16 x int16, exact)."""
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_D, [_W, _W]), "llvm.x86.avx2.pmadd.wd")
    return builder.call(fn, [a, builder.bitcast(b, _W)])


def _sext16(context, builder, arrty, arr, off):
    """The 16 int8 at flat element ``off`` of a C-contiguous int8 array, sign-extended to int16."""
    return builder.sext(_load(context, builder, arrty, arr, off, _B16), _W)


# ---------------------------------------------------------------- numpy twins (JIT off)
# An i32x8 value is an int32 array of 8 lanes; as 16 int16 (x86 is little-endian) lane i is the
# int16 pair (2i, 2i + 1).

def _flat(a):
    return a.reshape(-1)  # a view: the intrinsics take C-contiguous arrays only


def _madd_py(acc, w16, x):
    """acc + vpmaddwd(w16 [16] int16, x as 16 int16), int32 wrapping (never reached here)."""
    p = w16.astype(np.int64) * x.view(np.int16).astype(np.int64)
    return (acc.astype(np.int64) + p[0::2] + p[1::2]).astype(np.int32)


def _pair_rows_py(q, off0, off1):
    """The two 16-row int16 vectors of byte j (at off0) and j + 1 (at off1), concatenated."""
    return np.concatenate([_flat(q)[off0: off0 + 16], _flat(q)[off1: off1 + 16]]).astype(np.int16)


def load8_py(a, off):
    return _flat(a)[off: off + 8].astype(np.int32)


def bcast_x8_py(xq, off):
    return np.tile(_flat(xq)[off: off + 2].astype(np.int16), 8).view(np.int32)


def madd_q8_lo_py(acc, q, off0, off1, x):
    return _madd_py(acc, _pair_rows_py(q, off0, off1)[_LO], x)


def madd_q8_hi_py(acc, q, off0, off1, x):
    return _madd_py(acc, _pair_rows_py(q, off0, off1)[_HI], x)


def store8x2_py(a, off, lo, hi):
    _flat(a)[off: off + 16] = np.concatenate([lo, hi])[_ROWS]


def interleave_q8_py(w, woff, q, off0, off1):
    _flat(w)[woff: woff + 32] = _pair_rows_py(q, off0, off1)[_PAIRS]


def widen32_py(w, woff, xq, xoff):
    _flat(w)[woff: woff + 32] = _flat(xq)[xoff: xoff + 32]


def bcast32_py(a, off):
    return np.tile(_flat(a)[off: off + 2], 8).view(np.int32)


def add8_py(a, b):
    return (a.astype(np.int64) + b).astype(np.int32)


def madd16_py(acc, w, off, x):
    return _madd_py(acc, _flat(w)[off: off + 16], x)


# ---------------------------------------------------------------- intrinsics

@fallback(load8_py)
@intrinsic
def load8(typingctx, a, off):
    """a.flat[off:off+8] (int32) as a vector."""
    if not (_c_array(a, types.int32) and _int(off)):
        return None

    def codegen(context, builder, sig, args):
        return _load(context, builder, sig.args[0], args[0], args[1], _D)
    return i32x8(a, off), codegen


@fallback(bcast_x8_py)
@intrinsic
def bcast_x8(typingctx, xq, off):
    """The int8 pair (xq.flat[off], xq.flat[off+1]), sign-extended to int16, in every int32 lane."""
    if not (_c_array(xq, types.int8) and _int(off)):
        return None

    def codegen(context, builder, sig, args):
        p = _elem_ptr(context, builder, sig.args[0], args[0], args[1])
        v = builder.load(builder.bitcast(p, ir.IntType(16).as_pointer()), align=1)
        v = builder.insert_element(ir.Constant(ir.VectorType(ir.IntType(16), 8), None), v,
                                   ir.Constant(ir.IntType(32), 0))
        v = _shuffle(builder, v, ir.Constant(ir.VectorType(ir.IntType(16), 8), None), [0] * 8)
        v = builder.sext(builder.bitcast(v, _B16), _W)          # x0, x1, x0, x1, ... as int16
        return builder.bitcast(v, _D)
    return i32x8(xq, off), codegen


def _madd_q8(mask):
    @intrinsic
    def impl(typingctx, acc, q, off0, off1, x):
        if not (acc == i32x8 and _c_array(q, types.int8) and _int(off0) and _int(off1) and x == i32x8):
            return None

        def codegen(context, builder, sig, args):
            acc, q, off0, off1, x = args
            a = _sext16(context, builder, sig.args[1], q, off0)
            b = _sext16(context, builder, sig.args[1], q, off1)
            return builder.add(acc, _pmaddwd(builder, _shuffle(builder, a, b, mask), x))
        return i32x8(acc, q, off0, off1, x), codegen
    return impl


madd_q8_lo = fallback(madd_q8_lo_py)(_madd_q8(_LO))
madd_q8_hi = fallback(madd_q8_hi_py)(_madd_q8(_HI))
madd_q8_lo.__doc__ = ("acc + vpmaddwd(the int16 pairs (q.flat[off0 + i], q.flat[off1 + i]) of rows i = 0-3, "
                      "8-11, x): rows 0-3, 8-11 of 16 in the int32 lanes")
madd_q8_hi.__doc__ = "the same for rows 4-7, 12-15"


@fallback(store8x2_py)
@intrinsic
def store8x2(typingctx, a, off, lo, hi):
    """a.flat[off:off+16] = the 16 rows of the (madd_q8_lo, madd_q8_hi) pair, in order (int32)."""
    if not (_c_array(a, types.int32) and _int(off) and lo == i32x8 and hi == i32x8):
        return None

    def codegen(context, builder, sig, args):
        a, off, lo, hi = args
        _store(context, builder, sig.args[0], a, off, _shuffle(builder, lo, hi, _ROWS))
        return context.get_dummy_value()
    return types.none(a, off, lo, hi), codegen


@fallback(interleave_q8_py)
@intrinsic
def interleave_q8(typingctx, w, woff, q, off0, off1):
    """w.flat[woff + 2i] = q.flat[off0 + i], w.flat[woff + 2i + 1] = q.flat[off1 + i] for i < 16
    (int8 -> int16): the bytes j and j + 1 of 16 rows as the int16 pairs vpmaddwd takes, rows in order."""
    if not (_c_array(w, types.int16) and _int(woff) and _c_array(q, types.int8) and _int(off0) and _int(off1)):
        return None

    def codegen(context, builder, sig, args):
        w, woff, q, off0, off1 = args
        a = _sext16(context, builder, sig.args[2], q, off0)
        b = _sext16(context, builder, sig.args[2], q, off1)
        _store(context, builder, sig.args[0], w, woff, _shuffle(builder, a, b, _PAIRS))
        return context.get_dummy_value()
    return types.none(w, woff, q, off0, off1), codegen


@fallback(widen32_py)
@intrinsic
def widen32(typingctx, w, woff, xq, xoff):
    """w.flat[woff:woff+32] = xq.flat[xoff:xoff+32] (int8 -> int16, two vpmovsxbw)."""
    if not (_c_array(w, types.int16) and _int(woff) and _c_array(xq, types.int8) and _int(xoff)):
        return None

    def codegen(context, builder, sig, args):
        w, woff, xq, xoff = args
        v = _load(context, builder, sig.args[2], xq, xoff, ir.VectorType(ir.IntType(8), 32))
        _store(context, builder, sig.args[0], w, woff, builder.sext(v, ir.VectorType(ir.IntType(16), 32)))
        return context.get_dummy_value()
    return types.none(w, woff, xq, xoff), codegen


@fallback(bcast32_py)
@intrinsic
def bcast32(typingctx, a, off):
    """The int16 pair (a.flat[off], a.flat[off+1]) in every int32 lane (one vpbroadcastd)."""
    if not (_c_array(a, types.int16) and _int(off)):
        return None

    def codegen(context, builder, sig, args):
        p = _elem_ptr(context, builder, sig.args[0], args[0], args[1])
        v = builder.load(builder.bitcast(p, ir.IntType(32).as_pointer()), align=1)
        v = builder.insert_element(ir.Constant(_D, None), v, ir.Constant(ir.IntType(32), 0))
        return _shuffle(builder, v, ir.Constant(_D, None), [0] * 8)
    return i32x8(a, off), codegen


@fallback(add8_py)
@intrinsic
def add8(typingctx, a, b):
    """a + b lane by lane (int32, wrapping)."""
    if not (a == i32x8 and b == i32x8):
        return None

    def codegen(context, builder, sig, args):
        return builder.add(args[0], args[1])
    return i32x8(a, b), codegen


@fallback(madd16_py)
@intrinsic
def madd16(typingctx, acc, w, off, x):
    """acc + vpmaddwd(w.flat[off:off+16] (int16), x)."""
    if not (acc == i32x8 and _c_array(w, types.int16) and _int(off) and x == i32x8):
        return None

    def codegen(context, builder, sig, args):
        acc, w, off, x = args
        return builder.add(acc, _pmaddwd(builder, _load(context, builder, sig.args[1], w, off, _W), x))
    return i32x8(acc, w, off, x), codegen


# ---------------------------------------------------------------- kernels

PF_BLOCKS = 2  # decode: prefetch this many 32-blocks (2 x 4 KB at R = 128) ahead of the loads

@njit(cache=True)
def _dot_sub_q8_1(p, qs, q0, xq, x0, R):
    """p[r] = the exact sum over the 32 bytes j of row r of the 32-block at flat offset q0 of qs
    ([32, R] row-tiled int8) times xq.flat[x0 + j] (one token). 64 rows at a time (8
    accumulators; a 32-row pass when R is an odd multiple of 32), prefetching the block
    PF_BLOCKS ahead in memory order as it goes (two cache lines a step)."""
    ahead = q0 + PF_BLOCKS * 32 * R
    rc = 0
    while rc + 64 <= R:
        a0 = zero8()
        a1 = zero8()
        a2 = zero8()
        a3 = zero8()
        a4 = zero8()
        a5 = zero8()
        a6 = zero8()
        a7 = zero8()
        for jp in range(16):
            b = bcast_x8(xq, x0 + 2 * jp)
            o0 = q0 + 2 * jp * R + rc
            o1 = o0 + R
            pf = ahead + (rc // 64 * 16 + jp) * 128      # 128 bytes a step: the block in order
            prefetch(qs, pf)
            prefetch(qs, pf + 64)
            a0 = madd_q8_lo(a0, qs, o0, o1, b)
            a1 = madd_q8_hi(a1, qs, o0, o1, b)
            a2 = madd_q8_lo(a2, qs, o0 + 16, o1 + 16, b)
            a3 = madd_q8_hi(a3, qs, o0 + 16, o1 + 16, b)
            a4 = madd_q8_lo(a4, qs, o0 + 32, o1 + 32, b)
            a5 = madd_q8_hi(a5, qs, o0 + 32, o1 + 32, b)
            a6 = madd_q8_lo(a6, qs, o0 + 48, o1 + 48, b)
            a7 = madd_q8_hi(a7, qs, o0 + 48, o1 + 48, b)
        store8x2(p, rc, a0, a1)
        store8x2(p, rc + 16, a2, a3)
        store8x2(p, rc + 32, a4, a5)
        store8x2(p, rc + 48, a6, a7)
        rc += 64
    if rc < R:
        a0 = zero8()
        a1 = zero8()
        a2 = zero8()
        a3 = zero8()
        for jp in range(16):
            b = bcast_x8(xq, x0 + 2 * jp)
            o0 = q0 + 2 * jp * R + rc
            o1 = o0 + R
            pf = ahead + (rc // 64 * 16 + jp) * 128      # 128 bytes a step: the block in order
            prefetch(qs, pf)
            prefetch(qs, pf + 64)
            a0 = madd_q8_lo(a0, qs, o0, o1, b)
            a1 = madd_q8_hi(a1, qs, o0, o1, b)
            a2 = madd_q8_lo(a2, qs, o0 + 16, o1 + 16, b)
            a3 = madd_q8_hi(a3, qs, o0 + 16, o1 + 16, b)
        store8x2(p, rc, a0, a1)
        store8x2(p, rc + 16, a2, a3)


@njit(cache=True, parallel=True)
def matvec_q8_0_avx2(out, scr_acc, scr_p, xq, xd, qs, d, n_out):
    """out [n_out] = W x for one token, equal bit for bit to kernels.quant.matvec_q8_0 (same
    arguments: xq [1, K] int8, xd [1, K/32], scr_acc [n_ranges, R] float32, scr_p [n_ranges, R]
    int32). R must be a multiple of 32."""
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
                _dot_sub_q8_1(p, qs, (ti * n_sub + sb) * 32 * R, xq, sb * 32, R)
                add_block_q8_0(acc, p, xd[0, sb], d, ti, g)
            for r in range(min(R, n_out - ti * R)):
                out[ti * R + r] = acc[r]


@njit(cache=True)
def _dot_sub_q8(p, w, xw, nt, R):
    """p.flat[t*R + r] = sum over the 16 int16 pairs of row r of w (interleave_q8's [16, R, 2])
    times the activation pairs xw.flat[t*32 + 2jp] (int16), exactly, for t < nt.
    Register tile: 4 tokens x 16 rows (8 accumulators, 2 weight vectors, 4 broadcasts); a token
    left over: 16 rows in 4 accumulators (even and odd pairs, summed at the end)."""
    R2 = 2 * R
    for rc in range(0, R, 16):
        t = 0
        while t + 4 <= nt:
            a0 = zero8()
            a1 = zero8()
            a2 = zero8()
            a3 = zero8()
            a4 = zero8()
            a5 = zero8()
            a6 = zero8()
            a7 = zero8()
            xo = t * 32
            for jp in range(16):
                wo = jp * R2 + 2 * rc
                b0 = bcast32(xw, xo + 2 * jp)
                b1 = bcast32(xw, xo + 32 + 2 * jp)
                b2 = bcast32(xw, xo + 64 + 2 * jp)
                b3 = bcast32(xw, xo + 96 + 2 * jp)
                a0 = madd16(a0, w, wo, b0)
                a1 = madd16(a1, w, wo + 16, b0)
                a2 = madd16(a2, w, wo, b1)
                a3 = madd16(a3, w, wo + 16, b1)
                a4 = madd16(a4, w, wo, b2)
                a5 = madd16(a5, w, wo + 16, b2)
                a6 = madd16(a6, w, wo, b3)
                a7 = madd16(a7, w, wo + 16, b3)
            store8(p, t * R + rc, a0)
            store8(p, t * R + rc + 8, a1)
            store8(p, (t + 1) * R + rc, a2)
            store8(p, (t + 1) * R + rc + 8, a3)
            store8(p, (t + 2) * R + rc, a4)
            store8(p, (t + 2) * R + rc + 8, a5)
            store8(p, (t + 3) * R + rc, a6)
            store8(p, (t + 3) * R + rc + 8, a7)
            t += 4
        while t < nt:
            a0 = zero8()
            a1 = zero8()
            a2 = zero8()
            a3 = zero8()
            xo = t * 32
            for jp in range(0, 16, 2):
                wo = jp * R2 + 2 * rc
                b0 = bcast32(xw, xo + 2 * jp)
                b1 = bcast32(xw, xo + 2 * jp + 2)
                a0 = madd16(a0, w, wo, b0)
                a1 = madd16(a1, w, wo + 16, b0)
                a2 = madd16(a2, w, wo + R2, b1)
                a3 = madd16(a3, w, wo + R2 + 16, b1)
            store8(p, t * R + rc, add8(a0, a2))
            store8(p, t * R + rc + 8, add8(a1, a3))
            t += 1


@njit(cache=True)
def _dot_sub_q8_2(p, qs, q0, xq, x0, xstride, R):
    """The same for two tokens, xq.flat[x0 + j] and xq.flat[x0 + xstride + j], into p.flat[r] and
    p.flat[R + r]: each interleaved weight pair serves both (32 rows a pass, 8 accumulators)."""
    ahead = q0 + PF_BLOCKS * 32 * R
    for rc in range(0, R, 32):
        a0 = zero8()
        a1 = zero8()
        a2 = zero8()
        a3 = zero8()
        a4 = zero8()
        a5 = zero8()
        a6 = zero8()
        a7 = zero8()
        for jp in range(16):
            b0 = bcast_x8(xq, x0 + 2 * jp)
            b1 = bcast_x8(xq, x0 + xstride + 2 * jp)
            o0 = q0 + 2 * jp * R + rc
            o1 = o0 + R
            prefetch(qs, ahead + (rc // 32 * 16 + jp) * 64)     # a line a step: the block in order
            a0 = madd_q8_lo(a0, qs, o0, o1, b0)
            a1 = madd_q8_hi(a1, qs, o0, o1, b0)
            a2 = madd_q8_lo(a2, qs, o0 + 16, o1 + 16, b0)
            a3 = madd_q8_hi(a3, qs, o0 + 16, o1 + 16, b0)
            a4 = madd_q8_lo(a4, qs, o0, o1, b1)
            a5 = madd_q8_hi(a5, qs, o0, o1, b1)
            a6 = madd_q8_lo(a6, qs, o0 + 16, o1 + 16, b1)
            a7 = madd_q8_hi(a7, qs, o0 + 16, o1 + 16, b1)
        store8x2(p, rc, a0, a1)
        store8x2(p, rc + 16, a2, a3)
        store8x2(p, R + rc, a4, a5)
        store8x2(p, R + rc + 16, a6, a7)


FEW = 10  # matmul: below this many tokens, no interleaved copy (measured: it serves too few tokens to pay)


@njit(cache=True)
def _tile_few(out, acc, p, xq, xd, qs, d, ti, n_out):
    """Tile ti of the matmul for T < FEW tokens, straight from the stored tile (like the matvec):
    two tokens at a time, then one."""
    _, n_sub, _, R = qs.shape
    T, K = xq.shape
    spg = n_sub // d.shape[1]
    for t in range(T):
        for r in range(R):
            acc[t, r] = 0.0
    for sb in range(n_sub):
        g = sb // spg
        q0 = (ti * n_sub + sb) * 32 * R
        t0 = 0
        while t0 < T:
            nt = min(2, T - t0)
            if nt == 2:
                _dot_sub_q8_2(p, qs, q0, xq, t0 * K + sb * 32, K, R)
            else:
                _dot_sub_q8_1(p, qs, q0, xq, t0 * K + sb * 32, R)
            for t in range(nt):
                add_block_q8_0(acc[t0 + t], p[t], xd[t0 + t, sb], d, ti, g)
            t0 += nt
    for t in range(T):
        for r in range(min(R, n_out - ti * R)):
            out[t, ti * R + r] = acc[t, r]


@njit(cache=True)
def _tile_blocked(out, acc, p, w, xw, xq, xd, qs, d, ti, n_out):
    """Tile ti of the matmul: each 32-block interleaved once per TA tokens, then TP tokens at a time."""
    _, n_sub, _, R = qs.shape
    T, K = xq.shape
    TA, TP = acc.shape[0], p.shape[0]
    spg = n_sub // d.shape[1]
    r_end = min(R, n_out - ti * R)
    for ta in range(0, T, TA):
        na = min(TA, T - ta)
        for t in range(na):
            for r in range(R):
                acc[t, r] = 0.0
        for sb in range(n_sub):
            g = sb // spg
            q0 = (ti * n_sub + sb) * 32 * R
            for jp in range(16):
                for rc in range(0, R, 16):
                    o0 = q0 + 2 * jp * R + rc
                    interleave_q8(w, 2 * (jp * R + rc), qs, o0, o0 + R)
            for t0 in range(ta, ta + na, TP):
                nt = min(TP, ta + na - t0)
                for t in range(nt):
                    widen32(xw, t * 32, xq, (t0 + t) * K + sb * 32)
                _dot_sub_q8(p, w, xw, nt, R)
                for t in range(nt):
                    add_block_q8_0(acc[t0 - ta + t], p[t], xd[t0 + t, sb], d, ti, g)
        for t in range(na):
            for r in range(r_end):
                out[ta + t, ti * R + r] = acc[t, r]


@njit(cache=True, parallel=True)
def matmul_q8_0_avx2(out, scr_acc, scr_p, scr_w, scr_x, xq, xd, qs, d, n_out):
    """out [T, n_out] = x W^T, equal bit for bit to kernels.quant.matmul_q8_0. xq [T, K] int8, xd
    [T, K/32] float32 as from quantize_act; per-range scratch: scr_acc [n_ranges, TA, R] float32
    (the float sums of up to TA tokens), scr_p [n_ranges, TP, R] int32 (one 32-block's integer
    sums of up to TP tokens), scr_w [n_ranges, 32, R] int16 (that block of a tile as interleave_q8's
    pairs), scr_x [n_ranges, TP * 32] int16 (its activations of TP tokens, widened). Each block
    of a tile is interleaved once per TA tokens. R must be a multiple of 32; TA >= FEW - 1 and
    TP >= 2 (the few-token path keeps all its tokens in scr_acc)."""
    n_tiles = qs.shape[0]
    T = xq.shape[0]
    n_ranges = scr_p.shape[0]
    per = (n_tiles + n_ranges - 1) // n_ranges
    for c in prange(n_ranges):
        for ti in range(c * per, min(n_tiles, (c + 1) * per)):
            if T < FEW and T <= scr_acc.shape[1] and scr_p.shape[1] >= 2:
                _tile_few(out, scr_acc[c], scr_p[c], xq, xd, qs, d, ti, n_out)
            else:
                _tile_blocked(out, scr_acc[c], scr_p[c], scr_w[c], scr_x[c], xq, xd, qs, d, ti, n_out)
