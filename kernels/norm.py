"""Norms. The sums of squares are taken in float64: in float32 they overflow once |x| passes
~1e19 / sqrt(n) and lose tiny inputs to underflow; in float64 neither happens for any finite
float32 input, and the cost is nothing next to a matmul. Results are rounded to float32 once.
fastmath only as reassoc + contract (vectorized sums), never nnan / ninf. error_model="numpy":
a division by zero (eps 0 and a zero row) gives inf / NaN, which the forward's guard reports,
instead of numba's ZeroDivisionError."""
import numpy as np
from numba import njit


@njit(cache=True, fastmath={"reassoc", "contract"}, error_model="numpy")
def rmsnorm(out, x, w, eps):
    """out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w      x, out [T, n]; w [n]."""
    n_tok, n = x.shape
    for t in range(n_tok):
        ss = np.float64(0.0)
        for j in range(n):
            v = np.float64(x[t, j])
            ss += v * v
        inv = np.float64(1.0) / np.sqrt(ss / n + np.float64(eps))
        for j in range(n):
            out[t, j] = np.float32(w[j] * (x[t, j] * inv))


@njit(cache=True, fastmath={"reassoc", "contract"}, error_model="numpy")
def layernorm(out, x, w, b, eps):
    """out[t] = (x[t] - mean) / sqrt(var + eps) * w + b   (biased variance, as torch.nn.LayerNorm)."""
    n_tok, n = x.shape
    for t in range(n_tok):
        mean = np.float64(0.0)
        for j in range(n):
            mean += np.float64(x[t, j])
        mean /= n
        var = np.float64(0.0)
        for j in range(n):
            d = x[t, j] - mean
            var += d * d
        inv = np.float64(1.0) / np.sqrt(var / n + np.float64(eps))
        for j in range(n):
            out[t, j] = np.float32((x[t, j] - mean) * inv * w[j] + b[j])
