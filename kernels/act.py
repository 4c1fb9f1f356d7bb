import numpy as np
from numba import njit


@njit(cache=True, fastmath=True)
def swiglu(out, x):
    """out [T, F] = silu(x[:, :F]) * x[:, F:]   with x [T, 2F] (the fused dense_h_to_4h output)."""
    n_tok, f = out.shape
    for t in range(n_tok):
        for j in range(f):
            a = x[t, j]
            out[t, j] = a / (np.float32(1.0) + np.exp(-a)) * x[t, f + j]
