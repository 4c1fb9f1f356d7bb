"""Linear layers: y = x @ W.T with W stored row-major [n_out, n_in] (the PyTorch layout).

matvec_*: one token, x [n_in] -> out [n_out], parallel over output rows.
matmul_*: T tokens, x [T, n_in] -> out [T, n_out]; each weight row is read (and widened) once
          and reused for all T tokens, parallel over output rows.
fastmath only as reassoc + contract (what vectorizing the dot products needs): with nnan / nsz
LLVM may fold a NaN or inf weight times zero to zero, and the forward's NaN guard would miss it.
"""
import numpy as np
from numba import njit, prange

from .f16 import f16_to_f32


@njit(cache=True, parallel=True, fastmath={"reassoc", "contract"})
def matvec_f32(out, x, w):
    n_out, n_in = w.shape
    for i in prange(n_out):
        acc = np.float32(0.0)
        for j in range(n_in):
            acc += w[i, j] * x[j]
        out[i] = acc


@njit(cache=True, parallel=True, fastmath={"reassoc", "contract"})
def matvec_f16(out, x, w):
    n_out, n_in = w.shape
    for i in prange(n_out):
        acc = np.float32(0.0)
        for j in range(n_in):
            acc += f16_to_f32(w[i, j]) * x[j]
        out[i] = acc


@njit(cache=True, parallel=True, fastmath={"reassoc", "contract"})
def matmul_f32(out, x, w):
    n_tok = x.shape[0]
    n_out, n_in = w.shape
    for i in prange(n_out):
        for t in range(n_tok):
            acc = np.float32(0.0)
            for j in range(n_in):
                acc += w[i, j] * x[t, j]
            out[t, i] = acc


@njit(cache=True, parallel=True, fastmath={"reassoc", "contract"})
def matmul_f16(out, row_buf, x, w):
    """row_buf [n_threads_max, n_in] float32 scratch: each weight row is widened once."""
    n_tok = x.shape[0]
    n_out, n_in = w.shape
    n_chunks = row_buf.shape[0]
    rows_per_chunk = (n_out + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        buf = row_buf[c]
        r1 = min(n_out, (c + 1) * rows_per_chunk)
        for i in range(c * rows_per_chunk, r1):
            for j in range(n_in):
                buf[j] = f16_to_f32(w[i, j])
            for t in range(n_tok):
                acc = np.float32(0.0)
                for j in range(n_in):
                    acc += buf[j] * x[t, j]
                out[t, i] = acc


@njit(cache=True, parallel=True, fastmath={"reassoc", "contract"})
def matmul_bf16(out, row_buf, x, w):
    """w [n_out, n_in] bfloat16 bits (uint16), T >= 1 tokens. A bfloat16 is the top half of a
    float32, so each weight row is widened exactly (bits << 16) into row_buf [n_chunks, n_in]
    float32 scratch, once, and reused for all T tokens."""
    n_tok = x.shape[0]
    n_out, n_in = w.shape
    n_chunks = row_buf.shape[0]
    rows_per_chunk = (n_out + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        buf = row_buf[c]
        bits = buf.view(np.uint32)
        r1 = min(n_out, (c + 1) * rows_per_chunk)
        for i in range(c * rows_per_chunk, r1):
            for j in range(n_in):
                bits[j] = np.uint32(w[i, j]) << np.uint32(16)
            for t in range(n_tok):
                acc = np.float32(0.0)
                for j in range(n_in):
                    acc += buf[j] * x[t, j]
                out[t, i] = acc


@njit(cache=True)
def embed_bf16(out, table, ids):
    n = table.shape[1]
    for t in range(ids.shape[0]):
        row = ids[t]
        bits = out[t].view(np.uint32)
        for j in range(n):
            bits[j] = np.uint32(table[row, j]) << np.uint32(16)


@njit(cache=True)
def embed_f32(out, table, ids):
    for t in range(ids.shape[0]):
        out[t, :] = table[ids[t]]


@njit(cache=True)
def embed_f16(out, table, ids):
    n = table.shape[1]
    for t in range(ids.shape[0]):
        row = ids[t]
        for j in range(n):
            out[t, j] = f16_to_f32(table[row, j])


@njit(cache=True, parallel=True)
def dequant_rows_f16(out, w):
    """out [n_out, n_in] float32 <- w [n_out, n_in] float16 bits."""
    n_out, n_in = w.shape
    for i in prange(n_out):
        for j in range(n_in):
            out[i, j] = f16_to_f32(w[i, j])
