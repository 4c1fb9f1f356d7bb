"""Activations, in a form that cannot overflow: sigmoid(a) is computed from e = exp(-|a|), which
lies in (0, 1] for every finite a, as 1 / (1 + e) for a >= 0 and e / (1 + e) below. (The
textbook a / (1 + exp(-a)) overflows exp for a < -88.7.) fastmath only as reassoc + contract:
nnan / ninf would let LLVM assume no NaN or infinity, exactly the values an extreme input makes.
error_model="numpy": IEEE division, no zero-divisor checks (1 + e is never 0 anyway).
"""
import numpy as np
from numba import njit


@njit(cache=True, fastmath={"reassoc", "contract"}, error_model="numpy")
def swiglu(out, x):
    """out [T, F] = silu(x[:, :F]) * x[:, F:]   with x [T, 2F] (the fused dense_h_to_4h output)."""
    n_tok, f = out.shape
    for t in range(n_tok):
        for j in range(f):
            a = x[t, j]
            e = np.exp(-abs(a))                                   # (0, 1]
            r = np.float32(1.0) / (np.float32(1.0) + e)
            sig = r if a >= np.float32(0.0) else e * r            # sigmoid(a)
            out[t, j] = (a * sig) * x[t, f + j]


@njit(cache=True, fastmath={"reassoc", "contract"}, error_model="numpy")
def gelu_tanh(x):
    """In place: x = 0.5 x (1 + tanh(sqrt(2/pi) x (1 + 0.044715 x^2)))   x [T, F] (ChatGLM-6B's gelu_impl).

    Computed as x * sigmoid(2 z) (the same function: 0.5 (1 + tanh z) = sigmoid(2 z)), which keeps
    its relative accuracy where 1 + tanh z cancels (large negative x) and gives x, or -0, when
    x^2 overflows."""
    n_tok, f = x.shape
    for t in range(n_tok):
        for j in range(f):
            a = x[t, j]
            z2 = np.float32(1.5957691216057308) * a * (np.float32(1.0) + np.float32(0.044715) * a * a)
            e = np.exp(-abs(z2))
            r = np.float32(1.0) / (np.float32(1.0) + e)
            x[t, j] = a * (r if z2 >= np.float32(0.0) else e * r)
