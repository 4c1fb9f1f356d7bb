import numpy as np
from numba import njit


@njit(cache=True, fastmath=True)
def rmsnorm(out, x, w, eps):
    """out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w      x, out [T, n]; w [n]."""
    n_tok, n = x.shape
    for t in range(n_tok):
        ss = np.float32(0.0)
        for j in range(n):
            ss += x[t, j] * x[t, j]
        inv = np.float32(1.0) / np.sqrt(ss / np.float32(n) + eps)
        for j in range(n):
            out[t, j] = w[j] * (x[t, j] * inv)
