"""AVX2 kernels for the 4-bit types: ``vpmaddubsw`` through LLVM intrinsics.

Numba has no vector types, and LLVM does not derive ``vpmaddubsw`` (32 unsigned x signed byte
products, summed in pairs into 16 int16 lanes, per instruction) from plain loops, so this
module gives numba one: a 16 x int16 vector value type and four intrinsics over it
(``zero16``, ``bcast16``, ``maddubs``, ``store16``). Used only where the CPU has AVX2: the
choice is made once at load (glmcpu.linear.Workspace); ``kernels.quant`` is the portable path.

The arithmetic equals kernels.quant (and so glmcpu.quants.matmul_ref) bit for bit:
  - a 4-bit byte q of row r holds elements j (low nibble) and j + 16 (high nibble) of a
    32-block. Unpacked, the pair (q & 15, q >> 4) of row r sits next to each other, and the
    activations are paired the same way, xp[t, b*16 + j] = (xq[t, b*32+j], xq[t, b*32+16+j]).
  - maddubs adds (q & 15) x_j + (q >> 4) x_{j+16} (at most 2 * 15 * 127 = 3810 in magnitude,
    so the instruction's saturation never triggers) to an int16 lane, wrapping. After 16 pairs
    the lane holds sum(q x) mod 2^16; subtracting 8 sum(x) mod 2^16 gives sum((q - 8) x) mod
    2^16, and since that sum is at most 32 * 8 * 127 = 32512 in magnitude, the int16 result is
    exactly the portable kernel's integer.
  - the float32 scaling is the same expression in the same order as kernels.quant.

With the JIT off (NUMBA_DISABLE_JIT=1) ``available()`` is False, so the model takes the portable
kernels; each intrinsic still has a numpy twin (``*_py``, same results lane for lane, see
kernels.nojit), so these kernels can be stepped through in Python too.
"""
import os

import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import config, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from .nojit import JIT, fallback
from .quant import TB, add_block_q4


def available(tile_rows=128):
    """True when these kernels can run here: the JIT is on, the CPU numba compiles for has AVX2, the
    tiles are a multiple of 32 rows, and GLMCPU_SIMD is not "off" (the switch to the portable kernels)."""
    if not JIT:   # NUMBA_DISABLE_JIT=1: the numpy twins of the intrinsics would make them crawl
        return False
    if os.environ.get("GLMCPU_SIMD", "").lower() in ("off", "0", "no", "portable"):
        return False
    if tile_rows % 32 or config.CPU_NAME not in (None, "host"):
        return False
    try:
        return bool(llvm_binding.get_host_cpu_features().get("avx2", False))
    except Exception:   # no feature list on this platform: take the portable kernels
        return False


class I16x16(types.Type):
    """An LLVM <16 x i16> value (one ymm register)."""

    def __init__(self):
        super().__init__(name="i16x16")


i16x16 = I16x16()
_V16 = ir.VectorType(ir.IntType(16), 16)
_V8 = ir.VectorType(ir.IntType(8), 32)


@register_model(I16x16)
class _I16x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _V16)


def _elem_ptr(context, builder, arrty, arr, off):
    """Pointer to element ``off`` of a C-contiguous array (flat index)."""
    return builder.gep(context.make_array(arrty)(context, builder, arr).data, [off])


def _c_array(t, dtype):
    return isinstance(t, types.Array) and t.layout == "C" and t.dtype == dtype


def _load(context, builder, arrty, arr, off, vty):
    """The vector of type vty at element ``off`` of a C-contiguous array (unaligned)."""
    p = _elem_ptr(context, builder, arrty, arr, off)
    return builder.load(builder.bitcast(p, vty.as_pointer()), align=1)


def _store(context, builder, arrty, arr, off, v):
    """Store vector v at element ``off`` of a C-contiguous array (unaligned)."""
    p = _elem_ptr(context, builder, arrty, arr, off)
    builder.store(v, builder.bitcast(p, v.type.as_pointer()), align=1)


def _nibbles(builder, qv):
    """(low, high) nibbles of 32 packed bytes, as unsigned bytes."""
    return builder.and_(qv, ir.Constant(_V8, [15] * 32)), builder.lshr(qv, ir.Constant(_V8, [4] * 32))


def _shuffle(builder, a, b, mask):
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), len(mask)), mask))


# shuffle masks (indices into the concatenation of the two operands), shared by the LLVM code
# and the numpy twins
_UNPACK = [k // 2 + (32 if k % 2 else 0) for k in range(64)]                 # (lo_i, hi_i) pairs
_NIB = [[(k // 16) * 16 + 8 * half + (k % 16) // 2 + (32 if k % 2 else 0) for k in range(32)]
        for half in (0, 1)]
_ROWS = list(range(8)) + list(range(16, 24)) + list(range(8, 16)) + list(range(24, 32))


def _maddubs_add(builder, acc, w, x):
    """acc + vpmaddubsw(w unsigned bytes, x signed bytes), wrapping."""
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16, [_V8, _V8]),
                                        "llvm.x86.avx2.pmadd.ub.sw")
    return builder.add(acc, builder.call(fn, [w, builder.bitcast(x, _V8)]))


class I32x8(types.Type):
    """An LLVM <8 x i32> value (one ymm register of int32 lanes): the accumulator type of the
    q8_0 and K-quant kernels (kernels/q8_avx2.py, kernels/kquant_avx2.py)."""

    def __init__(self):
        super().__init__(name="i32x8")


i32x8 = I32x8()
_D = ir.VectorType(ir.IntType(32), 8)


@register_model(I32x8)
class _I32x8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _D)


def _int(t):
    return isinstance(t, types.Integer)


# ---------------------------------------------------------------- numpy twins (JIT off)
# An i16x16 value is an int16 array of 16 lanes; x86 is little-endian, so as 32 bytes lane k is
# byte 2k (low) and byte 2k + 1 (high).

def _flat(a):
    return a.reshape(-1)  # a view: the intrinsics take C-contiguous arrays only


def _maddubs_add_py(acc, w, x):
    """acc + vpmaddubsw(w 32 unsigned bytes, x as 32 signed bytes): pair sums saturated to int16,
    then added to acc wrapping."""
    p = w.astype(np.int32) * x.astype("<i2").view(np.int8).astype(np.int32)
    pairs = np.clip(p[0::2] + p[1::2], -32768, 32767)
    return (acc.astype(np.int32) + pairs).astype(np.int16)          # astype wraps mod 2^16


def _nibbles_py(q, qoff):
    b = _flat(q)[qoff: qoff + 32]
    return np.concatenate([b & 15, b >> 4])


def zero16_py():
    return np.zeros(16, np.int16)


def bcast16_py(a, off):
    return np.full(16, _flat(a)[off], np.int16)


def maddubs_py(acc, w, off, x):
    return _maddubs_add_py(acc, _flat(w)[off: off + 32], x)


def store16_py(a, off, v):
    _flat(a)[off: off + 16] = v


def unpack_nibbles_py(w, woff, q, qoff):
    _flat(w)[woff: woff + 64] = _nibbles_py(q, qoff)[_UNPACK]


def maddubs_nib_lo_py(acc, q, qoff, x):
    return _maddubs_add_py(acc, _nibbles_py(q, qoff)[_NIB[0]], x)


def maddubs_nib_hi_py(acc, q, qoff, x):
    return _maddubs_add_py(acc, _nibbles_py(q, qoff)[_NIB[1]], x)


def store16x2_py(a, off, lo, hi):
    _flat(a)[off: off + 32] = np.concatenate([lo, hi])[_ROWS]


# ---------------------------------------------------------------- intrinsics

def prefetch_py(a, off):
    pass                                    # a hint: no effect on any result


@fallback(prefetch_py)
@intrinsic
def prefetch(typingctx, a, off):
    """prefetcht0 of the cache line holding a.flat[off] (a hint: never faults, even past the end)."""
    if not (isinstance(a, types.Array) and a.layout == "C" and _int(off)):
        return None

    def codegen(context, builder, sig, args):
        i8p = ir.IntType(8).as_pointer()
        p = builder.bitcast(_elem_ptr(context, builder, sig.args[0], args[0], args[1]), i8p)
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0i8")
        builder.call(fn, [p, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])  # read, L1, data
        return context.get_dummy_value()
    return types.none(a, off), codegen


@fallback(zero16_py)
@intrinsic
def zero16(typingctx):
    def codegen(context, builder, sig, args):
        return ir.Constant(_V16, None)
    return i16x16(), codegen


@fallback(bcast16_py)
@intrinsic
def bcast16(typingctx, a, off):
    """The int16 a.flat[off] in all 16 lanes."""
    if not (_c_array(a, types.int16) and isinstance(off, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        v = builder.load(_elem_ptr(context, builder, sig.args[0], args[0], args[1]))
        v = builder.insert_element(ir.Constant(_V16, None), v, ir.Constant(ir.IntType(32), 0))
        return _shuffle(builder, v, ir.Constant(_V16, None), [0] * 16)
    return i16x16(a, off), codegen


@fallback(maddubs_py)
@intrinsic
def maddubs(typingctx, acc, w, off, x):
    """acc + vpmaddubsw(w.flat[off:off+32] as unsigned bytes, x as 32 signed bytes), wrapping."""
    if not (acc == i16x16 and _c_array(w, types.uint8) and isinstance(off, types.Integer) and x == i16x16):
        return None

    def codegen(context, builder, sig, args):
        acc, w, off, x = args
        return _maddubs_add(builder, acc, _load(context, builder, sig.args[1], w, off, _V8), x)
    return i16x16(acc, w, off, x), codegen


@fallback(store16_py)
@intrinsic
def store16(typingctx, a, off, v):
    """a.flat[off:off+16] = v."""
    if not (_c_array(a, types.int16) and isinstance(off, types.Integer) and v == i16x16):
        return None

    def codegen(context, builder, sig, args):
        _store(context, builder, sig.args[0], args[0], args[1], args[2])
        return context.get_dummy_value()
    return types.none(a, off, v), codegen


@fallback(unpack_nibbles_py)
@intrinsic
def unpack_nibbles(typingctx, w, woff, q, qoff):
    """w.flat[woff + 2i] = q.flat[qoff + i] & 15, w.flat[woff + 2i + 1] = q.flat[qoff + i] >> 4
    for i < 32 (32 packed bytes -> 64 unsigned nibbles, each byte's two side by side)."""
    if not (_c_array(w, types.uint8) and _c_array(q, types.uint8)
            and isinstance(woff, types.Integer) and isinstance(qoff, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        w, woff, q, qoff = args
        lo, hi = _nibbles(builder, _load(context, builder, sig.args[2], q, qoff, _V8))
        both = _shuffle(builder, lo, hi, _UNPACK)
        _store(context, builder, sig.args[0], w, woff, both)
        return context.get_dummy_value()
    return types.none(w, woff, q, qoff), codegen


def zero8_py():
    return np.zeros(8, np.int32)


def store8_py(a, off, v):
    _flat(a)[off: off + 8] = v


@fallback(zero8_py)
@intrinsic
def zero8(typingctx):
    """An i32x8 of zeros."""
    def codegen(context, builder, sig, args):
        return ir.Constant(_D, None)
    return i32x8(), codegen


@fallback(store8_py)
@intrinsic
def store8(typingctx, a, off, v):
    """a.flat[off:off+8] = the int32 lanes of v."""
    if not (_c_array(a, types.int32) and _int(off) and v == i32x8):
        return None

    def codegen(context, builder, sig, args):
        _store(context, builder, sig.args[0], args[0], args[1], args[2])
        return context.get_dummy_value()
    return types.none(a, off, v), codegen


# ---------------------------------------------------------------- kernels

@njit(cache=True)
def pair_act(xp, xq):
    """xq [T, K] int8 -> xp [T, K/2] int16: xp[t, b*16+j] has xq[t, b*32+j] in its low byte and
    xq[t, b*32+16+j] in its high byte (the pairing of a 4-bit byte's two nibbles)."""
    T, K = xq.shape
    for t in range(T):
        for b in range(K // 32):
            for j in range(16):
                lo = np.int32(xq[t, b * 32 + j]) & 255
                hi = np.int32(xq[t, b * 32 + 16 + j]) << 8
                xp[t, b * 16 + j] = np.int16(lo | hi)


@njit(cache=True)
def _dot_sub_q4(p, w8, xp, x0, xstride, nt, R):
    """p.flat[t*R + r] = sum over the 16 byte pairs of row r of w8 times the activation pairs
    xp.flat[x0 + t*xstride + j], mod 2^16, for t < nt (w8: [16, R, 2] unsigned nibbles).
    Register tile: 4 tokens x 32 rows (8 accumulators, 2 weight vectors, 4 broadcasts)."""
    R2 = 2 * R
    for rc in range(0, R, 32):
        t = 0
        while t + 4 <= nt:
            a0 = zero16()
            a1 = zero16()
            a2 = zero16()
            a3 = zero16()
            a4 = zero16()
            a5 = zero16()
            a6 = zero16()
            a7 = zero16()
            xo = x0 + t * xstride
            for j in range(16):
                wo = j * R2 + 2 * rc
                b0 = bcast16(xp, xo + j)
                b1 = bcast16(xp, xo + xstride + j)
                b2 = bcast16(xp, xo + 2 * xstride + j)
                b3 = bcast16(xp, xo + 3 * xstride + j)
                a0 = maddubs(a0, w8, wo, b0)
                a1 = maddubs(a1, w8, wo + 32, b0)
                a2 = maddubs(a2, w8, wo, b1)
                a3 = maddubs(a3, w8, wo + 32, b1)
                a4 = maddubs(a4, w8, wo, b2)
                a5 = maddubs(a5, w8, wo + 32, b2)
                a6 = maddubs(a6, w8, wo, b3)
                a7 = maddubs(a7, w8, wo + 32, b3)
            store16(p, t * R + rc, a0)
            store16(p, t * R + rc + 16, a1)
            store16(p, (t + 1) * R + rc, a2)
            store16(p, (t + 1) * R + rc + 16, a3)
            store16(p, (t + 2) * R + rc, a4)
            store16(p, (t + 2) * R + rc + 16, a5)
            store16(p, (t + 3) * R + rc, a6)
            store16(p, (t + 3) * R + rc + 16, a7)
            t += 4
        while t < nt:
            a0 = zero16()
            a1 = zero16()
            xo = x0 + t * xstride
            for j in range(16):
                wo = j * R2 + 2 * rc
                b0 = bcast16(xp, xo + j)
                a0 = maddubs(a0, w8, wo, b0)
                a1 = maddubs(a1, w8, wo + 32, b0)
            store16(p, t * R + rc, a0)
            store16(p, t * R + rc + 16, a1)
            t += 1


@njit(cache=True, parallel=True)
def matmul_q4_avx2(out, scr_acc, scr_p, scr_w8, xp, xd, xs, qs, d, m, n_out):
    """out [T, n_out] = x W^T, equal bit for bit to kernels.quant.matmul_q4. q4_0 when m has
    zero size, q4_1 otherwise. xp [T, K/2] int16 paired activations (pair_act), xd, xs as
    from quantize_act. scr_acc [n_ranges, TB, R] float32, scr_p [n_ranges, TB, R] int16,
    scr_w8 [n_ranges, 32 * R] uint8 (one unpacked sub-block). R must be a multiple of 32."""
    n_tiles, n_sub, _, R = qs.shape
    T = xp.shape[0]
    xstride = xp.shape[1]
    spg = n_sub // d.shape[1]
    n_ranges = scr_p.shape[0]
    per = (n_tiles + n_ranges - 1) // n_ranges
    for c in prange(n_ranges):
        acc = scr_acc[c]
        p = scr_p[c]
        w8 = scr_w8[c]
        for ti in range(c * per, min(n_tiles, (c + 1) * per)):
            r_end = min(R, n_out - ti * R)
            for t0 in range(0, T, TB):
                nt = min(TB, T - t0)
                for t in range(nt):
                    for r in range(R):
                        acc[t, r] = 0.0
                for sb in range(n_sub):
                    g = sb // spg
                    q0 = ((ti * n_sub + sb) * 16) * R
                    for i in range(0, 16 * R, 32):
                        unpack_nibbles(w8, 2 * i, qs, q0 + i)
                    _dot_sub_q4(p, w8, xp, t0 * xstride + sb * 16, xstride, nt, R)
                    for t in range(nt):
                        sxi = xs[t0 + t, sb]
                        add_block_q4(acc[t], p[t], 8 * sxi, xd[t0 + t, sb], sxi, d, m, ti, g)
                for t in range(nt):
                    for r in range(r_end):
                        out[t0 + t, ti * R + r] = acc[t, r]


def _maddubs_nibbles(half):
    @intrinsic
    def impl(typingctx, acc, q, qoff, x):
        if not (acc == i16x16 and _c_array(q, types.uint8) and isinstance(qoff, types.Integer) and x == i16x16):
            return None

        def codegen(context, builder, sig, args):
            acc, q, qoff, x = args
            lo, hi = _nibbles(builder, _load(context, builder, sig.args[1], q, qoff, _V8))
            # vpunpcklbw / vpunpckhbw order: byte pairs of rows 0-7 and 16-23 (half 0) or
            # 8-15 and 24-31 (half 1); store16x2 puts the rows back in order
            w = _shuffle(builder, lo, hi, _NIB[half])
            return _maddubs_add(builder, acc, w, x)
        return i16x16(acc, q, qoff, x), codegen
    return impl


maddubs_nib_lo = fallback(maddubs_nib_lo_py)(_maddubs_nibbles(0))
maddubs_nib_hi = fallback(maddubs_nib_hi_py)(_maddubs_nibbles(1))
maddubs_nib_lo.__doc__ = ("acc + vpmaddubsw(nibble pairs of rows 0-7, 16-23 of the 32 packed bytes "
                          "q.flat[qoff:qoff+32], x)")
maddubs_nib_hi.__doc__ = "the same for rows 8-15, 24-31"


@fallback(store16x2_py)
@intrinsic
def store16x2(typingctx, a, off, lo, hi):
    """a.flat[off:off+32] = the 32 rows of the (maddubs_nib_lo, maddubs_nib_hi) pair, in order."""
    if not (_c_array(a, types.int16) and isinstance(off, types.Integer) and lo == i16x16 and hi == i16x16):
        return None

    def codegen(context, builder, sig, args):
        a, off, lo, hi = args
        v = _shuffle(builder, lo, hi, _ROWS)
        _store(context, builder, sig.args[0], a, off, v)
        return context.get_dummy_value()
    return types.none(a, off, lo, hi), codegen


PF_SUBS = 2   # decode: prefetch the sub-block this many ahead (2 KB each at R = 128)


@njit(cache=True, parallel=True)
def matvec_q4_avx2(out, scr_acc, scr_p, xp, xd, xs, qs, d, m, n_out):
    """out [n_out] = W x for one token, equal bit for bit to kernels.quant.matvec_q4.
    xp [1, K/2] paired activations; scr_acc [n_ranges, R] float32, scr_p [n_ranges, R] int16.
    The loads visit a sub-block's 16 x R bytes in R / 32 strided passes, which the hardware
    prefetcher follows poorly, so each step also prefetches 32 bytes of the sub-block PF_SUBS
    ahead, in memory order (as kernels.q8_avx2's matvec does)."""
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
                q0 = ((ti * n_sub + sb) * 16) * R
                ahead = q0 + PF_SUBS * 16 * R
                for rc in range(0, R, 32):
                    a0 = zero16()
                    a1 = zero16()
                    for j in range(16):
                        prefetch(qs, ahead + (rc // 32 * 16 + j) * 32)   # the block in order, 32 bytes a step
                        b = bcast16(xp, sb * 16 + j)
                        a0 = maddubs_nib_lo(a0, qs, q0 + j * R + rc, b)
                        a1 = maddubs_nib_hi(a1, qs, q0 + j * R + rc, b)
                    store16x2(p, rc, a0, a1)
                add_block_q4(acc, p, 8 * xs[0, sb], xd[0, sb], xs[0, sb], d, m, ti, g)
            for r in range(min(R, n_out - ti * R)):
                out[ti * R + r] = acc[r]


@njit(cache=True, inline="always")
def _dot_sub_q4_direct(p, qs, q0, xp, x0, xstride, nt, R):
    """As _dot_sub_q4, straight from the stored nibbles qs.flat[q0 + j*R + r] (no unpacked copy):
    for a few tokens the copy costs as much as the products. Register tile: 4 tokens x 32 rows."""
    for rc in range(0, R, 32):
        t = 0
        while t + 4 <= nt:
            a0 = zero16()
            a1 = zero16()
            a2 = zero16()
            a3 = zero16()
            a4 = zero16()
            a5 = zero16()
            a6 = zero16()
            a7 = zero16()
            xo = x0 + t * xstride
            for j in range(16):
                qo = q0 + j * R + rc
                b0 = bcast16(xp, xo + j)
                b1 = bcast16(xp, xo + xstride + j)
                b2 = bcast16(xp, xo + 2 * xstride + j)
                b3 = bcast16(xp, xo + 3 * xstride + j)
                a0 = maddubs_nib_lo(a0, qs, qo, b0)
                a1 = maddubs_nib_hi(a1, qs, qo, b0)
                a2 = maddubs_nib_lo(a2, qs, qo, b1)
                a3 = maddubs_nib_hi(a3, qs, qo, b1)
                a4 = maddubs_nib_lo(a4, qs, qo, b2)
                a5 = maddubs_nib_hi(a5, qs, qo, b2)
                a6 = maddubs_nib_lo(a6, qs, qo, b3)
                a7 = maddubs_nib_hi(a7, qs, qo, b3)
            store16x2(p, t * R + rc, a0, a1)
            store16x2(p, (t + 1) * R + rc, a2, a3)
            store16x2(p, (t + 2) * R + rc, a4, a5)
            store16x2(p, (t + 3) * R + rc, a6, a7)
            t += 4
        while t + 2 <= nt:
            a0 = zero16()
            a1 = zero16()
            a2 = zero16()
            a3 = zero16()
            xo = x0 + t * xstride
            for j in range(16):
                qo = q0 + j * R + rc
                b0 = bcast16(xp, xo + j)
                b1 = bcast16(xp, xo + xstride + j)
                a0 = maddubs_nib_lo(a0, qs, qo, b0)
                a1 = maddubs_nib_hi(a1, qs, qo, b0)
                a2 = maddubs_nib_lo(a2, qs, qo, b1)
                a3 = maddubs_nib_hi(a3, qs, qo, b1)
            store16x2(p, t * R + rc, a0, a1)
            store16x2(p, (t + 1) * R + rc, a2, a3)
            t += 2
        if t < nt:
            a0 = zero16()
            a1 = zero16()
            xo = x0 + t * xstride
            for j in range(16):
                qo = q0 + j * R + rc
                b0 = bcast16(xp, xo + j)
                a0 = maddubs_nib_lo(a0, qs, qo, b0)
                a1 = maddubs_nib_hi(a1, qs, qo, b0)
            store16x2(p, t * R + rc, a0, a1)


@njit(cache=True, parallel=True)
def matmul_few_q4_avx2(out, scr_acc, scr_p, xp, xd, xs, qs, d, m, n_out):
    """out [T, n_out] = x W^T for a few tokens (1 <= T <= TB: the rows of several sequences
    decoding together), equal bit for bit to kernels.quant.matmul_q4: the matvec's direct reads
    of the stored nibbles, with a register tile of up to 4 tokens per weight load, instead of
    matmul_q4_avx2's unpacked copy of each sub-block. scr_acc [n_ranges, TB, R] float32,
    scr_p [n_ranges, TB, R] int16."""
    n_tiles, n_sub, _, R = qs.shape
    T = xp.shape[0]
    xstride = xp.shape[1]
    spg = n_sub // d.shape[1]
    n_ranges = scr_p.shape[0]
    per = (n_tiles + n_ranges - 1) // n_ranges
    for c in prange(n_ranges):
        acc = scr_acc[c]
        p = scr_p[c]
        for ti in range(c * per, min(n_tiles, (c + 1) * per)):
            for t in range(T):
                for r in range(R):
                    acc[t, r] = 0.0
            for sb in range(n_sub):
                g = sb // spg
                q0 = ((ti * n_sub + sb) * 16) * R
                for q in range(0, 16 * R, 64):        # the sub-block PF_SUBS ahead, as the matvec
                    prefetch(qs, q0 + PF_SUBS * 16 * R + q)
                _dot_sub_q4_direct(p, qs, q0, xp, sb * 16, xstride, T, R)
                for t in range(T):
                    sxi = xs[t, sb]
                    add_block_q4(acc[t], p[t], 8 * sxi, xd[t, sb], sxi, d, m, ti, g)
            for t in range(T):
                for r in range(min(R, n_out - ti * R)):
                    out[t, ti * R + r] = acc[t, r]
