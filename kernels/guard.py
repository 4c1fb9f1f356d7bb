"""Numerical guard: does an array hold a NaN or an infinity? For the model's forward, so that a
broken activation ends in an error rather than in tokens sampled from garbage."""
import numpy as np
from numba import njit

from .nojit import JIT


@njit(cache=True)  # no fastmath: with nnan / ninf LLVM may assume the answer is False
def first_nonfinite(x):
    """Index of the first NaN or infinity in the 1-D float32 array x, or -1 if there is none."""
    for i in range(x.shape[0]):
        if not np.isfinite(x[i]):
            return i
    return -1


def has_nonfinite(x):
    """True when the float32 array x (any shape) holds a NaN or an infinity. Allocates nothing for a
    contiguous x (about 0.1 ms per 150k values); with the JIT off, numpy's isfinite does it."""
    flat = x.reshape(-1)
    if not JIT:
        return not bool(np.isfinite(flat).all())
    return first_nonfinite(flat) >= 0
