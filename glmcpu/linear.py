"""Weight matrices and the kernel that multiplies by each, chosen once at load from the stored type."""
import numpy as np

from glmcpu import kernels as K
from .errors import GlmcpuError


class Linear:
    """y = x @ W.T for W [n_out, n_in]; __call__(out [T, n_out], x [T, n_in])."""

    def __init__(self, w):
        self.w = w
        self.n_out, self.n_in = w.shape


class LinearF32(Linear):
    type = "f32"

    def __call__(self, out, x):
        if x.shape[0] == 1:
            K.matvec_f32(out[0], x[0], self.w)
        else:
            K.matmul_f32(out, x, self.w)

    def embed(self, out, ids):
        K.embed_f32(out, self.w, ids)


class LinearF16(Linear):
    type = "f16"

    def __init__(self, w, row_buf):
        super().__init__(w)
        self.row_buf = row_buf  # shared scratch [n_chunks, >= n_in] float32

    def __call__(self, out, x):
        if x.shape[0] == 1:
            K.matvec_f16(out[0], x[0], self.w)
        else:
            K.matmul_f16(out, self.row_buf, x, self.w)

    def embed(self, out, ids):
        K.embed_f16(out, self.w, ids)


def make_linear(mf, name, shape, row_buf):
    """The Linear for tensor ``name`` of ModelFile ``mf``, checking its stored type and shape."""
    info = mf.tensor_types.get(name)
    if info is None:
        raise GlmcpuError(f"{mf.path}: corrupted file: tensor {name!r} is missing")
    if tuple(info["shape"]) != tuple(shape):
        raise GlmcpuError(f"{mf.path}: corrupted file: {name!r} has shape {info['shape']}, expected {list(shape)}")
    t = info["type"]
    w = mf.tensor(name)
    if tuple(w.shape) != tuple(shape):
        raise GlmcpuError(f"{mf.path}: corrupted file: {name!r} stored with shape {list(w.shape)}")
    if t == "f32" and w.dtype == np.float32:
        return LinearF32(w)
    if t == "f16" and w.dtype == np.uint16:
        return LinearF16(w, row_buf)
    raise GlmcpuError(f"{mf.path}: tensor {name!r} has type {t!r}, which this glmcpu cannot run (upgrade glmcpu)")


def load_vector(mf, name, n):
    """A float32 [n] vector (norm weight or bias)."""
    info = mf.tensor_types.get(name)
    if info is None or info["type"] != "f32" or tuple(info["shape"]) != (n,):
        raise GlmcpuError(f"{mf.path}: corrupted file: {name!r} missing or not float32 [{n}]")
    return mf.tensor(name)
