"""AVX2 kernels for the K-quant types q4_K, q5_K, q6_K (ggml's rows as stored, q8_K activations).

They equal the portable kernels (kernels/kquant.py, and so glmcpu.kquants.kernel_dot) bit for bit.
kernel_dot keeps ggml's integers, and per super-block of 256 one exact integer sum isum of
scale * q * a, then in float32 sumf += (d * d8) * float(isum) and, q4_K / q5_K, sumf -= (dmin *
d8) * float(summ) (the minimums times the activations' sub-block sums). Integer sums are exact in
any order, so the SIMD part may put any products in any int32 lane and sum the eight lanes at the
end of the super-block (``hsum8``). (ggml's generic dot instead splits isum into eight float32
lanes by position mod 8; reproducing that needed a shuffle of every 32 weights and cost the
decode kernels about 30%.)

Decode (``matvec_kquant_avx2``, one token, bandwidth-bound): straight from the stored rows, 32
stored bytes at a time. q4_K / q5_K: the low nibbles are one sub-block, the high nibbles the next
(q5_K ors in bit 4 from its high-bit plane, ``hbits``); one vpmaddubsw of each with the plain q8_K
activations and one vpmaddwd by that sub-block's scale (``dot_s``; the eight scale pairs decoded
at once from the 12 packed bytes, ``k4_scales``, which also returns summ). q6_K: 32 values of one
chunk (low nibbles or high, ored with their 2-bit plane), one vpmaddwd by the two scales of its
halves (``dot_s2``); the values are taken as q (0..63) and the -32 is applied once per super-block,
as 32 * sum(scale * q8_K's 16-sums) (``q6_scales``). Each super-block prefetches PF_BYTES ahead.

Prefill (``matmul_kquant_avx2``, T tokens, compute-bound): a tile of RT rows has each super-block
unpacked once per block of TB tokens into scratch, then a register tile of 1 row x 8 tokens
(q4_K / q5_K) or 2 rows x 4 tokens (q6_K) runs over it:
  - q4_K / q5_K in pair order: for the two sub-blocks A, B of one stored byte (low and high
    nibble), each in Q order (``loadq``: byte 4v + k holds position v + 8k), int32 lane v holds
    (A_v, A_{v+8}, B_v, B_{v+8}) in one register and (A_{v+16}, A_{v+24}, B_{v+16}, B_{v+24}) in
    another (``pair_lo`` / ``pair_hi``), the activations permuted to match once per token
    (``permute_q8_K``); the two vpmaddubsw are summed in int16 (at most 4 * 31 * 127) and one
    vpmaddwd by (sc_A, sc_B) scales both sub-blocks: 3 multiply instructions per 64 weights
    instead of 4 (``dot2_sc``). The minimums' summ is summed in float32 over rows, exactly (every
    partial sum is an integer below 2^24).
  - q6_K takes q - 32 as the signed side and a + 128 as the unsigned one, and each row's
    128 * sum(scale * (q - 32)) once per super-block (``dot_c128``) - no per-token correction in
    the inner loop.
Every int16 result is within range (vpmaddubsw never saturates here: at most 2 * 255 * 32 or
2 * 63 * 127), and every int32 sum below 2^31; the numpy twins model saturation and wrapping
anyway. The float steps are fmul then fadd, no fast-math flags (LLVM contracts nothing into an
FMA): the portable kernel's operations, one at a time.

matmul_q5_0_avx2: ggml's q5_0 rows (the ffn_down of GLM's q4_k_m: 13696 is no multiple of 256),
bit for bit as kernels.kquant.matmul_q5_0: per 32-block one vpmaddubsw of q (0..31) and the int8
activations, a horizontal sum, less 16 * (the activations' sum), then the reference's float term;
8 tokens at a time in the lanes of one vector (the float term is element-wise per token).

Each intrinsic has a numpy twin (``*_py``, kernels.nojit) with the same result lane for lane.
"""
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from .avx2 import _D, _c_array, _elem_ptr, _int, _load, _shuffle, _store, i32x8, prefetch, zero8
from .f16 import f16_to_f32, f16_to_f32_py
from .kquant import QK_K, _scale_min_k4
from .nojit import fallback


class I8x32(types.Type):
    """An LLVM <32 x i8> value (one ymm register of bytes)."""

    def __init__(self):
        super().__init__(name="i8x32")


class F32x8(types.Type):
    """An LLVM <8 x float> value (one ymm register of float32 lanes)."""

    def __init__(self):
        super().__init__(name="f32x8")


i8x32 = I8x32()
f32x8 = F32x8()
_B = ir.VectorType(ir.IntType(8), 32)
_W = ir.VectorType(ir.IntType(16), 16)
_F = ir.VectorType(ir.FloatType(), 8)


@register_model(I8x32)
class _I8x32Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _B)


@register_model(F32x8)
class _F32x8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(ir.FloatType(), 8))


RT = 16    # matmul: rows per tile (even)
TB = 32    # matmul: tokens per block (each super-block of a tile is unpacked once per block)
PF_BYTES = 2048   # matvec: prefetch this far ahead of the super-block being read
PAD = 64   # bytes added to each token's row of permuted activations (see matmul_kquant_avx2)

# Q order: byte 4v + k of a chunk holds position v + 8k (class v in int32 lane v)
QPERM = [v + 8 * k for v in range(8) for k in range(4)]
QPERM_ARR = np.array(QPERM, np.int64)
_DWORDS = [0, 2, 4, 6, 1, 3, 5, 7]
_TRANSPOSE = [4 * (b % 4) + b // 4 for b in range(16)] * 2
assert [4 * _DWORDS[16 * (q // 16) // 4 + _TRANSPOSE[q] // 4] + _TRANSPOSE[q] % 4 for q in range(32)] == QPERM


def _bytes_array(t):
    return isinstance(t, types.Array) and t.layout == "C" and t.dtype in (types.uint8, types.int8)


def _splat(builder, vty, v):
    """vty with the scalar v in every lane."""
    n = vty.count
    v = builder.insert_element(ir.Constant(vty, None), v, ir.Constant(ir.IntType(32), 0))
    return _shuffle(builder, v, ir.Constant(vty, None), [0] * n)


def _x86(builder, name, ret, args):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, [a.type for a in args]), name)
    return builder.call(fn, args)


# ---------------------------------------------------------------- numpy twins (JIT off)
# An i8x32 value is a uint8 array of 32 lanes, an i32x8 value an int32 array of 8.

def _fl(a):
    return a.reshape(-1)


def loadq_py(a, off):
    return _fl(a)[off: off + 32].view(np.uint8)[QPERM_ARR].copy()


def load32_py(a, off):
    return _fl(a)[off: off + 32].view(np.uint8).copy()


def store32_py(a, off, v):
    _fl(a)[off: off + 32] = v.view(_fl(a).dtype)


def nib_lo_py(v):
    return v & np.uint8(15)


def nib_hi_py(v):
    return v >> np.uint8(4)


def hbits_py(v, shift, mask):
    return ((v >> np.uint8(shift)) & np.uint8(mask)) << np.uint8(4)


def or32_py(a, b):
    return a | b


def _madd_py(p16, sp):
    """vpmaddwd(p16 int16 [16], the int32 sp as an int16 pair in every lane) -> int32 [8]."""
    s = np.array([sp], np.int32).view(np.int16).astype(np.int64)
    p = p16.astype(np.int64)
    return (p[0::2] * s[0] + p[1::2] * s[1]).astype(np.int32)     # wraps like the instruction


def _maddubs_py(w, x):
    p = w.astype(np.int32) * x.view(np.int8).astype(np.int32)
    return np.clip(p[0::2] + p[1::2], -32768, 32767).astype(np.int16)


def dot_su_py(acc, w, x, xoff, sp, spoff):
    p = _maddubs_py(_fl(x)[xoff: xoff + 32].view(np.uint8), w)
    return (acc.astype(np.int64) + _madd_py(p, _fl(sp)[spoff])).astype(np.int32)


def dot_c128_py(acc, w, sp, spoff):
    p = _maddubs_py(np.full(32, 128, np.uint8), w)
    return (acc.astype(np.int64) + _madd_py(p, _fl(sp)[spoff])).astype(np.int32)


def add8_py(v, c):
    return (v.astype(np.int32) + c).astype(np.uint8)


def dot2_sc_py(acc, w1, w2, x, xoff, sp, spoff):
    p = (_maddubs_py(w1, _fl(x)[xoff: xoff + 32]).astype(np.int32)
         + _maddubs_py(w2, _fl(x)[xoff + 32: xoff + 64])).astype(np.int16)          # vpaddw wraps
    return (acc.astype(np.int64) + _madd_py(p, _fl(sp)[spoff])).astype(np.int32)


def pair_lo_py(a, b):
    return ((a.view("<u4") & np.uint32(0xFFFF)) | (b.view("<u4") << np.uint32(16))).view(np.uint8)


def pair_hi_py(a, b):
    return ((a.view("<u4") >> np.uint32(16)) | (b.view("<u4") & np.uint32(0xFFFF0000))).view(np.uint8)


def fzero8_py():
    return np.zeros(8, np.float32)


def fstore8_py(a, off, v):
    _fl(a)[off: off + 8] = v


def _k4_words(u0, u1, u2):
    """ggml's unpacking of the 12 scale bytes of q4_K / q5_K as three little-endian uint32 words:
    (sc_0..3, sc_4..7, m_0..3, m_4..7), one byte each, in four uint32."""
    k1, k2, k3 = 0x3F3F3F3F, 0x0F0F0F0F, 0x03030303
    return (u0 & k1, (u2 & k2) | (((u0 >> 6) & k3) << 4),
            u1 & k1, ((u2 >> 4) & k2) | (((u1 >> 6) & k3) << 4))


def f16x2_py(w, off):
    h = _fl(w)[off: off + 4].view(np.uint8).copy().view(np.uint16)
    return f16_to_f32_py(h[0]), f16_to_f32_py(h[1])


def _wrap32(v):
    return np.int32((int(v) + 2**31) % 2**32 - 2**31)                 # int32, wrapping


def k4_scales_py(sp, spoff, w, off, a2, a2off):
    u = [int(x) for x in _fl(w)[off: off + 12].view(np.uint8).copy().view("<u4")]
    words = np.array(_k4_words(*u), "<u4").view(np.uint8).astype(np.int64)
    _fl(sp)[spoff: spoff + 8] = words[:8] * 65537
    return _wrap32(np.sum(words[8:] * _fl(a2)[a2off: a2off + 8].astype(np.int64)))


def q6_scales_py(sp, spoff, w, off, a, aoff):
    sc = _fl(w)[off: off + 16].view(np.int8).astype(np.int64)
    _fl(sp)[spoff: spoff + 16] = ((sc & 65535) | (sc << 16)).astype(np.int64).astype(np.uint32).view(np.int32)
    return _wrap32(np.sum(sc * _fl(a)[aoff: aoff + 16].astype(np.int64)))


def dot_s_py(acc, w, x, xoff, sp, spoff):
    p = _maddubs_py(w, _fl(x)[xoff: xoff + 32])
    return (acc.astype(np.int64) + _madd_py(p, _fl(sp)[spoff])).astype(np.int32)


def dot_s2_py(acc, w, x, xoff, sp, spoff):
    p = _maddubs_py(w, _fl(x)[xoff: xoff + 32])
    m = np.concatenate([_madd_py(p[:8], _fl(sp)[spoff])[:4], _madd_py(p[8:], _fl(sp)[spoff + 1])[:4]])
    return (acc.astype(np.int64) + m).astype(np.int32)


def scale8v_py(s, soff, d, a, aoff, a0, a1, a2, a3, a4, a5, a6, a7):
    v = np.array([hsum8_py(x) for x in (a0, a1, a2, a3, a4, a5, a6, a7)], np.int32)
    dv = np.float32(d) * _fl(a)[aoff: aoff + 8]
    with np.errstate(over="ignore", invalid="ignore"):
        _fl(s)[soff: soff + 8] = _fl(s)[soff: soff + 8] + dv * v.astype(np.float32)


def mins8_py(s, soff, dm, a, aoff, mn, moff, mstride, a2, a2off, a2stride):
    summ = np.zeros(8, np.float32)
    for j in range(8):
        summ = summ + np.float32(_fl(mn)[moff + j * mstride]) * _fl(a2)[a2off + j * a2stride: a2off + j * a2stride + 8]
    dmin = np.float32(dm) * _fl(a)[aoff: aoff + 8]
    with np.errstate(over="ignore", invalid="ignore"):
        _fl(s)[soff: soff + 8] = _fl(s)[soff: soff + 8] - dmin * summ


def hsum8_py(v):
    return _wrap32(np.sum(v.astype(np.int64)))


# ---------------------------------------------------------------- intrinsics

@fallback(loadq_py)
@intrinsic
def loadq(typingctx, a, off):
    """The 32 bytes a.flat[off:off+32] in Q order (byte 4v + k <- byte v + 8k)."""
    if not (_bytes_array(a) and _int(off)):
        return None

    def codegen(context, builder, sig, args):
        v = builder.bitcast(_load(context, builder, sig.args[0], args[0], args[1], _B), _D)
        # vpermd: dwords 0, 2, 4, 6 (bytes 0-3 of each 8) to the low half, 1, 3, 5, 7 to the high;
        # then vpshufb transposes each half's 4 x 4 bytes. Explicit x86 intrinsics, so LLVM keeps
        # this 2-instruction form instead of its own 4-instruction lowering of the byte shuffle.
        v = _x86(builder, "llvm.x86.avx2.permd", _D, [v, ir.Constant(_D, _DWORDS)])
        return _x86(builder, "llvm.x86.avx2.pshuf.b", _B, [builder.bitcast(v, _B), ir.Constant(_B, _TRANSPOSE)])
    return i8x32(a, off), codegen


@fallback(load32_py)
@intrinsic
def load32(typingctx, a, off):
    """The 32 bytes a.flat[off:off+32] as they are."""
    if not (_bytes_array(a) and _int(off)):
        return None

    def codegen(context, builder, sig, args):
        return _load(context, builder, sig.args[0], args[0], args[1], _B)
    return i8x32(a, off), codegen


@fallback(store32_py)
@intrinsic
def store32(typingctx, a, off, v):
    """a.flat[off:off+32] = the 32 bytes of v."""
    if not (_bytes_array(a) and _int(off) and v == i8x32):
        return None

    def codegen(context, builder, sig, args):
        _store(context, builder, sig.args[0], args[0], args[1], args[2])
        return context.get_dummy_value()
    return types.none(a, off, v), codegen


@fallback(nib_lo_py)
@intrinsic
def nib_lo(typingctx, v):
    """v & 15, byte by byte."""
    if v != i8x32:
        return None

    def codegen(context, builder, sig, args):
        return builder.and_(args[0], ir.Constant(_B, [15] * 32))
    return i8x32(v), codegen


@fallback(nib_hi_py)
@intrinsic
def nib_hi(typingctx, v):
    """v >> 4 (unsigned), byte by byte."""
    if v != i8x32:
        return None

    def codegen(context, builder, sig, args):
        return builder.lshr(args[0], ir.Constant(_B, [4] * 32))
    return i8x32(v), codegen


@fallback(hbits_py)
@intrinsic
def hbits(typingctx, v, shift, mask):
    """((v >> shift) & mask) << 4, byte by byte (unsigned; shift < 8): the high bits of q5_K / q6_K."""
    if not (v == i8x32 and _int(shift) and _int(mask)):
        return None

    def codegen(context, builder, sig, args):
        v, shift, mask = args
        i8 = ir.IntType(8)
        s = _splat(builder, _B, builder.trunc(shift, i8))
        m = _splat(builder, _B, builder.trunc(mask, i8))
        return builder.shl(builder.and_(builder.lshr(v, s), m), ir.Constant(_B, [4] * 32))
    return i8x32(v, shift, mask), codegen


@fallback(or32_py)
@intrinsic
def or32(typingctx, a, b):
    """a | b, byte by byte."""
    if not (a == i8x32 and b == i8x32):
        return None

    def codegen(context, builder, sig, args):
        return builder.or_(args[0], args[1])
    return i8x32(a, b), codegen


def _madd_sp(context, builder, sig_sp, sp, spoff, p):
    """vpmaddwd(p, the int32 sp.flat[spoff] in every lane)."""
    s = builder.load(_elem_ptr(context, builder, sig_sp, sp, spoff))
    return _x86(builder, "llvm.x86.avx2.pmadd.wd", _D, [p, builder.bitcast(_splat(builder, _D, s), _W)])


@fallback(dot_su_py)
@intrinsic
def dot_su(typingctx, acc, w, x, xoff, sp, spoff):
    """acc + vpmaddwd(vpmaddubsw(x.flat[xoff:xoff+32] unsigned, w signed), the int32 sp.flat[spoff] as
    an int16 pair in every lane)."""
    if not (acc == i32x8 and w == i8x32 and _c_array(x, types.uint8) and _int(xoff)
            and _c_array(sp, types.int32) and _int(spoff)):
        return None

    def codegen(context, builder, sig, args):
        acc, w, x, xoff, sp, spoff = args
        p = _x86(builder, "llvm.x86.avx2.pmadd.ub.sw", _W, [_load(context, builder, sig.args[2], x, xoff, _B), w])
        return builder.add(acc, _madd_sp(context, builder, sig.args[4], sp, spoff, p))
    return i32x8(acc, w, x, xoff, sp, spoff), codegen


@fallback(dot_c128_py)
@intrinsic
def dot_c128(typingctx, acc, w, sp, spoff):
    """As dot_su with every unsigned byte 128: acc + vpmaddwd(128 * (pair sums of w signed), sp)."""
    if not (acc == i32x8 and w == i8x32 and _c_array(sp, types.int32) and _int(spoff)):
        return None

    def codegen(context, builder, sig, args):
        acc, w, sp, spoff = args
        p = _x86(builder, "llvm.x86.avx2.pmadd.ub.sw", _W, [ir.Constant(_B, [128] * 32), w])
        return builder.add(acc, _madd_sp(context, builder, sig.args[2], sp, spoff, p))
    return i32x8(acc, w, sp, spoff), codegen


@fallback(add8_py)
@intrinsic
def add8(typingctx, v, c):
    """v + c byte by byte, wrapping."""
    if not (v == i8x32 and _int(c)):
        return None

    def codegen(context, builder, sig, args):
        return builder.add(args[0], _splat(builder, _B, builder.trunc(args[1], ir.IntType(8))))
    return i8x32(v, c), codegen


@fallback(dot2_sc_py)
@intrinsic
def dot2_sc(typingctx, acc, w1, w2, x, xoff, sp, spoff):
    """acc + vpmaddwd(vpmaddubsw(w1, x.flat[xoff:xoff+32]) + vpmaddubsw(w2, x.flat[xoff+32:xoff+64])
    (int16, wrapping), the int32 sp.flat[spoff] as an int16 pair (s0, s1) in every lane)."""
    if not (acc == i32x8 and w1 == i8x32 and w2 == i8x32 and _c_array(x, types.int8) and _int(xoff)
            and _c_array(sp, types.int32) and _int(spoff)):
        return None

    def codegen(context, builder, sig, args):
        acc, w1, w2, x, xoff, sp, spoff = args
        xa = sig.args[3]
        x1 = _load(context, builder, xa, x, xoff, _B)
        x2 = _load(context, builder, xa, x, builder.add(xoff, ir.Constant(xoff.type, 32)), _B)
        p = builder.add(_x86(builder, "llvm.x86.avx2.pmadd.ub.sw", _W, [w1, x1]),
                        _x86(builder, "llvm.x86.avx2.pmadd.ub.sw", _W, [w2, x2]))
        sv = builder.load(_elem_ptr(context, builder, sig.args[5], sp, spoff))
        sv = builder.bitcast(_splat(builder, _D, sv), _W)
        return builder.add(acc, _x86(builder, "llvm.x86.avx2.pmadd.wd", _D, [p, sv]))
    return i32x8(acc, w1, w2, x, xoff, sp, spoff), codegen


def _pair(hi_half):
    @intrinsic
    def impl(typingctx, a, b):
        if not (a == i8x32 and b == i8x32):
            return None

        def codegen(context, builder, sig, args):
            a, b = (builder.bitcast(v, _D) for v in args)
            c16, lo16, hi16 = (ir.Constant(_D, [v] * 8) for v in (16, 0xFFFF, 0xFFFF0000))
            if hi_half:
                v = builder.or_(builder.lshr(a, c16), builder.and_(b, hi16))
            else:
                v = builder.or_(builder.and_(a, lo16), builder.shl(b, c16))
            return builder.bitcast(v, _B)
        return i8x32(a, b), codegen
    return impl


pair_lo = fallback(pair_lo_py)(_pair(False))
pair_hi = fallback(pair_hi_py)(_pair(True))
pair_lo.__doc__ = ("int32 lane v of a and b (i8x32) as two int16 halves (a0, a1), (b0, b1) -> (a0, b0): "
                   "with a, b two chunks in Q order, lane v holds both chunks' positions v, v + 8")
pair_hi.__doc__ = "-> (a1, b1): both chunks' positions v + 16, v + 24"


@fallback(fzero8_py)
@intrinsic
def fzero8(typingctx):
    """An f32x8 of +0.0."""
    def codegen(context, builder, sig, args):
        return ir.Constant(_F, None)
    return f32x8(), codegen


@fallback(fstore8_py)
@intrinsic
def fstore8(typingctx, a, off, v):
    """a.flat[off:off+8] = the float32 lanes of v."""
    if not (_c_array(a, types.float32) and _int(off) and v == f32x8):
        return None

    def codegen(context, builder, sig, args):
        _store(context, builder, sig.args[0], args[0], args[1], args[2])
        return context.get_dummy_value()
    return types.none(a, off, v), codegen


@fallback(dot_s_py)
@intrinsic
def dot_s(typingctx, acc, w, x, xoff, sp, spoff):
    """acc + vpmaddwd(vpmaddubsw(w unsigned, x.flat[xoff:xoff+32] signed), the int32 sp.flat[spoff]
    as an int16 pair in every lane)."""
    if not (acc == i32x8 and w == i8x32 and _c_array(x, types.int8) and _int(xoff)
            and _c_array(sp, types.int32) and _int(spoff)):
        return None

    def codegen(context, builder, sig, args):
        acc, w, x, xoff, sp, spoff = args
        p = _x86(builder, "llvm.x86.avx2.pmadd.ub.sw", _W, [w, _load(context, builder, sig.args[2], x, xoff, _B)])
        return builder.add(acc, _madd_sp(context, builder, sig.args[4], sp, spoff, p))
    return i32x8(acc, w, x, xoff, sp, spoff), codegen


@fallback(dot_s2_py)
@intrinsic
def dot_s2(typingctx, acc, w, x, xoff, sp, spoff):
    """As dot_s with sp.flat[spoff] in int32 lanes 0-3 (bytes 0-15 of w: positions 0..15) and
    sp.flat[spoff + 1] in lanes 4-7 (positions 16..31): q6_K's scales cover 16 weights."""
    if not (acc == i32x8 and w == i8x32 and _c_array(x, types.int8) and _int(xoff)
            and _c_array(sp, types.int32) and _int(spoff)):
        return None

    def codegen(context, builder, sig, args):
        acc, w, x, xoff, sp, spoff = args
        p = _x86(builder, "llvm.x86.avx2.pmadd.ub.sw", _W, [w, _load(context, builder, sig.args[2], x, xoff, _B)])
        two = _load(context, builder, sig.args[4], sp, spoff, ir.VectorType(ir.IntType(32), 2))
        sv = builder.bitcast(_shuffle(builder, two, two, [0, 0, 0, 0, 1, 1, 1, 1]), _W)
        return builder.add(acc, _x86(builder, "llvm.x86.avx2.pmadd.wd", _D, [p, sv]))
    return i32x8(acc, w, x, xoff, sp, spoff), codegen


def _hsum(builder, v):
    """The sum of the 8 int32 lanes of v (wrapping)."""
    v4 = builder.add(_shuffle(builder, v, v, [0, 1, 2, 3]), _shuffle(builder, v, v, [4, 5, 6, 7]))
    v2 = builder.add(_shuffle(builder, v4, v4, [0, 1]), _shuffle(builder, v4, v4, [2, 3]))
    i32 = ir.IntType(32)
    return builder.add(builder.extract_element(v2, ir.Constant(i32, 0)), builder.extract_element(v2, ir.Constant(i32, 1)))


@fallback(f16x2_py)
@intrinsic
def f16x2(typingctx, w, off):
    """The two f16 at bytes off .. off + 3 of w, as float32 (one 32-bit load, one vcvtph2ps)."""
    if not (_bytes_array(w) and _int(off)):
        return None

    def codegen(context, builder, sig, args):
        h2 = _load(context, builder, sig.args[0], args[0], args[1], ir.VectorType(ir.HalfType(), 2))
        f2 = builder.fpext(h2, ir.VectorType(ir.FloatType(), 2))
        i32 = ir.IntType(32)
        return context.make_tuple(builder, sig.return_type, [builder.extract_element(f2, ir.Constant(i32, k)) for k in range(2)])
    return types.UniTuple(types.float32, 2)(w, off), codegen


@fallback(scale8v_py)
@intrinsic
def scale8v(typingctx, s, soff, d, a, aoff, a0, a1, a2, a3, a4, a5, a6, a7):
    """s.flat[soff + k] += (d * a.flat[aoff + k]) * float32(isum_k) for k < 8, isum_k the sum of
    the lanes of a_k: eight horizontal sums at once (a transpose by vphaddd), then kernel_dot's
    float step for eight tokens, lane by lane (fmul, fmul, fadd: nothing contracted)."""
    accs = (a0, a1, a2, a3, a4, a5, a6, a7)
    if not (_c_array(s, types.float32) and _int(soff) and d == types.float32 and _c_array(a, types.float32)
            and _int(aoff) and all(x == i32x8 for x in accs)):
        return None

    def codegen(context, builder, sig, args):
        s, soff, d, a, aoff = args[:5]
        v = args[5:]
        isum = _hsum8x8(builder, v)
        dv = builder.fmul(_splat(builder, _F, d), _load(context, builder, sig.args[3], a, aoff, _F))
        old = _load(context, builder, sig.args[0], s, soff, _F)
        _store(context, builder, sig.args[0], s, soff, builder.fadd(old, builder.fmul(dv, builder.sitofp(isum, _F))))
        return context.get_dummy_value()
    return types.none(s, soff, d, a, aoff, *accs), codegen


@fallback(mins8_py)
@intrinsic
def mins8(typingctx, s, soff, dm, a, aoff, mn, moff, mstride, a2, a2off, a2stride):
    """s.flat[soff + k] -= (dm * a.flat[aoff + k]) * summ_k for k < 8 (eight tokens of one row),
    summ_k = sum_j float32(mn.flat[moff + j mstride]) * a2.flat[a2off + j a2stride + k], j < 8: the
    minimums' term of kernel_dot. Every product and partial sum is an integer below 2^24, so
    summ_k is exact (whatever the order) and equals kernel_dot's float32(summ)."""
    if not (_c_array(s, types.float32) and _int(soff) and dm == types.float32 and _c_array(a, types.float32)
            and _int(aoff) and _c_array(mn, types.int32) and _int(moff) and _int(mstride)
            and _c_array(a2, types.float32) and _int(a2off) and _int(a2stride)):
        return None

    def codegen(context, builder, sig, args):
        s, soff, dm, a, aoff, mn, moff, mstride, a2, a2off, a2stride = args
        summ = None
        for j in range(8):
            jm = builder.add(moff, builder.mul(mstride, ir.Constant(mstride.type, j)))
            m = builder.sitofp(builder.load(_elem_ptr(context, builder, sig.args[5], mn, jm)), ir.FloatType())
            ja = builder.add(a2off, builder.mul(a2stride, ir.Constant(a2stride.type, j)))
            p = builder.fmul(_splat(builder, _F, m), _load(context, builder, sig.args[8], a2, ja, _F))
            summ = p if summ is None else builder.fadd(summ, p)
        dmin = builder.fmul(_splat(builder, _F, dm), _load(context, builder, sig.args[3], a, aoff, _F))
        old = _load(context, builder, sig.args[0], s, soff, _F)
        _store(context, builder, sig.args[0], s, soff, builder.fsub(old, builder.fmul(dmin, summ)))
        return context.get_dummy_value()
    return types.none(s, soff, dm, a, aoff, mn, moff, mstride, a2, a2off, a2stride), codegen


@fallback(hsum8_py)
@intrinsic
def hsum8(typingctx, v):
    """The sum of the eight int32 lanes of v (an exact integer here: every total is below 2^31)."""
    if v != i32x8:
        return None

    def codegen(context, builder, sig, args):
        return _hsum(builder, args[0])
    return types.int32(v), codegen


def _barrier(builder):
    """A compiler memory barrier: the kernels then read the stored scale pairs back with
    vpbroadcastd from memory (a load) instead of LLVM forwarding the stored vector into shuffles."""
    builder.asm(ir.FunctionType(ir.VoidType(), []), "", "~{memory}", [], side_effect=True)


def _k4_lanes(context, builder, wty, w, off, aty, a2, a2off):
    """ggml's get_scale_min_k4 for all eight sub-blocks at once, on 32-bit words of the 12 scale
    bytes w.flat[off:off+12]: (sc_j | sc_j << 16 in int32 lane j, m_j * a2.flat[a2off + j])."""
    i32 = ir.IntType(32)
    p = builder.bitcast(_elem_ptr(context, builder, wty, w, off), i32.as_pointer())
    u0, u1, u2 = (builder.load(builder.gep(p, [ir.Constant(i32, k)]), align=1) for k in range(3))
    c = lambda v: ir.Constant(i32, v)
    and_, or_, shl, lshr = builder.and_, builder.or_, builder.shl, builder.lshr
    k1, k2, k3 = c(0x3F3F3F3F), c(0x0F0F0F0F), c(0x03030303)
    words = (and_(u0, k1), or_(and_(u2, k2), shl(and_(lshr(u0, c(6)), k3), c(4))),
             and_(u1, k1), or_(and_(lshr(u2, c(4)), k2), shl(and_(lshr(u1, c(6)), k3), c(4))))

    def lanes(lo, hi):
        v2 = ir.VectorType(i32, 2)
        v = builder.insert_element(builder.insert_element(ir.Constant(v2, None), lo, c(0)), hi, c(1))
        return builder.zext(builder.bitcast(v, ir.VectorType(ir.IntType(8), 8)), _D)
    sc = lanes(words[0], words[1])
    sc = builder.or_(sc, builder.shl(sc, ir.Constant(_D, [16] * 8)))
    return sc, builder.mul(lanes(words[2], words[3]), _load(context, builder, aty, a2, a2off, _D))


@fallback(k4_scales_py)
@intrinsic
def k4_scales(typingctx, sp, spoff, w, off, a2, a2off):
    """From the 12 scale bytes w.flat[off:off+12] of a q4_K / q5_K super-block (ggml's
    get_scale_min_k4 for all eight sub-blocks at once, on 32-bit words): sp.flat[spoff + j] =
    sc_j | sc_j << 16 (sub-block j's scale as a vpmaddwd pair, j < 8), and return
    sum_j m_j * a2.flat[a2off + j] (int32, exact: m_j <= 63 and the sub-block activation sums are
    at most 32 * 127)."""
    if not (_c_array(sp, types.int32) and _int(spoff) and _bytes_array(w) and _int(off)
            and _c_array(a2, types.int32) and _int(a2off)):
        return None

    def codegen(context, builder, sig, args):
        sp, spoff, w, off, a2, a2off = args
        sc, prod = _k4_lanes(context, builder, sig.args[2], w, off, sig.args[4], a2, a2off)
        _store(context, builder, sig.args[0], sp, spoff, sc)
        _barrier(builder)
        return _hsum(builder, prod)
    return types.int32(sp, spoff, w, off, a2, a2off), codegen


@fallback(q6_scales_py)
@intrinsic
def q6_scales(typingctx, sp, spoff, w, off, a, aoff):
    """From the 16 int8 scales w.flat[off:off+16] of a q6_K super-block: sp.flat[spoff + g] = the
    scale s_g as a vpmaddwd pair (s_g, s_g), and return sum_g s_g * a.flat[aoff + g] (int32, exact:
    |s_g| <= 128, the 16-sums of the activations at most 16 * 127)."""
    if not (_c_array(sp, types.int32) and _int(spoff) and _bytes_array(w) and _int(off)
            and _c_array(a, types.int32) and _int(aoff)):
        return None

    def codegen(context, builder, sig, args):
        sp, spoff, w, off, a, aoff = args
        b16 = _load(context, builder, sig.args[2], w, off, ir.VectorType(ir.IntType(8), 16))
        lo = builder.sext(_shuffle(builder, b16, b16, list(range(8))), _D)
        hi = builder.sext(_shuffle(builder, b16, b16, list(range(8, 16))), _D)
        m16 = ir.Constant(_D, [65535] * 8)
        s16 = ir.Constant(_D, [16] * 8)
        _store(context, builder, sig.args[0], sp, spoff, builder.or_(builder.and_(lo, m16), builder.shl(lo, s16)))
        _store(context, builder, sig.args[0], sp, builder.add(spoff, ir.Constant(spoff.type, 8)),
               builder.or_(builder.and_(hi, m16), builder.shl(hi, s16)))
        _barrier(builder)
        prod = builder.add(builder.mul(lo, _load(context, builder, sig.args[4], a, aoff, _D)),
                           builder.mul(hi, _load(context, builder, sig.args[4], a,
                                                 builder.add(aoff, ir.Constant(aoff.type, 8)), _D)))
        return _hsum(builder, prod)
    return types.int32(sp, spoff, w, off, a, aoff), codegen


# ---------------------------------------------------------------- activations

@njit(cache=True)
def permute_q8_K(xq2, xqu, adT, a2T, aq, ad, asum):
    """From quantize_q8_K's aq [T, K] int8, ad [T, K/256] and asum [T, K/16], per token:
      xq2 [T, K] int8: each 64 elements (chunks A, B) as pair_lo, pair_hi of their Q orders: byte
        4v + k of the first 32 holds A_v, A_{v+8}, B_v, B_{v+8} (k = 0..3), of the second A_{v+16},
        A_{v+24}, B_{v+16}, B_{v+24} (the q4_K / q5_K matmul);
      xqu [T, K] uint8: each 32-chunk in Q order, + 128 (q6_K's matmul: the activations as
        vpmaddubsw's unsigned side);
      adT [K/256, T] float32: ad transposed (eight tokens' scales in one vector);
      a2T [K/32, T] float32: the 32-element sub-block sums, transposed (what the minimums of
        q4_K / q5_K multiply; exact integers)."""
    T, K = aq.shape
    for t in range(T):
        for b in range(K // 256):
            adT[b, t] = ad[t, b]
        for j in range(K // 32):
            a2T[j, t] = np.float32(asum[t, 2 * j] + asum[t, 2 * j + 1])
        for ch in range(K // 32):
            o = 32 * ch
            for v in range(8):
                for k in range(4):
                    xqu[t, o + 4 * v + k] = np.uint8(np.int32(aq[t, o + v + 8 * k]) + 128)
        for c in range(K // 64):
            o = 64 * c
            for v in range(8):
                for half in range(2):
                    p = o + v + 16 * half
                    q = o + 32 * half + 4 * v
                    xq2[t, q] = aq[t, p]
                    xq2[t, q + 1] = aq[t, p + 8]
                    xq2[t, q + 2] = aq[t, p + 32]
                    xq2[t, q + 3] = aq[t, p + 40]


@njit(cache=True)
def pair_sums(asum2, asum):
    """asum2 [T, K/32] = asum[:, 0::2] + asum[:, 1::2]: the 32-element sub-block sums."""
    for t in range(asum2.shape[0]):
        for j in range(asum2.shape[1]):
            asum2[t, j] = asum[t, 2 * j] + asum[t, 2 * j + 1]


# ---------------------------------------------------------------- weights: 32-chunks in Q order (matmul)

@njit(cache=True, inline="always")
def _k45_pair(w, qo, qh, c, high):
    """Sub-blocks 2c and 2c + 1 of a q4_K / q5_K super-block (the 32 nibble bytes at flat offset
    qo + 32c; qh: the super-block's 32 high-bit bytes in Q order, q5_K only) as two i8x32 of
    values 0..15 / 0..31, in Q order."""
    v = loadq(w, qo + 32 * c)
    lo = nib_lo(v)
    hi = nib_hi(v)
    if high:
        lo = or32(lo, hbits(qh, 2 * c, 1))
        hi = or32(hi, hbits(qh, 2 * c + 1, 1))
    return lo, hi


@njit(cache=True, inline="always")
def _q6_pair(w, o, qh, h, k2, load):
    """Chunks 4h + k2 and 4h + k2 + 2 of the q6_K super-block at flat offset o (qh: its 32 bytes
    of 2-bit planes 128 + 32h.., loaded by ``load``) as two i8x32 of q = 0..63 (value q - 32), in
    the order of ``load`` (loadq: Q order, load32: as stored)."""
    v = load(w, o + 64 * h + 32 * k2)
    return (or32(nib_lo(v), hbits(qh, 2 * k2, 3)), or32(nib_hi(v), hbits(qh, 2 * k2 + 4, 3)))


@njit(cache=True, inline="always")
def _q6_scales(sp, spo, w, r, o):
    """The 16 int8 scales of a q6_K super-block as vpmaddwd pairs for Q order: sp[spo + ch] holds
    scale 2ch (positions 0..15 of chunk ch) in its low int16 and scale 2ch + 1 in its high int16."""
    for ch in range(8):
        s0 = np.int32(np.int8(w[r, o + 192 + 2 * ch]))
        s1 = np.int32(np.int8(w[r, o + 193 + 2 * ch]))
        sp[spo + ch] = (s0 & 65535) | (s1 << 16)


@njit(cache=True, inline="always")
def _f16_at(w, r, o):
    """The f16 at bytes o, o + 1 of row r, as float32 (unsigned indices: no negative-index code)."""
    r, o = np.uint64(r), np.uint64(o)
    return f16_to_f32(np.uint16(np.int32(w[r, o]) | (np.int32(w[r, o + np.uint64(1)]) << 8)))


# ---------------------------------------------------------------- decode: one token

@njit(cache=True, inline="always")
def _matvec_row_k45(w, r, aq, ad, asum2, sp, bpb, high):
    """kernel_dot of q4_K / q5_K row r with token 0, straight from the stored bytes: per sub-block
    one vpmaddubsw of its 32 values (as stored) with the activations and one vpmaddwd by its scale;
    the super-block's integer sum is the sum of the accumulator's eight lanes."""
    nb = w.shape[1] // bpb
    row0 = r * w.shape[1]
    sumf = np.float32(0.0)
    for i in range(nb):
        o = i * bpb
        pf = row0 + o + PF_BYTES
        prefetch(w, pf)
        prefetch(w, pf + 64)
        prefetch(w, pf + 128)
        summ = k4_scales(sp, 0, w, row0 + o + 4, asum2, 8 * i)
        acc = zero8()
        qo = row0 + o + bpb - 128
        xo = QK_K * i
        if high:
            qh = load32(w, row0 + o + 16)
            for c in range(4):
                v = load32(w, qo + 32 * c)
                acc = dot_s(acc, or32(nib_lo(v), hbits(qh, 2 * c, 1)), aq, xo + 64 * c, sp, 2 * c)
                acc = dot_s(acc, or32(nib_hi(v), hbits(qh, 2 * c + 1, 1)), aq, xo + 64 * c + 32, sp, 2 * c + 1)
        else:
            for c in range(4):
                v = load32(w, qo + 32 * c)
                acc = dot_s(acc, nib_lo(v), aq, xo + 64 * c, sp, 2 * c)
                acc = dot_s(acc, nib_hi(v), aq, xo + 64 * c + 32, sp, 2 * c + 1)
        d8 = ad[0, i]
        d, dmin = f16x2(w, row0 + o)
        sumf = np.float32(sumf + np.float32(d * d8) * np.float32(hsum8(acc)))
        sumf = np.float32(sumf - np.float32(dmin * d8) * np.float32(summ))
    return sumf


@njit(cache=True, inline="always")
def _matvec_row_q6(w, r, aq, ad, asum, sp):
    """kernel_dot of q6_K row r with token 0, straight from the stored bytes: vpmaddubsw of q (0..63)
    with the activations, vpmaddwd by the two scales of each 32 values; the -32 is taken once per
    super-block as 32 * sum(scale * 16-sum of the activations), from q8_K's sums."""
    nb = w.shape[1] // 210
    row0 = r * w.shape[1]
    sumf = np.float32(0.0)
    for i in range(nb):
        o = row0 + i * 210
        prefetch(w, o + PF_BYTES)
        prefetch(w, o + PF_BYTES + 64)
        prefetch(w, o + PF_BYTES + 128)
        prefetch(w, o + PF_BYTES + 192)
        c32 = q6_scales(sp, 0, w, o + 192, asum, 16 * i)
        acc = zero8()
        xo = QK_K * i
        for h in range(2):
            qh = load32(w, o + 128 + 32 * h)
            for k2 in range(2):
                a, b = _q6_pair(w, o, qh, h, k2, load32)
                ch = 4 * h + k2
                acc = dot_s2(acc, a, aq, xo + 32 * ch, sp, 2 * ch)
                acc = dot_s2(acc, b, aq, xo + 32 * ch + 64, sp, 2 * ch + 4)
        isum = hsum8(acc) - 32 * c32
        sumf = np.float32(sumf + np.float32(_f16_at(w, r, i * 210 + 208) * ad[0, i]) * np.float32(isum))
    return sumf


@njit(cache=True, parallel=True)  # no fastmath: the float part must be kernel_dot's
def matvec_kquant_avx2(out, sp_sc, w, aq, ad, asum, asum2, kind):
    """out [n_out] = each q4_K (kind 4) / q5_K (5) / q6_K (6) row of w dotted with one token's
    q8_K activations (aq, ad, asum from quantize_q8_K, asum2 from pair_sums), bit for bit as
    kernels.kquant.matmul_kquant (glmcpu.kquants.kernel_dot). Per-range scratch sp_sc
    [n_ranges, >= 16] int32."""
    n_out = w.shape[0]
    bpb = 144 if kind == 4 else (176 if kind == 5 else 210)
    n_ranges = sp_sc.shape[0]
    per = (n_out + n_ranges - 1) // n_ranges
    for c in prange(n_ranges):
        sp = sp_sc[c]
        for r in range(c * per, min(n_out, (c + 1) * per)):
            if kind == 6:
                out[r] = _matvec_row_q6(w, r, aq, ad, asum, sp)
            else:
                out[r] = _matvec_row_k45(w, r, aq, ad, asum2, sp, bpb, kind == 5)


# ---------------------------------------------------------------- prefill: T tokens

@njit(cache=True, inline="always")
def _unpack_tile(wq, sp, mn, dd, w, r0, nr, RT, i, kind):
    """Super-block i of rows r0 .. r0 + nr into the tile scratch wq[256 r ..], sp[8 r ..], mn, dd:
      q6_K: the 8 chunks of q - 32 (signed bytes) in Q order, sp[8 r + ch] the chunk's scale pair,
        mn[8 r] = 128 * sum of scale * (q - 32) over the super-block (what the activations' +128 adds);
      q4_K / q5_K: per pair c of sub-blocks (2c, 2c + 1), 64 bytes pair_lo, pair_hi of their Q-ordered
        values (int16 lane 2v: sub-block 2c's class v, 2v + 1: sub-block 2c + 1's), sp[8 r + c] =
        (sc_2c, sc_2c+1), mn[RT j + r] = m_j, dd[RT + r] = dmin;
    dd[r] = d. Rows nr .. RT get zero scales (their sums are zero, and never stored)."""
    nbytes = w.shape[1]
    bpb = 144 if kind == 4 else (176 if kind == 5 else 210)
    o = i * bpb
    for r in range(nr):
        rr = r0 + r
        base = rr * nbytes + o
        if kind == 6:
            _q6_scales(sp, 8 * r, w, rr, o)
            dd[r] = _f16_at(w, rr, o + 208)
            cw = zero8()
            for h in range(2):
                qh = loadq(w, base + 128 + 32 * h)
                for k2 in range(2):
                    a, b = _q6_pair(w, base, qh, h, k2, loadq)
                    a = add8(a, -32)
                    b = add8(b, -32)
                    ch = 4 * h + k2
                    cw = dot_c128(dot_c128(cw, a, sp, 8 * r + ch), b, sp, 8 * r + ch + 2)
                    store32(wq, 256 * r + 32 * ch, a)
                    store32(wq, 256 * r + 32 * ch + 64, b)
            mn[8 * r] = hsum8(cw)
        else:
            for j in range(8):
                sc, m = _scale_min_k4(w, rr, o, j)
                if j % 2 == 0:
                    sp[8 * r + j // 2] = sc
                else:
                    sp[8 * r + j // 2] |= sc << 16
                mn[RT * j + r] = m
            dd[r] = _f16_at(w, rr, o)
            dd[RT + r] = _f16_at(w, rr, o + 2)
            qh = loadq(w, base + 16)
            for c in range(4):
                lo, hi = _k45_pair(w, base + bpb - 128, qh, c, kind == 5)
                store32(wq, 256 * r + 64 * c, pair_lo(lo, hi))
                store32(wq, 256 * r + 64 * c + 32, pair_hi(lo, hi))
    for r in range(nr, RT):
        dd[r] = np.float32(0.0)
        dd[RT + r] = np.float32(0.0)
        for j in range(8):
            sp[8 * r + j] = 0
            mn[(8 * r + j) if kind == 6 else (RT * j + r)] = 0


@njit(cache=True, inline="always")
def _add_isum(sumf, q, d, isum):
    """sumf[q] += d * float32(isum): kernel_dot's step for one super-block of one row and token."""
    sumf[q] = np.float32(sumf[q] + np.float32(d * np.float32(isum)))


@njit(cache=True, inline="always")
def _tile_dots45(sumf, TB, wq, sp, dd, xq2, adT, t0, nt, i, RT):
    """q4_K / q5_K: sumf[r TB + t] += (d_r * d8) * isum for the tile's rows r and tokens t0 + t,
    t < nt. Per pair of sub-blocks, two vpmaddubsw summed in int16 (at most 4 * 31 * 127 = 15748)
    and one vpmaddwd by the pair's scales. Register tile: 1 row (its 8 weight vectors stay in
    registers) x 8 tokens (activations straight from memory as vpmaddubsw's second operand), whose
    eight sums and float steps then go at once (scale8v)."""
    K = xq2.shape[1]          # token stride (rows may be padded)
    T = adT.shape[1]
    for r in range(RT):
        w0 = 256 * r
        s0 = 8 * r
        dr = dd[r]
        t = 0
        while t + 8 <= nt:
            a0 = zero8()
            a1 = zero8()
            a2 = zero8()
            a3 = zero8()
            a4 = zero8()
            a5 = zero8()
            a6 = zero8()
            a7 = zero8()
            xo = (t0 + t) * K + QK_K * i
            for c in range(4):
                u1 = load32(wq, w0 + 64 * c)
                u2 = load32(wq, w0 + 64 * c + 32)
                x = xo + 64 * c
                a0 = dot2_sc(a0, u1, u2, xq2, x, sp, s0 + c)
                a1 = dot2_sc(a1, u1, u2, xq2, x + K, sp, s0 + c)
                a2 = dot2_sc(a2, u1, u2, xq2, x + 2 * K, sp, s0 + c)
                a3 = dot2_sc(a3, u1, u2, xq2, x + 3 * K, sp, s0 + c)
                a4 = dot2_sc(a4, u1, u2, xq2, x + 4 * K, sp, s0 + c)
                a5 = dot2_sc(a5, u1, u2, xq2, x + 5 * K, sp, s0 + c)
                a6 = dot2_sc(a6, u1, u2, xq2, x + 6 * K, sp, s0 + c)
                a7 = dot2_sc(a7, u1, u2, xq2, x + 7 * K, sp, s0 + c)
            scale8v(sumf, r * TB + t, dr, adT, i * T + t0 + t, a0, a1, a2, a3, a4, a5, a6, a7)
            t += 8
        while t < nt:
            a0 = zero8()
            xo = (t0 + t) * K + QK_K * i
            for c in range(4):
                a0 = dot2_sc(a0, load32(wq, w0 + 64 * c), load32(wq, w0 + 64 * c + 32), xq2, xo + 64 * c, sp, s0 + c)
            _add_isum(sumf, r * TB + t, np.float32(dr * adT[i, t0 + t]), hsum8(a0))
            t += 1


@njit(cache=True, inline="always")
def _tile_dots6(sumf, TB, wq, sp, cw, dd, xqu, adT, t0, nt, i, RT):
    """q6_K: as _tile_dots45 with vpmaddubsw's roles swapped, activations + 128 (unsigned, xqu) times
    q - 32 (signed, wq), one vpmaddwd per chunk (q6_K's scales cover 16 elements: a class has two
    elements per scale, nothing more to sum in int16); each pair sum is at most 2 * 255 * 32 in
    magnitude. The +128 is taken back per row: isum = sum - cw[8 r] (see _unpack_tile); sumf as
    in _tile_dots45.
    Register tile: 2 rows x 4 tokens."""
    K = xqu.shape[1]          # token stride (rows may be padded)
    for rp in range(0, RT, 2):
        w0 = 256 * rp
        w1 = w0 + 256
        s0 = 8 * rp
        s1 = s0 + 8
        c0 = cw[s0]
        c1 = cw[s1]
        t = 0
        while t + 4 <= nt:
            a0 = zero8()
            a1 = zero8()
            a2 = zero8()
            a3 = zero8()
            b0 = zero8()
            b1 = zero8()
            b2 = zero8()
            b3 = zero8()
            xo = (t0 + t) * K + QK_K * i
            for j in range(8):
                u = load32(wq, w0 + 32 * j)
                v = load32(wq, w1 + 32 * j)
                x = xo + 32 * j
                a0 = dot_su(a0, u, xqu, x, sp, s0 + j)
                a1 = dot_su(a1, u, xqu, x + K, sp, s0 + j)
                a2 = dot_su(a2, u, xqu, x + 2 * K, sp, s0 + j)
                a3 = dot_su(a3, u, xqu, x + 3 * K, sp, s0 + j)
                b0 = dot_su(b0, v, xqu, x, sp, s1 + j)
                b1 = dot_su(b1, v, xqu, x + K, sp, s1 + j)
                b2 = dot_su(b2, v, xqu, x + 2 * K, sp, s1 + j)
                b3 = dot_su(b3, v, xqu, x + 3 * K, sp, s1 + j)
            _scale4c(sumf, rp * TB + t, dd[rp], adT, t0 + t, i, c0, a0, a1, a2, a3)
            _scale4c(sumf, (rp + 1) * TB + t, dd[rp + 1], adT, t0 + t, i, c1, b0, b1, b2, b3)
            t += 4
        while t < nt:
            a0 = zero8()
            b0 = zero8()
            xo = (t0 + t) * K + QK_K * i
            for j in range(8):
                a0 = dot_su(a0, load32(wq, w0 + 32 * j), xqu, xo + 32 * j, sp, s0 + j)
                b0 = dot_su(b0, load32(wq, w1 + 32 * j), xqu, xo + 32 * j, sp, s1 + j)
            e = adT[i, t0 + t]
            _add_isum(sumf, rp * TB + t, np.float32(dd[rp] * e), hsum8(a0) - c0)
            _add_isum(sumf, (rp + 1) * TB + t, np.float32(dd[rp + 1] * e), hsum8(b0) - c1)
            t += 1


@njit(cache=True, inline="always")
def _scale4c(sumf, q, dr, adT, t, i, c, a0, a1, a2, a3):
    """sumf[q + k] += (d_r * d8_{t+k}) * (isum_k - c) for k < 4."""
    _add_isum(sumf, q, np.float32(dr * adT[i, t]), hsum8(a0) - c)
    _add_isum(sumf, q + 1, np.float32(dr * adT[i, t + 1]), hsum8(a1) - c)
    _add_isum(sumf, q + 2, np.float32(dr * adT[i, t + 2]), hsum8(a2) - c)
    _add_isum(sumf, q + 3, np.float32(dr * adT[i, t + 3]), hsum8(a3) - c)


@njit(cache=True, inline="always")
def _tile_mins(sumf, TB, mn, dd, a2T, adT, t0, nt, i, RT):
    """sumf[r TB + t] -= (dmin_r * d8) * summ_r for the tile's rows r and tokens t0 + t, summ_r =
    sum_j m_{r,j} * (sum of sub-block j's activations) (mn[RT j + r] = m_{r,j}), summed in float32:
    exact, as every product (<= 63 * 32 * 127) and partial sum (< 2^21) is an integer below 2^24.
    Eight tokens at a time (mins8); each row's float operations are kernel_dot's, in its order
    (after the super-block's isum term)."""
    o = 8 * i
    T = adT.shape[1]
    for r in range(RT):
        dm = dd[RT + r]
        t = 0
        while t + 8 <= nt:
            mins8(sumf, r * TB + t, dm, adT, i * T + t0 + t, mn, r, RT, a2T, o * T + t0 + t, T)
            t += 8
        while t < nt:
            tt = t0 + t
            summ = np.float32(0.0)
            for j in range(8):
                summ = np.float32(summ + np.float32(mn[j * RT + r]) * a2T[o + j, tt])
            dmin = np.float32(dm * adT[i, tt])
            sumf[r * TB + t] = np.float32(sumf[r * TB + t] - np.float32(dmin * summ))
            t += 1


@njit(cache=True, parallel=True)  # no fastmath: the float part must be kernel_dot's
def matmul_kquant_avx2(out, wq_sc, sp_sc, mn_sc, dd_sc, sumf_sc, w, xq2, xqu, adT, a2T, kind):
    """out [T, n_out] = each q4_K (kind 4) / q5_K (5) / q6_K (6) row of w dotted with each token's
    q8_K activations (xq2, xqu, adT, a2T from permute_q8_K), bit for bit as
    kernels.kquant.matmul_kquant (glmcpu.kquants.kernel_dot). Tiles of RT rows; per block of TB
    tokens each super-block of the tile is unpacked once and used by every token. The activations'
    rows may be longer than K (padded: with a token stride of 4096 bytes every token's chunk would
    sit in the same L1 set). Per-range scratch (first axis: range): wq_sc [n, RT * 256] uint8,
    sp_sc and mn_sc [n, RT * 8] int32, dd_sc [n, 2 RT] float32, sumf_sc [n, RT * TB] float32 (a
    row's TB tokens side by side); RT even."""
    T = xq2.shape[0]
    n_out = w.shape[0]
    nb = w.shape[1] // (144 if kind == 4 else (176 if kind == 5 else 210))
    RT = dd_sc.shape[1] // 2
    TB = sumf_sc.shape[1] // RT
    n_tiles = (n_out + RT - 1) // RT
    n_ranges = sp_sc.shape[0]
    per = (n_tiles + n_ranges - 1) // n_ranges
    for c in prange(n_ranges):
        wq = wq_sc[c]
        sp = sp_sc[c]
        mn = mn_sc[c]
        dd = dd_sc[c]
        sumf = sumf_sc[c]
        for ti in range(c * per, min(n_tiles, (c + 1) * per)):
            r0 = ti * RT
            nr = min(RT, n_out - r0)
            for t0 in range(0, T, TB):
                nt = min(TB, T - t0)
                for q in range(RT * TB):
                    sumf[q] = np.float32(0.0)
                for i in range(nb):
                    _unpack_tile(wq, sp, mn, dd, w, r0, nr, RT, i, kind)
                    if kind == 6:
                        _tile_dots6(sumf, TB, wq, sp, mn, dd, xqu, adT, t0, nt, i, RT)
                    else:
                        _tile_dots45(sumf, TB, wq, sp, dd, xq2, adT, t0, nt, i, RT)
                        _tile_mins(sumf, TB, mn, dd, a2T, adT, t0, nt, i, RT)
                for t in range(nt):
                    for r in range(nr):
                        out[t0 + t, r0 + r] = sumf[r * TB + t]


# ---------------------------------------------------------------- q5_0 (ggml's rows, int8 activations per 32)

_Q5_HB = [0] * 8 + [1] * 8 + [18] * 8 + [19] * 8           # byte e <- byte e // 8 of the splatted qh
_Q5_BIT = [1 << (e % 8) for e in range(32)]


def q5_0_vals_py(w, off):
    b = _fl(w)[off: off + 22].view(np.uint8)
    qs, qh = b[6:22], int(b[2:6].copy().view("<u4")[0])
    q = np.concatenate([qs & np.uint8(15), qs >> np.uint8(4)])
    return (q | (((qh >> np.arange(32)) & 1) << 4).astype(np.uint8)).astype(np.uint8)


def dot32_py(v, x, xoff):
    p = _maddubs_py(v, _fl(x)[xoff: xoff + 32])
    return np.int32(np.sum(p.astype(np.int64)))


@fallback(q5_0_vals_py)
@intrinsic
def q5_0_vals(typingctx, w, off):
    """The 32 values q (0..31, value q - 16) of the q5_0 block at w.flat[off:off+22] (f16 d, 32 high
    bits, 16 nibble bytes: element j low nibble of byte j, element 16 + j its high nibble), in order."""
    if not (_bytes_array(w) and _int(off)):
        return None

    def codegen(context, builder, sig, args):
        return _q5_0_vals(context, builder, sig.args[0], args[0], args[1])
    return i8x32(w, off), codegen


def _q5_0_vals(context, builder, wty, w, off):
    """q5_0_vals' code: the 32 values of the block at w.flat[off:off+22], in order."""
    i32 = ir.IntType(32)
    qs = _load(context, builder, wty, w, builder.add(off, ir.Constant(off.type, 6)), ir.VectorType(ir.IntType(8), 16))
    v = _shuffle(builder, qs, qs, list(range(16)) * 2)
    lo = builder.and_(v, ir.Constant(_B, [15] * 32))
    hi = builder.lshr(v, ir.Constant(_B, [4] * 32))
    q = _shuffle(builder, lo, hi, list(range(16)) + list(range(48, 64)))
    p = builder.bitcast(_elem_ptr(context, builder, wty, w, builder.add(off, ir.Constant(off.type, 2))), i32.as_pointer())
    qh = builder.bitcast(_splat(builder, _D, builder.load(p, align=1)), _B)
    bits = builder.and_(_shuffle(builder, qh, qh, _Q5_HB), ir.Constant(_B, _Q5_BIT))
    hb = builder.and_(builder.sext(builder.icmp_unsigned("==", bits, ir.Constant(_B, _Q5_BIT)), _B),
                      ir.Constant(_B, [16] * 32))
    return builder.or_(q, hb)


def _dot4(context, builder, xty, v, x, xoff):
    """vpmaddwd(vpmaddubsw(v unsigned, x.flat[xoff:xoff+32] signed), ones): int32 lane l = the sum of
    the four products of bytes 4l .. 4l + 3."""
    p = _x86(builder, "llvm.x86.avx2.pmadd.ub.sw", _W, [v, _load(context, builder, xty, x, xoff, _B)])
    return _x86(builder, "llvm.x86.avx2.pmadd.wd", _D, [p, ir.Constant(_W, [1] * 16)])


def _hsum8x8(builder, sums):
    """Lane k = the sum of the eight int32 lanes of sums[k] (a vphaddd tree)."""
    hadd = lambda a, b: _x86(builder, "llvm.x86.avx2.phadd.d", _D, [a, b])
    lo = hadd(hadd(sums[0], sums[1]), hadd(sums[2], sums[3]))    # [S0..S3 of the low halves | high]
    hi = hadd(hadd(sums[4], sums[5]), hadd(sums[6], sums[7]))
    return builder.add(_shuffle(builder, lo, hi, [0, 1, 2, 3, 8, 9, 10, 11]),
                       _shuffle(builder, lo, hi, [4, 5, 6, 7, 12, 13, 14, 15]))


@fallback(dot32_py)
@intrinsic
def dot32(typingctx, v, x, xoff):
    """sum over 32 of v (unsigned bytes) * x.flat[xoff:xoff+32] (signed), as int32: vpmaddubsw, vpmaddwd
    by ones, then a horizontal sum (exact: pairs at most 2 * 255 * 128 do not saturate for v < 128)."""
    if not (v == i8x32 and _c_array(x, types.int8) and _int(xoff)):
        return None

    def codegen(context, builder, sig, args):
        v, x, xoff = args
        return _hsum(builder, _dot4(context, builder, sig.args[1], v, x, xoff))
    return types.int32(v, x, xoff), codegen


@njit(cache=True, inline="always")
def _q5_0_term(acc, isum, xd, d):
    """The portable kernel's block term: acc + float(isum) * (xd * d), one float32 operation at a time."""
    return np.float32(acc + np.float32(np.float32(isum) * np.float32(xd * d)))


def dot32x8_py(v, x, xoff, stride):
    return np.array([dot32_py(v, x, xoff + k * stride) for k in range(8)], np.int32)


def q5_0_blocks8_py(w, off, x, xoff, xs, xd, boff):
    isum = np.array([dot32_py(q5_0_vals_py(w, off + 22 * k), x, xoff + 32 * k) for k in range(8)], np.int32)
    d = np.array([_fl(w)[off + 22 * k: off + 22 * k + 2].view(np.uint8).copy().view(np.float16)[0] for k in range(8)])
    i = (isum.astype(np.int64) - 16 * _fl(xs)[boff: boff + 8].astype(np.int64)).astype(np.int32)
    with np.errstate(over="ignore", invalid="ignore"):
        return i.astype(np.float32) * (_fl(xd)[boff: boff + 8] * d.astype(np.float32))


def dot4x4_py(acc, w, woff, x, xoff):
    p = np.zeros(16, np.int64)
    for k in range(4):
        xb = np.tile(_fl(x)[xoff + 4 * k: xoff + 4 * k + 4], 8)
        p += _maddubs_py(_fl(w)[woff + 32 * k: woff + 32 * k + 32].view(np.uint8), xb)
    p16 = p.astype(np.int16)                                          # vpaddw wraps
    return (acc.astype(np.int64) + p16.astype(np.int64)[0::2] + p16.astype(np.int64)[1::2]).astype(np.int32)


def q5_rows_term_py(s, soff, isum, xs, xd, dd, ddoff):
    i = (isum.astype(np.int64) - 16 * int(xs)).astype(np.int32)
    with np.errstate(over="ignore", invalid="ignore"):
        _fl(s)[soff: soff + 8] = _fl(s)[soff: soff + 8] + i.astype(np.float32) * (np.float32(xd) * _fl(dd)[ddoff: ddoff + 8])


def q5_0_term8_py(acc, isum, xs, xsoff, xd, xdoff, d):
    xsv = _fl(xs)[xsoff: xsoff + 8].astype(np.int64)
    i = (isum.astype(np.int64) - 16 * xsv).astype(np.int32)
    with np.errstate(over="ignore", invalid="ignore"):
        return acc + i.astype(np.float32) * (_fl(xd)[xdoff: xdoff + 8] * np.float32(d))


@fallback(dot32x8_py)
@intrinsic
def dot32x8(typingctx, v, x, xoff, stride):
    """Lane k = sum over 32 of v (unsigned) * x.flat[xoff + k stride:][:32] (signed), k < 8: one block
    of weights against 8 tokens; the eight horizontal sums by a vphaddd tree (exact int32)."""
    if not (v == i8x32 and _c_array(x, types.int8) and _int(xoff) and _int(stride)):
        return None

    def codegen(context, builder, sig, args):
        v, x, xoff, stride = args
        sums = []
        for k in range(8):
            o = builder.add(xoff, builder.mul(stride, ir.Constant(stride.type, k)))
            sums.append(_dot4(context, builder, sig.args[1], v, x, o))
        return _hsum8x8(builder, sums)
    return i32x8(v, x, xoff, stride), codegen


@fallback(q5_0_blocks8_py)
@intrinsic
def q5_0_blocks8(typingctx, w, off, x, xoff, xs, xd, boff):
    """Lane k = the block term float(isum_k - 16 xs_k) * (xd_k * d_k) of block k of the eight q5_0
    blocks at w.flat[off + 22 k:] against one token's int8 activations x.flat[xoff + 32 k:][:32]
    (xs_k, xd_k at xs.flat[boff + k], xd.flat[boff + k]; d_k the block's f16 scale): the products
    of kernels.kquant.matmul_q5_0's block terms, eight blocks at once (vphaddd tree, one vcvtph2ps
    for the eight scales); the caller adds them to its running sum in block order."""
    if not (_bytes_array(w) and _int(off) and _c_array(x, types.int8) and _int(xoff)
            and _c_array(xs, types.int32) and _c_array(xd, types.float32) and _int(boff)):
        return None

    def codegen(context, builder, sig, args):
        w, off, x, xoff, xs, xd, boff = args
        sums = []
        h8 = ir.Constant(ir.VectorType(ir.IntType(16), 8), None)
        i16p = ir.IntType(16).as_pointer()
        for k in range(8):
            bo = builder.add(off, ir.Constant(off.type, 22 * k))
            v = _q5_0_vals(context, builder, sig.args[0], w, bo)
            sums.append(_dot4(context, builder, sig.args[2], v, x, builder.add(xoff, ir.Constant(xoff.type, 32 * k))))
            dk = builder.load(builder.bitcast(_elem_ptr(context, builder, sig.args[0], w, bo), i16p), align=1)
            h8 = builder.insert_element(h8, dk, ir.Constant(ir.IntType(32), k))
        d = builder.fpext(builder.bitcast(h8, ir.VectorType(ir.HalfType(), 8)), _F)
        xsv = _load(context, builder, sig.args[4], xs, boff, _D)
        i = builder.sub(_hsum8x8(builder, sums), builder.mul(xsv, ir.Constant(_D, [16] * 8)))
        sc = builder.fmul(_load(context, builder, sig.args[5], xd, boff, _F), d)
        return builder.fmul(builder.sitofp(i, _F), sc)
    return f32x8(w, off, x, xoff, xs, xd, boff), codegen


@fallback(dot4x4_py)
@intrinsic
def dot4x4(typingctx, acc, w, woff, x, xoff):
    """acc + vpmaddwd(sum over s < 4 of vpmaddubsw(w.flat[woff + 32 s:][:32] unsigned, the 4 bytes
    x.flat[xoff + 4 s:][:4] broadcast to every int32 lane), ones): with w holding 8 rows x 4 values
    per 32 bytes (row r in int32 lane r), int32 lane r += the dot of row r's 16 values with 16
    activations. The int16 sums are exact: each vpmaddubsw pair is at most 2 * 31 * 128, four of
    them 31744."""
    if not (acc == i32x8 and _bytes_array(w) and _int(woff) and _c_array(x, types.int8) and _int(xoff)):
        return None

    def codegen(context, builder, sig, args):
        acc, w, woff, x, xoff = args
        i32 = ir.IntType(32)
        p = None
        for k in range(4):
            wv = _load(context, builder, sig.args[1], w, builder.add(woff, ir.Constant(woff.type, 32 * k)), _B)
            xp = builder.bitcast(_elem_ptr(context, builder, sig.args[3], x, builder.add(xoff, ir.Constant(xoff.type, 4 * k))),
                                 i32.as_pointer())
            xb = builder.bitcast(_splat(builder, _D, builder.load(xp, align=1)), _B)
            m = _x86(builder, "llvm.x86.avx2.pmadd.ub.sw", _W, [wv, xb])
            p = m if p is None else builder.add(p, m)
        return builder.add(acc, _x86(builder, "llvm.x86.avx2.pmadd.wd", _D, [p, ir.Constant(_W, [1] * 16)]))
    return i32x8(acc, w, woff, x, xoff), codegen


@fallback(q5_rows_term_py)
@intrinsic
def q5_rows_term(typingctx, s, soff, isum, xs, xd, dd, ddoff):
    """s.flat[soff + r] += float(isum_r - 16 xs) * (xd * dd.flat[ddoff + r]) for the 8 rows r in the
    lanes: kernels.kquant.matmul_q5_0's block term for one token and 8 rows (fmul, fmul, fadd)."""
    if not (_c_array(s, types.float32) and _int(soff) and isum == i32x8 and _int(xs) and xd == types.float32
            and _c_array(dd, types.float32) and _int(ddoff)):
        return None

    def codegen(context, builder, sig, args):
        s, soff, isum, xs, xd, dd, ddoff = args
        xs16 = builder.mul(builder.trunc(xs, ir.IntType(32)) if xs.type.width > 32 else xs, ir.Constant(ir.IntType(32), 16))
        i = builder.sub(isum, _splat(builder, _D, xs16))
        sc = builder.fmul(_splat(builder, _F, xd), _load(context, builder, sig.args[5], dd, ddoff, _F))
        old = _load(context, builder, sig.args[0], s, soff, _F)
        _store(context, builder, sig.args[0], s, soff, builder.fadd(old, builder.fmul(builder.sitofp(i, _F), sc)))
        return context.get_dummy_value()
    return types.none(s, soff, isum, xs, xd, dd, ddoff), codegen


@fallback(q5_0_term8_py)
@intrinsic
def q5_0_term8(typingctx, acc, isum, xs, xsoff, xd, xdoff, d):
    """acc + float(isum - 16 xs.flat[xsoff:+8]) * (xd.flat[xdoff:+8] * d), lane by lane: the block
    term of kernels.kquant.matmul_q5_0 for 8 tokens, each float32 operation as there (no FMA)."""
    if not (acc == f32x8 and isum == i32x8 and _c_array(xs, types.int32) and _int(xsoff)
            and _c_array(xd, types.float32) and _int(xdoff) and d == types.float32):
        return None

    def codegen(context, builder, sig, args):
        acc, isum, xs, xsoff, xd, xdoff, d = args
        xsv = _load(context, builder, sig.args[2], xs, xsoff, _D)
        i = builder.sub(isum, builder.mul(xsv, ir.Constant(_D, [16] * 8)))
        s = builder.fmul(_load(context, builder, sig.args[4], xd, xdoff, _F), _splat(builder, _F, d))
        return builder.fadd(acc, builder.fmul(builder.sitofp(i, _F), s))
    return f32x8(acc, isum, xs, xsoff, xd, xdoff, d), codegen


@njit(cache=True)
def transpose_act(xdt, xst, xd, xs):
    """xdt [K/32, >= T] = xd.T and xst = xs.T: per block, the tokens side by side (q5_0's matmul
    takes 8 tokens per vector)."""
    T, nb = xd.shape
    for b in range(nb):
        for t in range(T):
            xdt[b, t] = xd[t, b]
            xst[b, t] = xs[t, b]


@njit(cache=True, parallel=True)  # no fastmath: equals kernels.kquant.matmul_q5_0 bit for bit
def matvec_q5_0_avx2(out, w, xq, xd, xs, scr):
    """out [n_out] for one token (xq [1, K], xd, xs [1, K/32] from kernels.quant.quantize_act), bit for
    bit as kernels.kquant.matmul_q5_0: per row, the block terms of eight blocks at a time in one
    vector (q5_0_blocks8), added to the row's running sum in block order; the last nb % 8 blocks
    one by one. scr [n_ranges, 8] float32: per-range scratch."""
    n_out = w.shape[0]
    nb = w.shape[1] // 22
    n_ranges = scr.shape[0]
    per = (n_out + n_ranges - 1) // n_ranges
    for c in prange(n_ranges):
        lanes = scr[c]
        for r in range(c * per, min(n_out, (c + 1) * per)):
            row0 = r * w.shape[1]
            acc = np.float32(0.0)
            b = 0
            while b + 8 <= nb:
                pf = row0 + 22 * b + PF_BYTES
                prefetch(w, pf)
                prefetch(w, pf + 64)
                prefetch(w, pf + 128)
                fstore8(lanes, 0, q5_0_blocks8(w, row0 + 22 * b, xq, 32 * b, xs, xd, b))
                for k in range(8):
                    acc = np.float32(acc + lanes[k])
                b += 8
            while b < nb:
                v = q5_0_vals(w, row0 + 22 * b)
                acc = _q5_0_term(acc, dot32(v, xq, 32 * b) - 16 * xs[0, b], xd[0, b], _f16_at(w, r, 22 * b))
                b += 1
            out[r] = acc


@njit(cache=True, parallel=True)  # no fastmath: equals kernels.kquant.matmul_q5_0 bit for bit
def matmul_q5_0_avx2(out, w, xq, xd, xs, xdt, xst, scr):
    """out [T, n_out] for ggml's q5_0 rows w [n_out, K/32 * 22] and the int8 activations of
    kernels.quant.quantize_act (xq [T, K], xd, xs [T, K/32]; xdt, xst their transposes from
    transpose_act, used when T >= 8), bit for bit as kernels.kquant.matmul_q5_0: per block isum =
    sum(q * x) - 16 * xs (exact: the block's sum of (q - 16) x), then acc = acc + float(isum) *
    (xd * d) block by block. Each block is unpacked once (``q5_0_vals``) per row and group of
    tokens: 8 tokens in the lanes of one vector (dot32x8, q5_0_term8), the rest up to 4 at a time.
    scr [n_ranges, 8] float32: per-range scratch; ranges of rows run in parallel."""
    T, K = xq.shape
    n_out = w.shape[0]
    nb = w.shape[1] // 22
    n_ranges = scr.shape[0]
    per = (n_out + n_ranges - 1) // n_ranges
    for c in prange(n_ranges):
        lanes = scr[c]
        for r in range(c * per, min(n_out, (c + 1) * per)):
            row0 = r * w.shape[1]
            t = 0
            while t + 8 <= T:
                acc = fzero8()
                for b in range(nb):
                    v = q5_0_vals(w, row0 + 22 * b)
                    acc = q5_0_term8(acc, dot32x8(v, xq, t * K + 32 * b, K), xst, b * xst.shape[1] + t,
                                     xdt, b * xdt.shape[1] + t, _f16_at(w, r, 22 * b))
                fstore8(lanes, 0, acc)
                for k in range(8):
                    out[t + k, r] = lanes[k]
                t += 8
            while t < T:
                n = min(4, T - t)
                a0 = np.float32(0.0)
                a1 = np.float32(0.0)
                a2 = np.float32(0.0)
                a3 = np.float32(0.0)
                for b in range(nb):
                    v = q5_0_vals(w, row0 + 22 * b)
                    d = _f16_at(w, r, 22 * b)
                    x0 = t * K + 32 * b
                    a0 = _q5_0_term(a0, dot32(v, xq, x0) - 16 * xs[t, b], xd[t, b], d)
                    if n > 1:
                        a1 = _q5_0_term(a1, dot32(v, xq, x0 + K) - 16 * xs[t + 1, b], xd[t + 1, b], d)
                    if n > 2:
                        a2 = _q5_0_term(a2, dot32(v, xq, x0 + 2 * K) - 16 * xs[t + 2, b], xd[t + 2, b], d)
                    if n > 3:
                        a3 = _q5_0_term(a3, dot32(v, xq, x0 + 3 * K) - 16 * xs[t + 3, b], xd[t + 3, b], d)
                out[t, r] = a0
                if n > 1:
                    out[t + 1, r] = a1
                if n > 2:
                    out[t + 2, r] = a2
                if n > 3:
                    out[t + 3, r] = a3
                t += 4


RT5 = 16   # q5_0 prefill: rows per tile (two groups of 8, a row per int32 lane)
TB5 = 128  # q5_0 prefill: tokens per block (each block of a tile is unpacked once per TB5 tokens)


@njit(cache=True, inline="always")
def _q5_tile_dots(accf, wt, g, dr, xq, xd, xs, t0, nt, b):
    """accf[t RT5 + 8 g + r] += block b's term for rows 8 g + r (r < 8, one per int32 lane, wt's
    interleaved values) and tokens t0 + t, t < nt. Register tile: 8 rows x 4 tokens."""
    K = xq.shape[1]
    w0 = 256 * g
    t = 0
    while t + 4 <= nt:
        x0 = (t0 + t) * K + 32 * b
        a0 = zero8()
        a1 = zero8()
        a2 = zero8()
        a3 = zero8()
        for h in range(2):
            a0 = dot4x4(a0, wt, w0 + 128 * h, xq, x0 + 16 * h)
            a1 = dot4x4(a1, wt, w0 + 128 * h, xq, x0 + K + 16 * h)
            a2 = dot4x4(a2, wt, w0 + 128 * h, xq, x0 + 2 * K + 16 * h)
            a3 = dot4x4(a3, wt, w0 + 128 * h, xq, x0 + 3 * K + 16 * h)
        q5_rows_term(accf, t * RT5 + 8 * g, a0, xs[t0 + t, b], xd[t0 + t, b], dr, 8 * g)
        q5_rows_term(accf, (t + 1) * RT5 + 8 * g, a1, xs[t0 + t + 1, b], xd[t0 + t + 1, b], dr, 8 * g)
        q5_rows_term(accf, (t + 2) * RT5 + 8 * g, a2, xs[t0 + t + 2, b], xd[t0 + t + 2, b], dr, 8 * g)
        q5_rows_term(accf, (t + 3) * RT5 + 8 * g, a3, xs[t0 + t + 3, b], xd[t0 + t + 3, b], dr, 8 * g)
        t += 4
    while t < nt:
        x0 = (t0 + t) * K + 32 * b
        a0 = zero8()
        for h in range(2):
            a0 = dot4x4(a0, wt, w0 + 128 * h, xq, x0 + 16 * h)
        q5_rows_term(accf, t * RT5 + 8 * g, a0, xs[t0 + t, b], xd[t0 + t, b], dr, 8 * g)
        t += 1


@njit(cache=True, parallel=True)  # no fastmath: equals kernels.kquant.matmul_q5_0 bit for bit
def matmul_q5_0_tiled_avx2(out, vals_sc, wt_sc, dr_sc, accf_sc, w, xq, xd, xs):
    """out [T, n_out] for ggml's q5_0 rows w and the int8 activations (xq [T, K], xd, xs [T, K/32]),
    bit for bit as kernels.kquant.matmul_q5_0, for many tokens: per tile of RT5 rows and block of
    TB5 tokens, each 32-block is unpacked once (q5_0_vals) and its rows interleaved 4 values at a
    time (wt: 8 rows per 32 bytes, row r in int32 lane r), so the products land in one lane per row
    with no horizontal sums (dot4x4) and the float term runs over 8 rows at once (q5_rows_term).
    Per-range scratch: vals_sc [n, RT5 * 32] uint8, wt_sc [n, RT5 * 32] uint8, dr_sc [n, RT5]
    float32 (the rows' block scales), accf_sc [n, TB5 * RT5] float32."""
    T, K = xq.shape
    n_out = w.shape[0]
    nb = w.shape[1] // 22
    n_tiles = (n_out + RT5 - 1) // RT5
    n_ranges = vals_sc.shape[0]
    per = (n_tiles + n_ranges - 1) // n_ranges
    for c in prange(n_ranges):
        vals = vals_sc[c]
        wt = wt_sc[c]
        dr = dr_sc[c]
        accf = accf_sc[c]
        v32 = vals.view(np.int32)
        wt32 = wt.view(np.int32)
        for ti in range(c * per, min(n_tiles, (c + 1) * per)):
            r0 = ti * RT5
            nr = min(RT5, n_out - r0)
            for t0 in range(0, T, TB5):
                nt = min(TB5, T - t0)
                for q in range(TB5 * RT5):
                    accf[q] = np.float32(0.0)
                for b in range(nb):
                    for r in range(nr):
                        store32(vals, 32 * r, q5_0_vals(w, (r0 + r) * w.shape[1] + 22 * b))
                        dr[r] = _f16_at(w, r0 + r, 22 * b)
                    for r in range(nr, RT5):
                        for k in range(8):
                            v32[8 * r + k] = 0
                        dr[r] = np.float32(0.0)
                    for g in range(RT5 // 8):
                        for j in range(8):
                            for rr in range(8):
                                wt32[64 * g + 8 * j + rr] = v32[8 * (8 * g + rr) + j]
                    for g in range(RT5 // 8):
                        _q5_tile_dots(accf, wt, g, dr, xq, xd, xs, t0, nt, b)
                for t in range(nt):
                    for r in range(nr):
                        out[t0 + t, r0 + r] = accf[t * RT5 + r]
