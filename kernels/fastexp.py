"""exp(x) for x <= 0 in float32, in plain arithmetic that LLVM vectorizes (8 lanes with AVX2).

np.exp inside a numba loop is a call into libm per element (no SVML here), which keeps the
softmax of a long attention row scalar. ``exp_nonpos`` is Cephes' expf: x = n ln2 + r with
|r| <= ln2 / 2, e^r from a degree-7 polynomial (relative error about 1 ulp), times 2^n built
from its exponent bits. Softmax only ever needs x <= 0 (a score minus the row's maximum), so
there is no overflow branch; x < -87.3 (e^x below the smallest normal float32) and -inf give 0,
NaN gives NaN (the forward's NaN guard must still see it).
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .nojit import fallback

LOG2E = np.float32(1.44269504088896341)
LN2_HI = np.float32(0.693359375)        # ln 2 = LN2_HI + LN2_LO, LN2_HI exact in 10 bits
LN2_LO = np.float32(-2.12194440e-4)
P0, P1, P2 = np.float32(1.9875691500e-4), np.float32(1.3981999507e-3), np.float32(8.3334519073e-3)
P3, P4, P5 = np.float32(4.1665795894e-2), np.float32(1.6666665459e-1), np.float32(5.0000001201e-1)
LOWEST = np.float32(-87.3)


def f32_from_bits_py(bits):
    return np.array(int(bits) & 0xFFFFFFFF, np.uint32).view(np.float32)[()]


@fallback(f32_from_bits_py)
@intrinsic
def f32_from_bits(typingctx, bits):
    """The float32 whose IEEE bits are the low 32 bits of the integer ``bits``."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        v = args[0]
        if v.type.width != 32:
            v = builder.trunc(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(bits), codegen


@njit(cache=True, inline="always", fastmath={"reassoc", "contract"})
def exp_nonpos(x):
    """e^x for float32 x <= 0 (see the module docstring)."""
    xc = LOWEST if x < LOWEST else x                     # NaN stays NaN
    n = np.floor(xc * LOG2E + np.float32(0.5))           # nearest integer, in [-126, 0]
    r = (xc - n * LN2_HI) - n * LN2_LO                   # |r| <= ln2 / 2
    p = ((((P0 * r + P1) * r + P2) * r + P3) * r + P4) * r + P5
    e = (p * r * r + r) + np.float32(1.0)
    ni = np.int32(n) if n >= np.float32(-126.0) else np.int32(-126)  # NaN: any finite n (e is NaN)
    scale = f32_from_bits((ni + np.int32(127)) << np.int32(23))     # 2^n
    return np.float32(0.0) if x < LOWEST else e * scale
