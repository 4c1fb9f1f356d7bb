"""glmcpu.load(path) -> Model: the runtime contract shared by tests, benchmarks and tools."""
import numpy as np
import numba

from .errors import GlmcpuError
from .file import ModelFile
from .linear import MODES
from .threads import resolve_threads

ARCHS = {}


def _arch(name):
    if not ARCHS:
        from .models.chatglm import ChatGLM
        ARCHS["chatglm"] = ChatGLM
    if name not in ARCHS:
        raise GlmcpuError(f"unsupported architecture {name!r} in the model file (upgrade glmcpu)")
    return ARCHS[name]


class Model:
    """A loaded model with its KV cache.

    forward(token_ids) -> float32 logits [len(token_ids), vocab_size], appending the tokens to
    the cache; reset() empties it. ``config`` is the model's normalized hyper-parameters
    (``ModelArgs``), ``hf_config`` the original config.json.
    """

    def __init__(self, path, n_ctx=4096, threads=None, mode="fast"):
        if not isinstance(n_ctx, (int, np.integer)) or n_ctx < 1:
            raise GlmcpuError(f"n_ctx must be a positive integer, got {n_ctx!r}")
        if mode not in MODES:
            raise GlmcpuError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.path = str(path)
        self.threads = resolve_threads(threads)
        self.file = ModelFile(self.path)
        self.family = self.file.family
        self.hf_config = self.file.hf_config
        self.mode = mode
        self._impl = _arch(self.file.params.get("arch"))(self.file, int(n_ctx), self.threads, mode=mode)
        self.config = self._impl.args
        self.vocab_size = self.config.n_vocab
        self.n_ctx = int(n_ctx)
        self.n_past = 0

    def reset(self):
        """Empty the KV cache (the next forward starts at position 0)."""
        self.n_past = 0

    def forward(self, token_ids, all_logits=True):
        """Logits for ``token_ids`` (appended to the cache): float32 [T, vocab_size].

        With all_logits=False only the last token's logits are computed: [1, vocab_size].
        """
        ids = np.asarray(token_ids)
        if ids.ndim == 0:
            ids = ids.reshape(1)
        if ids.ndim != 1 or ids.size == 0:
            raise GlmcpuError("forward() needs a non-empty 1-D sequence of token ids")
        if not np.issubdtype(ids.dtype, np.integer):
            raise GlmcpuError(f"token ids must be integers, got dtype {ids.dtype}")
        bad = ids[(ids < 0) | (ids >= self.vocab_size)]
        if bad.size:
            raise GlmcpuError(f"token id {int(bad[0])} is out of range for vocab_size {self.vocab_size}")
        T = ids.size
        if self.n_past + T > self.n_ctx:
            raise GlmcpuError(
                f"context overflow: {self.n_past} cached + {T} new tokens > n_ctx {self.n_ctx}; "
                f"load with a larger n_ctx (--ctx) or reset()")
        ids = ids.astype(np.int64)
        numba.set_num_threads(self.threads)
        impl = self._impl
        logits = np.empty((T if all_logits else 1, self.vocab_size), np.float32)
        for c0 in range(0, T, impl.chunk):
            c1 = min(T, c0 + impl.chunk)
            if all_logits:
                out = logits[c0:c1]
            else:
                out = logits if c1 == T else None
            impl.forward_chunk(ids[c0:c1], self.n_past, out)
            self.n_past += c1 - c0
        return logits

    def __repr__(self):
        return f"<glmcpu.Model {self.family} {self.path!r} n_ctx={self.n_ctx} threads={self.threads}>"


def load(path, n_ctx=4096, threads=None, mode="fast"):
    """Memory-map a glmcpu model file and allocate its KV cache for ``n_ctx`` tokens.

    threads=None uses all physical cores. mode: "fast" (the default: numba kernels, int8
    activations for quantized weights), "exact" (weights dequantized to float32 at load, a
    copy: the exact forward on the dequantized weights) or "reference" (numpy scalar reference
    of what the fast kernels compute; slow, for tests).
    """
    return Model(path, n_ctx=n_ctx, threads=threads, mode=mode)
