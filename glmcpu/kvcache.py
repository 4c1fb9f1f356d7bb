"""The KV cache: keys and values of every cached position, per layer, in float16 or float32.

  KVCache(n_layer, n_kv_head, n_ctx, head_dim, kind, n_slots)   allocated once at load, checked against RAM
  cache.write(layer, slot, pos, k, v)        row t of k, v [T, n_kv_head, head_dim] float32 goes to
                                             slot[t], position pos[t] (slot, pos [T] int64)
  cache.k[layer], cache.v[layer]             what the attention kernel reads [n_slots, G, n_ctx, D]

A slot is one sequence's cache: several slots let one forward step carry the rows of several
independent sequences (each weight read once for all of them).

float16 (the default) halves the cache (a 32k context of ChatGLM3-6B: 1.1 GB instead of 2.1 GB)
and the bytes attention reads per token; values are rounded to nearest-even when written and
widened exactly when read, scores and sums stay float32. float32 keeps the forward exactly as
the official code computes it (the golden tests use it). The kernel receives float16 as its
uint16 bits (numba has no float16): the choice is made here, once, as a view per layer.
"""
import numpy as np

from .errors import GlmcpuError
from .models.args import check_cache_fits

KINDS = {"f16": np.float16, "f32": np.float32}
DEFAULT = "f16"


def check_kind(kind):
    if kind not in KINDS:
        raise GlmcpuError(f"KV cache type must be one of {', '.join(KINDS)}, got {kind!r}")
    return kind


class KVCache:
    def __init__(self, n_layer, n_kv_head, n_ctx, head_dim, kind=DEFAULT, n_slots=1):
        self.kind = check_kind(kind)
        self.n_slots = n_slots
        dtype = np.dtype(KINDS[kind])
        shape = (n_layer, n_slots, n_kv_head, n_ctx, head_dim)         # [L, S, G, n_ctx, D]
        n_bytes = 2 * int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        check_cache_fits(n_bytes, n_ctx, n_slots)
        try:
            self.keys = np.zeros(shape, dtype)
            self.values = np.zeros(shape, dtype)
        except MemoryError:
            raise GlmcpuError(f"not enough memory for a {n_ctx}-token context ({n_bytes / 1e9:.1f} GB {kind} "
                              f"KV cache); use a smaller context (n_ctx / --ctx) or --kv f16") from None
        kernel_view = (lambda a: a.view(np.uint16)) if kind == "f16" else (lambda a: a)
        self.k = [kernel_view(self.keys[i]) for i in range(n_layer)]   # [S, G, n_ctx, D] per layer
        self.v = [kernel_view(self.values[i]) for i in range(n_layer)]

    def write(self, layer, slot, pos, k, v):
        """Cache row t of k, v [T, G, D] float32 in ``layer`` at slot[t], position pos[t]."""
        self.keys[layer][slot, :, pos] = k                               # [T, G, D], rounded if f16
        self.values[layer][slot, :, pos] = v

    @property
    def nbytes(self):
        return self.keys.nbytes + self.values.nbytes
