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


@njit(cache=True, fastmath=True)
def gelu_tanh(x):
    """In place: x = 0.5 x (1 + tanh(sqrt(2/pi) x (1 + 0.044715 x^2)))   x [T, F] (ChatGLM-6B's gelu_impl)."""
    n_tok, f = x.shape
    for t in range(n_tok):
        for j in range(f):
            a = x[t, j]
            x[t, j] = np.float32(0.5) * a * (np.float32(1.0) + np.tanh(
                np.float32(0.7978845608028654) * a * (np.float32(1.0) + np.float32(0.044715) * a * a)))
