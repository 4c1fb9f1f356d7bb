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


@njit(cache=True, fastmath=True)
def layernorm(out, x, w, b, eps):
    """out[t] = (x[t] - mean) / sqrt(var + eps) * w + b   (biased variance, as torch.nn.LayerNorm)."""
    n_tok, n = x.shape
    for t in range(n_tok):
        mean = np.float32(0.0)
        for j in range(n):
            mean += x[t, j]
        mean /= np.float32(n)
        var = np.float32(0.0)
        for j in range(n):
            d = x[t, j] - mean
            var += d * d
        inv = np.float32(1.0) / np.sqrt(var / np.float32(n) + eps)
        for j in range(n):
            out[t, j] = (x[t, j] - mean) * inv * w[j] + b[j]
