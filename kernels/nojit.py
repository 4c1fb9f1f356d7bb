"""The kernels with the JIT off (``NUMBA_DISABLE_JIT=1``, numba's switch for debugging kernels in
plain Python).

``@njit`` functions then run as the Python they are written in, but a numba ``@intrinsic`` (a
function that emits LLVM IR) cannot run at all. Each intrinsic of this package therefore has a
numpy twin with the same result, bit for bit, and ``fallback(twin)`` puts the twin in the
intrinsic's place when the JIT is off. The choice is made once, at import, from numba's own
configuration; with the JIT on, the kernels see exactly the intrinsic, as before.
"""
from numba import config

JIT = not config.DISABLE_JIT


def fallback(python_impl):
    """Decorator for an ``@intrinsic``: the intrinsic with the JIT on, ``python_impl`` with it off."""
    def choose(intrinsic_fn):
        return intrinsic_fn if JIT else python_impl
    return choose
