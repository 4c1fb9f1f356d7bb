"""The GLM decoder: ChatGLM2-6B, ChatGLM3-6B, GLM-4-9B, glm-4-9b-chat-hf, GLM-Edge, GLM-4-0414.

    x = embed(ids)
    for each block:
        h = x + attention(rmsnorm(x))          # grouped-query attention, rotary on rope_dim channels
        x = h + mlp(rmsnorm(h))                # SwiGLU
    logits = output(rmsnorm(x))

With ``post_norms`` (GLM-4-0414) each sublayer's output is RMS-normed before its residual add:
``h = x + rmsnorm(attention(rmsnorm(x)))``, ``x = h + rmsnorm(mlp(rmsnorm(h)))``.

Weights are zero-copy views of the memory-mapped file; every buffer (KV cache, activations for
a chunk of up to ``chunk`` tokens) is allocated once here, never inside forward.
"""
from dataclasses import dataclass, field

import numpy as np

from glmcpu import kernels as K
from glmcpu.errors import GlmcpuError
from glmcpu.kvcache import DEFAULT as KV_DEFAULT, KVCache
from glmcpu.linear import Workspace, load_vector, make_linear

from .args import check_tensors, from_params, require


@dataclass
class ModelArgs:
    n_layer: int
    n_embd: int
    n_head: int
    n_kv_head: int
    head_dim: int
    n_ff: int
    n_vocab: int
    norm_eps: float
    rope_dim: int          # rotated channels per head, from the first (half of head_dim; all for GLM-Edge)
    rope_base: float       # 10000 * rope_ratio for ChatGLM3-32k/128k and GLM-4; rope_theta for the HF layouts
    rope_pos_scale: float  # positions divided by this (ChatGLM2-6B-32k's rope_ratio)
    qkv_bias: bool
    seq_length: int
    eos_token_ids: list = field(default_factory=list)
    pad_token_id: int = None
    post_norms: bool = False  # RMSNorm on each sublayer's output (GLM-4-0414)
    arch: str = "chatglm"

    @classmethod
    def from_dict(cls, d):
        return from_params(cls, d)

    def check(self):
        require(self.n_head % self.n_kv_head == 0, "n_kv_head", self.n_kv_head, f"a divisor of n_head={self.n_head}")
        require(self.rope_dim % 2 == 0 and self.rope_dim <= self.head_dim, "rope_dim", self.rope_dim,
                f"an even number <= head_dim={self.head_dim}")
        require(self.arch == "chatglm", "arch", self.arch, "'chatglm'")


def tensor_table(a):
    """Our tensor names -> shapes for ModelArgs ``a`` (the converter, the loader and the test
    helpers all read this table)."""
    E, H, G, D, F, V = a.n_embd, a.n_head, a.n_kv_head, a.head_dim, a.n_ff, a.n_vocab
    shapes = {"token_embd.weight": (V, E)}
    for i in range(a.n_layer):
        b = f"blk.{i}."
        shapes[b + "attn_norm.weight"] = (E,)
        shapes[b + "attn_qkv.weight"] = ((H + 2 * G) * D, E)
        if a.qkv_bias:
            shapes[b + "attn_qkv.bias"] = ((H + 2 * G) * D,)
        shapes[b + "attn_output.weight"] = (E, H * D)
        if a.post_norms:
            shapes[b + "attn_post_norm.weight"] = (E,)
        shapes[b + "ffn_norm.weight"] = (E,)
        shapes[b + "ffn_up_gate.weight"] = (2 * F, E)
        shapes[b + "ffn_down.weight"] = (E, F)
        if a.post_norms:
            shapes[b + "ffn_post_norm.weight"] = (E,)
    shapes["output_norm.weight"] = (E,)
    shapes["output.weight"] = (V, E)
    return shapes


def rope_tables(n_ctx, rope_dim, base, pos_scale):
    """cos, sin [n_ctx, rope_dim // 2] in float32, computed as the official code does."""
    exponents = np.arange(0, rope_dim, 2, dtype=np.float32) / np.float32(rope_dim)
    theta = (np.float32(1.0) / np.power(np.float32(base), exponents)).astype(np.float32)
    pos = np.arange(n_ctx, dtype=np.float32) / np.float32(pos_scale)
    angles = np.outer(pos, theta).astype(np.float32)                  # [n_ctx, rope_dim/2]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


class Block:
    pass


class ChatGLM:
    reuse_cache = True  # causal: a cached prefix stays valid when the prompt grows
    prompt_suffix = ()  # ids a raw prompt must end with (none: the prefix is in the tokenizer)

    def __init__(self, mf, n_ctx, threads, chunk=256, mode="fast", kv=KV_DEFAULT, n_slots=1):
        a = self.args = ModelArgs.from_dict(mf.params)
        check_tensors(mf, tensor_table(a))
        self.cache = KVCache(a.n_layer, a.n_kv_head, n_ctx, a.head_dim, kv, n_slots)  # [L, S, G, n_ctx, D]
        self.n_ctx = n_ctx
        self.chunk = C = max(1, min(chunk, n_ctx))
        E, H, G, D, F = a.n_embd, a.n_head, a.n_kv_head, a.head_dim, a.n_ff
        qkv_dim = (H + 2 * G) * D
        tile_rows = int(mf.quantization.get("tile_rows", 128))
        self.ws = Workspace(C, max(E, H * D, F), threads, tile_rows)  # kernel scratch

        def lin(name, shape):
            return make_linear(mf, name, shape, self.ws, mode)

        self.tok_embd = lin("token_embd.weight", (a.n_vocab, E))       # [vocab, E]
        self.blocks = []
        for i in range(a.n_layer):
            b, p = Block(), f"blk.{i}."
            b.attn_norm = load_vector(mf, p + "attn_norm.weight", E)       # [E]
            b.attn_qkv = lin(p + "attn_qkv.weight", (qkv_dim, E))          # [(H + 2G) D, E]
            b.attn_qkv_bias = load_vector(mf, p + "attn_qkv.bias", qkv_dim) if a.qkv_bias else None
            b.attn_output = lin(p + "attn_output.weight", (E, H * D))      # [E, H D]
            b.attn_post_norm = load_vector(mf, p + "attn_post_norm.weight", E) if a.post_norms else None
            b.ffn_norm = load_vector(mf, p + "ffn_norm.weight", E)         # [E]
            b.ffn_up_gate = lin(p + "ffn_up_gate.weight", (2 * F, E))      # [2F, E]
            b.ffn_down = lin(p + "ffn_down.weight", (E, F))                # [E, F]
            b.ffn_post_norm = load_vector(mf, p + "ffn_post_norm.weight", E) if a.post_norms else None
            self.blocks.append(b)
        self.output_norm = load_vector(mf, "output_norm.weight", E)        # [E]
        self.output = lin("output.weight", (a.n_vocab, E))                 # [vocab, E]

        self.cos, self.sin = rope_tables(n_ctx, a.rope_dim, a.rope_base, a.rope_pos_scale)
        self.cos.setflags(write=False)  # constants, read-only like the weights
        self.sin.setflags(write=False)
        self.scale = np.float32(1.0 / np.sqrt(D))
        self.eps = np.float32(a.norm_eps)
        try:
            self.x = np.zeros((C, E), np.float32)            # residual stream
            self.h = np.zeros((C, E), np.float32)            # normed input of a sublayer
            self.tmp = np.zeros((C, E), np.float32)          # sublayer output
            self.qkv = np.zeros((C, qkv_dim), np.float32)
            self.attn = np.zeros((C, H * D), np.float32)
            self.gu = np.zeros((C, 2 * F), np.float32)
            self.act = np.zeros((C, F), np.float32)
            self.att = np.zeros((threads, H // G + 1, max(n_ctx + 1, 8 * D)), np.float32)  # attention scratch
        except MemoryError:
            raise GlmcpuError(f"not enough memory for the activation buffers of a {C}-token chunk") from None

    def kv_bytes(self):
        return self.cache.nbytes

    def scratch_bytes(self):
        bufs = (self.x, self.h, self.tmp, self.qkv, self.attn, self.gu, self.act, self.att, self.cos, self.sin)
        return self.ws.nbytes() + sum(b.nbytes for b in bufs)

    def forward_rows(self, ids, slot, pos, rows, logits):
        """One step over T <= chunk rows: token ids [T] of the sequences in cache slots slot [T] at
        positions pos [T] (int64; the rows of one sequence in order, its earlier positions cached).
        Writes the logits of rows (indices into the T rows) to logits [len(rows), vocab] if given."""
        a = self.args
        T = ids.shape[0]
        H, G, D = a.n_head, a.n_kv_head, a.head_dim
        x, h, tmp = self.x[:T], self.h[:T], self.tmp[:T]
        qkv, attn, gu, act = self.qkv[:T], self.attn[:T], self.gu[:T], self.act[:T]
        qkv3 = qkv.reshape(T, H + 2 * G, D)                                  # [T, H + 2G, D]

        self.tok_embd.embed(x, ids)                                          # [T, E]
        for layer, b in enumerate(self.blocks):
            # attention
            K.rmsnorm(h, x, b.attn_norm, self.eps)                           # [T, E]
            b.attn_qkv(qkv, h)                                               # [T, (H + 2G) D]
            if b.attn_qkv_bias is not None:
                qkv += b.attn_qkv_bias
            K.rope_inplace(qkv3, self.cos, self.sin, pos, H + G)            # q and k heads
            self.cache.write(layer, slot, pos, qkv3[:, H:H + G], qkv3[:, H + G:])  # k, v [T, G, D]
            K.attention(attn.reshape(T, H, D), self.att, qkv3, self.cache.k[layer], self.cache.v[layer],
                        slot, pos, self.scale, 0)                            # [T, H, D]
            b.attn_output(tmp, attn)                                         # [T, E]
            if b.attn_post_norm is not None:
                K.rmsnorm(tmp, tmp, b.attn_post_norm, self.eps)
            x += tmp
            # mlp
            K.rmsnorm(h, x, b.ffn_norm, self.eps)                            # [T, E]
            b.ffn_up_gate(gu, h)                                             # [T, 2F]
            K.swiglu(act, gu)                                                # [T, F]
            b.ffn_down(tmp, act)                                             # [T, E]
            if b.ffn_post_norm is not None:
                K.rmsnorm(tmp, tmp, b.ffn_post_norm, self.eps)
            x += tmp
        if logits is not None:
            n = len(rows)
            hn = h[:n]
            K.rmsnorm(hn, x[rows], self.output_norm, self.eps)               # [n, E]
            self.output(logits, hn)                                          # [n, vocab]
