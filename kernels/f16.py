"""float16 -> float32 conversion inside numba kernels.

Numba has no float16 type on the CPU, so f16 weights are passed as uint16 arrays and
widened with an LLVM ``fpext half -> float``. On x86 with F16C (and on aarch64) LLVM turns
a vectorized loop of these into ``vcvtph2ps`` / ``fcvtl``, so an f16 matvec runs at
memory bandwidth. With the JIT off (NUMBA_DISABLE_JIT=1) numpy does the same conversion.
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from .nojit import fallback


def f16_to_f32_py(bits):
    """f16_to_f32 in numpy, bit for bit: the exact widening, and a NaN keeps its payload with the
    quiet bit set (as vcvtph2ps / fcvt set it; numpy alone would keep a signalling NaN)."""
    f = np.float32(np.uint16(bits).view(np.float16))
    if f != f:
        f = (f.view(np.uint32) | np.uint32(0x400000)).view(np.float32)
    return f


@fallback(f16_to_f32_py)
@intrinsic
def f16_to_f32(typingctx, bits):
    """Reinterpret a uint16 as IEEE half precision and widen it to float32 (exact)."""
    if bits != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        half = builder.bitcast(args[0], ir.HalfType())
        return builder.fpext(half, ir.FloatType())

    return types.float32(types.uint16), codegen


def widen(x):
    """A cache element as float32: f16 (stored as uint16 bits) widened exactly, float32 as it is.
    One kernel source serves both KV-cache types; numba compiles one version per cache dtype."""
    if isinstance(x, np.uint16):
        return f16_to_f32_py(x)
    return np.float32(x)


@overload(widen, jit_options={"cache": True})
def _widen_jit(x):
    if x == types.uint16:
        return lambda x: f16_to_f32(x)
    if x == types.float32:
        return lambda x: x
    return None
