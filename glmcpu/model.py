"""glmcpu.load(path) -> Model: the runtime contract shared by tests, benchmarks and tools."""
import sys

import numpy as np
import numba

from glmcpu import kernels as K

from . import families, models
from .errors import GlmcpuError
from .file import ModelFile
from .kvcache import DEFAULT as KV_DEFAULT
from .linear import MODES
from .threads import resolve_threads


class Model:
    """A loaded model with its KV cache.

    forward(token_ids) -> float32 logits [len(token_ids), vocab_size], appending the tokens to
    the cache; reset() empties it. ``config`` is the model's normalized hyper-parameters
    (``ModelArgs``), ``hf_config`` the original config.json, ``family`` the family's name and
    ``arch`` the architecture instance that runs the forward (weights, KV cache, buffers).
    """

    def __init__(self, path, n_ctx=4096, threads=None, mode="fast", kv=KV_DEFAULT, n_slots=1):
        if not isinstance(n_ctx, (int, np.integer)) or n_ctx < 1:
            raise GlmcpuError(f"n_ctx must be a positive integer, got {n_ctx!r}")
        if not isinstance(n_slots, (int, np.integer)) or not 1 <= n_slots <= 256:
            raise GlmcpuError(f"n_slots (parallel sequences) must be an integer in 1..256, got {n_slots!r}")
        if mode not in MODES:
            raise GlmcpuError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.path = str(path)
        self.threads = resolve_threads(threads)
        self.file = ModelFile(self.path)
        self.family = self.file.family
        self._family = families.get(self.family)
        self.hf_config = self.file.hf_config
        self.mode = mode
        self.arch = models.get(self.file.params.get("arch")).runner(self.file, int(n_ctx), self.threads, mode=mode,
                                                                  kv=kv, n_slots=int(n_slots))
        self.kv = kv
        self.n_slots = int(n_slots)
        self.config = self.arch.args
        self.chat_template = self.file.meta.get("chat_template") or None
        self.vocab_size = self.config.n_vocab
        self.n_ctx = int(n_ctx)
        self.slot_tokens = [[] for _ in range(self.n_slots)]  # per slot: the ids whose keys and values are cached
        self.last_stats = {}  # of the last generate / chat / run: token counts, timings, finish, text
        self.last_result = None
        self._tokenizer = None
        if self.file.tokenizer_info:
            from .tokenizer import load_tokenizer
            self._tokenizer = load_tokenizer(self.family, self.file.tokenizer_info, self.file.tokenizer_bytes())
        self.is_chat = bool(self.file.params.get("chat", True))

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            raise GlmcpuError(f"{self.path} has no tokenizer; convert again with --tokenizer PATH/tokenizer.model")
        return self._tokenizer

    @property
    def tokens(self):
        """The ids cached in slot 0 (the slot forward, generate and chat use)."""
        return self.slot_tokens[0]

    @tokens.setter
    def tokens(self, ids):
        self.slot_tokens[0] = [int(t) for t in ids]

    @property
    def n_past(self):
        """How many positions of slot 0 are cached."""
        return len(self.slot_tokens[0])

    def reset(self, slot=None):
        """Empty the KV cache of ``slot`` (default: every slot); its next forward starts at position 0."""
        for s in range(self.n_slots) if slot is None else (self._slot(slot),):
            self.slot_tokens[s] = []
        if hasattr(self.arch, "reset"):
            self.arch.reset()

    def rewind(self, n, slot=0):
        """Keep only the first n cached tokens of ``slot`` (their keys and values stay valid: causal
        attention)."""
        if n <= 0:
            self.reset(slot)
            return
        del self.slot_tokens[self._slot(slot)][n:]

    def cached_prefix(self, ids, slot=0):
        """How many leading tokens of ``ids`` are in the cache of ``slot`` and can stay there (the
        prefix cache): at most len(ids) - 1, so that the last prompt token is computed and gives the
        logits; 0 for an architecture whose cached keys depend on the whole prompt (ChatGLM-6B)."""
        if not self.arch.reuse_cache:
            return 0
        cached = self.slot_tokens[self._slot(slot)]
        keep, limit = 0, min(len(ids) - 1, len(cached))
        while keep < limit and cached[keep] == ids[keep]:
            keep += 1
        return keep

    def _slot(self, slot):
        if not isinstance(slot, (int, np.integer)) or not 0 <= slot < self.n_slots:
            raise GlmcpuError(f"slot must be an integer in 0..{self.n_slots - 1}, got {slot!r} "
                              f"(load with n_slots=N for N parallel sequences)")
        return int(slot)

    def _ids(self, token_ids, what="forward()"):
        ids = np.asarray(token_ids)
        if ids.ndim == 0:
            ids = ids.reshape(1)
        if ids.ndim != 1 or ids.size == 0:
            raise GlmcpuError(f"{what} needs a non-empty 1-D sequence of token ids")
        if not np.issubdtype(ids.dtype, np.integer):
            raise GlmcpuError(f"token ids must be integers, got dtype {ids.dtype}")
        bad = ids[(ids < 0) | (ids >= self.vocab_size)]
        if bad.size:
            raise GlmcpuError(f"token id {int(bad[0])} is out of range for vocab_size {self.vocab_size}")
        return ids.astype(np.int64)

    def forward(self, token_ids, all_logits=True):
        """Logits for ``token_ids`` (appended to the cache of slot 0): float32 [T, vocab_size].

        With all_logits=False only the last token's logits are computed: [1, vocab_size].
        """
        ids = self._ids(token_ids)
        T = ids.size
        rows = np.arange(T) if all_logits else np.array([T - 1])
        return self._run_rows([(0, ids)], rows)

    def forward_batch(self, batch):
        """One step for several sequences at once: ``batch`` is a list of (slot, token_ids), each
        slot at most once; the tokens are appended to their slots' caches and every weight matrix
        is read once for all of them. Returns float32 [len(batch), vocab_size]: the logits after the
        last token of each entry (a decode step when it is one token, a prompt or a chunk of one
        otherwise)."""
        if not isinstance(batch, (list, tuple)) or not batch:
            raise GlmcpuError("forward_batch() needs a non-empty list of (slot, token_ids)")
        entries, seen, rows, n = [], set(), [], 0
        for item in batch:
            if not (isinstance(item, (list, tuple)) and len(item) == 2):
                raise GlmcpuError(f"forward_batch(): each entry must be (slot, token_ids), got {item!r}")
            slot, ids = self._slot(item[0]), self._ids(item[1], "forward_batch()")
            if slot in seen:
                raise GlmcpuError(f"forward_batch(): slot {slot} appears twice; give each sequence one entry")
            seen.add(slot)
            entries.append((slot, ids))
            n += ids.size
            rows.append(n - 1)
        return self._run_rows(entries, np.array(rows, np.int64))

    def _run_rows(self, entries, rows):
        """Run the rows of entries [(slot, ids int64)] in the arch's chunks; logits of ``rows``
        (indices into the concatenated rows, ascending)."""
        for slot, ids in entries:
            past = len(self.slot_tokens[slot])
            if past + ids.size > self.n_ctx:
                raise GlmcpuError(
                    f"context overflow: {past} cached + {ids.size} new tokens > n_ctx {self.n_ctx}"
                    + (f" in slot {slot}" if self.n_slots > 1 else "") + "; load with a larger n_ctx (--ctx) or reset()")
        all_ids = np.concatenate([ids for _, ids in entries])
        slot = np.concatenate([np.full(ids.size, s, np.int64) for s, ids in entries])
        pos = np.concatenate([len(self.slot_tokens[s]) + np.arange(ids.size, dtype=np.int64) for s, ids in entries])
        numba.set_num_threads(self.threads)
        impl = self.arch
        T = all_ids.size
        logits = np.empty((rows.size, self.vocab_size), np.float32)
        for c0 in range(0, T, impl.chunk):
            c1 = min(T, c0 + impl.chunk)
            lo, hi = np.searchsorted(rows, [c0, c1])
            impl.forward_rows(all_ids[c0:c1], slot[c0:c1], pos[c0:c1], rows[lo:hi] - c0,
                              logits[lo:hi] if hi > lo else None)
        before = [len(self.slot_tokens[s]) for s, _ in entries]
        for s, ids in entries:
            self.slot_tokens[s].extend(int(t) for t in ids)
        if K.has_nonfinite(logits):
            for (s, ids), n in zip(entries, before):
                self.rewind(n, s)
            raise GlmcpuError(f"{self.path}: the forward pass produced NaN or infinite logits "
                              f"(positions {before[0]}..{before[0] + entries[0][1].size - 1}); the weights overflow "
                              f"float32 arithmetic or the file is corrupted: convert the checkpoint again (--dtype f32)")
        return logits

    # ------------------------------------------------------------------ text generation

    def chat_prompt(self, messages, tools=None, parse_special=False):
        """Prompt ids the official chat code builds for ``messages``, ending where the reply starts.

        tools: OpenAI-style function specs, rendered as the family's official tool prompt.
        parse_special=False (the default) encodes message content literally, so a user typing
        "<|user|>" cannot inject a role token; True gives the official tokenizer's ids, where
        special-token text inside a message becomes the special token."""
        return self._family.chat_prompt(self.tokenizer, messages, tools=tools, parse_special=parse_special,
                                        template=self.chat_template)

    def generate(self, prompt, stream=True, stop=(), presence_penalty=0.0, frequency_penalty=0.0, **sampling):
        """Continue ``prompt`` (a string, encoded with the family's [gMASK]/sop prefix or v1's
        suffix, or a list of token ids used as is). Yields text pieces (stream=True) or returns
        the whole text. Sampling (glmcpu.generate.SamplingParams): max_new_tokens, temperature
        (0 = greedy), top_k, top_p, repetition_penalty, seed; ``stop`` strings end the text and are
        not part of it; presence / frequency penalties as OpenAI defines them. Starts from an
        empty cache. The result (finish reason, token counts, timings) is in ``last_result``."""
        from .generate import SamplingParams
        from .requests import GenerationRequest
        ids = self.tokenizer.encode(prompt, add_special_tokens=True) if isinstance(prompt, str) \
            else [int(t) for t in prompt]
        req = GenerationRequest(ids, SamplingParams(**sampling), stop=stop, reuse_cache=False,
                                presence_penalty=presence_penalty, frequency_penalty=frequency_penalty)
        it = self.run(req)
        return it if stream else "".join(it)

    def chat(self, messages, stream=True, notify=None, stop=(), presence_penalty=0.0, frequency_penalty=0.0,
             **sampling):
        """Reply to messages (see chat_prompt); the other arguments as for generate. The cache is
        reused across turns: only the part of the prompt that differs from what is cached is
        computed. If the conversation does not fit in the context, the oldest turns are dropped
        (system prompt kept) and ``notify`` (default: print to stderr) is told."""
        from .generate import SamplingParams
        from .requests import GenerationRequest
        notify = notify or (lambda msg: print(msg, file=sys.stderr))
        params = SamplingParams(**sampling)
        messages = list(messages)
        ids = self.chat_prompt(messages)
        reserve = min(params.max_new_tokens, self.n_ctx // 4)
        dropped = 0
        while len(ids) + reserve > self.n_ctx:
            first = next((i for i, m in enumerate(messages[:-1]) if m["role"] != "system"), None)
            if first is None:
                break
            del messages[first]
            while first < len(messages) - 1 and messages[first]["role"] == "assistant":
                del messages[first]
            dropped += 1
            ids = self.chat_prompt(messages)
        if dropped:
            notify(f"[context full: dropped the {dropped} oldest message(s) to fit n_ctx={self.n_ctx}]")
        req = GenerationRequest(ids, params, stop=stop, presence_penalty=presence_penalty,
                                frequency_penalty=frequency_penalty)
        it = self.run(req)
        return it if stream else "".join(it)

    def run(self, request, cancelled=None):
        """Generate for a glmcpu.requests.GenerationRequest: the iterator of text pieces of
        glmcpu.requests.run (which checks the request at once). When it ends, ``request.result``
        is the CompletionResult and also ``last_result``."""
        from . import requests
        return self._run(requests.run(self, request, cancelled), request)

    def _run(self, pieces, request):
        try:
            yield from pieces
        finally:
            r = self.last_result = request.result
            self.last_stats = {"prompt_tokens": r.prompt_tokens, "cached_tokens": r.cached_tokens,
                               "new_tokens": r.completion_tokens, "finish": r.finish_reason,
                               "prefill_s": r.prefill_s, "decode_s": r.decode_s, "text": r.text}

    def __repr__(self):
        return f"<glmcpu.Model {self.family} {self.path!r} n_ctx={self.n_ctx} kv={self.kv} threads={self.threads}>"


def load(path, n_ctx=4096, threads=None, mode="fast", kv=KV_DEFAULT, n_slots=1):
    """Memory-map a glmcpu model file and allocate its KV cache for ``n_ctx`` tokens.

    threads=None uses all physical cores. mode: "fast" (the default: numba kernels, int8
    activations for quantized weights), "exact" (weights dequantized to float32 at load, a
    copy: the exact forward on the dequantized weights) or "reference" (numpy scalar reference
    of what the fast kernels compute; slow, for tests). kv: the KV cache's type, "f16" (the
    default: half the memory, values rounded when cached) or "f32" (the official arithmetic).
    n_slots: independent sequences the cache holds (each n_ctx tokens), for forward_batch.
    """
    return Model(path, n_ctx=n_ctx, threads=threads, mode=mode, kv=kv, n_slots=n_slots)
