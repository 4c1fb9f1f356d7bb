"""ChatGLM-6B (v1): the GLM block.

    x = embed(ids)
    for each block:
        a = layernorm(x);  x = alpha * a + attention(a)     # alpha = sqrt(2 * n_layer)
        m = layernorm(x);  x = alpha * m + mlp(m)           # GeLU (tanh form), biases everywhere

alpha is sqrt(2 * 28) whatever the layer count: the official GLMBlock is built without its
num_layers argument and so always uses the default, 28 (the golden 2-layer model confirms it).
    logits = output(layernorm(x))

Attention: full heads (no KV groups), 2-D rotary positions (first half of each head by the
position id, second half by the block position id, rotate-half style), and a bidirectional
prompt prefix: the prompt ends with [gMASK] <sop>; every position before <sop> sees the whole
prefix, <sop> and generated tokens attend causally. Position ids: 0, 1, ... up to <sop>, which
takes the [gMASK] position; every later token keeps it. Block position ids: 0 before <sop>,
then 1, 2, 3, ...

Because prefix tokens see later prefix tokens, the prompt is processed layer by layer: each
sublayer runs over the prompt in chunks of ``chunk`` tokens, but every chunk's keys and values
are cached before any chunk attends.
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
    head_dim: int
    n_ff: int
    n_vocab: int
    norm_eps: float
    rope_base: float
    bos_token_id: int      # <sop>: ends the bidirectional prefix
    mask_token_id: int     # [MASK]
    gmask_token_id: int    # [gMASK]
    seq_length: int
    eos_token_ids: list = field(default_factory=list)
    pad_token_id: int = None
    arch: str = "chatglm1"

    @classmethod
    def from_dict(cls, d):
        return from_params(cls, d)

    def check(self):
        require(self.head_dim % 4 == 0, "head_dim", self.head_dim, "a multiple of 4 (2-D rotary on half-heads)")
        require(self.arch == "chatglm1", "arch", self.arch, "'chatglm1'")

    @property
    def n_kv_head(self):
        return self.n_head


def tensor_table(a):
    """Our tensor names -> shapes for ModelArgs ``a``."""
    E, HD, F, V = a.n_embd, a.n_head * a.head_dim, a.n_ff, a.n_vocab
    shapes = {"token_embd.weight": (V, E)}
    for i in range(a.n_layer):
        b = f"blk.{i}."
        shapes.update({b + "attn_norm.weight": (E,), b + "attn_norm.bias": (E,),
                       b + "attn_qkv.weight": (3 * HD, E), b + "attn_qkv.bias": (3 * HD,),
                       b + "attn_output.weight": (E, HD), b + "attn_output.bias": (E,),
                       b + "ffn_norm.weight": (E,), b + "ffn_norm.bias": (E,),
                       b + "ffn_up.weight": (F, E), b + "ffn_up.bias": (F,),
                       b + "ffn_down.weight": (E, F), b + "ffn_down.bias": (E,)})
    shapes.update({"output_norm.weight": (E,), "output_norm.bias": (E,), "output.weight": (V, E)})
    return shapes


def rope_tables(n_pos, head_dim, base):
    """cos, sin [n_pos, head_dim // 4]. The official RotaryEmbedding stores inv_freq in float16,
    so the frequencies are float16-rounded before use (as in every ChatGLM-6B checkpoint)."""
    dim = head_dim // 2
    inv = (1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))).astype(np.float16)
    ang = np.outer(np.arange(n_pos, dtype=np.float32), inv.astype(np.float32)).astype(np.float32)
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


class Block:
    pass


class ChatGLM1:
    reuse_cache = False  # the prompt prefix is bidirectional: a new prompt is recomputed whole

    @property
    def prompt_suffix(self):
        """A raw prompt ends with [gMASK] <sop>."""
        return (self.args.gmask_token_id, self.args.bos_token_id)

    def __init__(self, mf, n_ctx, threads, chunk=256, mode="fast", kv=KV_DEFAULT, n_slots=1):
        if n_slots != 1:
            raise GlmcpuError("ChatGLM-6B runs one sequence at a time (its prompt prefix is bidirectional): "
                              "use one parallel sequence")
        a = self.args = ModelArgs.from_dict(mf.params)
        check_tensors(mf, tensor_table(a))
        self.cache = KVCache(a.n_layer, a.n_head, n_ctx, a.head_dim, kv)      # [L, H, n_ctx, D] keys, values
        self.n_ctx = n_ctx
        self.chunk = n_ctx  # Model.forward hands over whole calls; chunking happens per sublayer
        C = self.sub = max(1, min(chunk, n_ctx))
        E, H, D, F = a.n_embd, a.n_head, a.head_dim, a.n_ff
        self.ws = Workspace(C, max(E, H * D, F), threads, int(mf.quantization.get("tile_rows", 128)))

        def lin(name, shape):
            return make_linear(mf, name, shape, self.ws, mode)

        self.tok_embd = lin("token_embd.weight", (a.n_vocab, E))           # [vocab, E]
        self.blocks = []
        for i in range(a.n_layer):
            b, p = Block(), f"blk.{i}."
            b.attn_norm_w = load_vector(mf, p + "attn_norm.weight", E)      # [E]
            b.attn_norm_b = load_vector(mf, p + "attn_norm.bias", E)        # [E]
            b.attn_qkv = lin(p + "attn_qkv.weight", (3 * H * D, E))        # [3 H D, E]  q | k | v
            b.attn_qkv_b = load_vector(mf, p + "attn_qkv.bias", 3 * H * D)
            b.attn_output = lin(p + "attn_output.weight", (E, H * D))      # [E, H D]
            b.attn_output_b = load_vector(mf, p + "attn_output.bias", E)
            b.ffn_norm_w = load_vector(mf, p + "ffn_norm.weight", E)
            b.ffn_norm_b = load_vector(mf, p + "ffn_norm.bias", E)
            b.ffn_up = lin(p + "ffn_up.weight", (F, E))                    # [F, E]
            b.ffn_up_b = load_vector(mf, p + "ffn_up.bias", F)
            b.ffn_down = lin(p + "ffn_down.weight", (E, F))                # [E, F]
            b.ffn_down_b = load_vector(mf, p + "ffn_down.bias", E)
            self.blocks.append(b)
        self.output_norm_w = load_vector(mf, "output_norm.weight", E)
        self.output_norm_b = load_vector(mf, "output_norm.bias", E)
        self.output = lin("output.weight", (a.n_vocab, E))                 # [vocab, E]

        self.cos, self.sin = rope_tables(n_ctx + 1, D, a.rope_base)
        self.cos.setflags(write=False)
        self.sin.setflags(write=False)
        self.alpha = np.float32(np.sqrt(2.0 * 28))  # not n_layer: see the module docstring
        self.scale = np.float32(1.0 / np.sqrt(D))
        self.eps = np.float32(a.norm_eps)
        try:
            self.X = np.zeros((n_ctx, E), np.float32)                      # residual stream of a call
            self.Q = np.zeros((n_ctx, H, D), np.float32)                   # rotated queries of a call
            self.pos = np.zeros(n_ctx, np.int64)
            self.pos_t = np.zeros(n_ctx, np.int64)                           # the rows' cache positions
            self.slot = np.zeros(n_ctx, np.int64)                            # one sequence: slot 0
            self.bpos = np.zeros(n_ctx, np.int64)
            self.h = np.zeros((C, E), np.float32)
            self.tmp = np.zeros((C, E), np.float32)
            self.qkv = np.zeros((C, 3 * H * D), np.float32)
            self.attn = np.zeros((C, H * D), np.float32)
            self.ff = np.zeros((C, F), np.float32)
            self.att = np.zeros((threads, 2, max(n_ctx + 1, 8 * D)), np.float32)  # attention scratch
        except MemoryError:
            raise GlmcpuError(f"not enough memory for the activation buffers of a {n_ctx}-token context; "
                              f"use a smaller context (n_ctx / --ctx)") from None
        self.mask_pos = self.n_prefix = None

    def kv_bytes(self):
        return self.cache.nbytes

    def scratch_bytes(self):
        bufs = (self.X, self.Q, self.h, self.tmp, self.qkv, self.attn, self.ff, self.att, self.cos, self.sin)
        return self.ws.nbytes() + sum(b.nbytes for b in bufs)

    def _positions(self, ids, pos0):
        """Fill self.pos / self.bpos for the tokens of this call (official get_position_ids)."""
        a, T = self.args, ids.shape[0]
        if pos0 == 0:
            seq = ids.tolist()
            if a.bos_token_id not in seq or (a.gmask_token_id not in seq and a.mask_token_id not in seq):
                raise GlmcpuError("a ChatGLM-6B prompt must contain [gMASK] (or [MASK]) and end the prefix with "
                                  "<sop>: encode it with add_special_tokens=True")
            self.n_prefix = seq.index(a.bos_token_id)
            mask = a.gmask_token_id if a.gmask_token_id in seq else a.mask_token_id
            self.mask_pos = seq.index(mask)
        elif self.n_prefix is None:
            raise GlmcpuError("ChatGLM-6B: the first forward after a reset must be the whole prompt")
        p = pos0 + np.arange(T)
        self.pos[:T] = np.where(p < self.n_prefix, p, self.mask_pos)
        self.bpos[:T] = np.where(p < self.n_prefix, 0, p - self.n_prefix + 1)

    def reset(self):
        self.mask_pos = self.n_prefix = None

    def forward_rows(self, ids, slot, pos, rows, logits):
        """All tokens of one Model.forward call (one sequence: slot 0, positions pos[0] ..); logits
        [len(rows), vocab] if given, for rows that must be the last len(rows) of the call."""
        pos0 = int(pos[0])
        if logits is not None and (len(rows) == 0 or rows[0] != ids.shape[0] - len(rows)):
            raise GlmcpuError("ChatGLM-6B computes the logits of the last rows of a call only")
        self._forward(ids, pos0, logits)

    def _forward(self, ids, pos0, logits):
        a = self.args
        T, C = ids.shape[0], self.sub
        H, D = a.n_head, a.head_dim
        if pos0 == 0:
            self.reset()
        self._positions(ids, pos0)
        self.pos_t[:T] = pos0 + np.arange(T)                                # cache positions of the rows
        n_bidir = self.n_prefix                                             # prefix seen by everyone
        X, Q = self.X[:T], self.Q[:T]                                       # [T, E], [T, H, D]
        self.tok_embd.embed(X, ids)
        chunks = [(c, min(T, c + C)) for c in range(0, T, C)]
        for layer, b in enumerate(self.blocks):
            kc, vc = self.cache.k[layer], self.cache.v[layer]               # [1, H, n_ctx, D]
            # qkv and rotary for every chunk first: all keys are cached before anyone attends
            for c0, c1 in chunks:
                n = c1 - c0
                h, qkv = self.h[:n], self.qkv[:n]
                K.layernorm(h, X[c0:c1], b.attn_norm_w, b.attn_norm_b, self.eps)      # [n, E]
                b.attn_qkv(qkv, h)                                                    # [n, 3 H D]
                qkv += b.attn_qkv_b
                qkv3 = qkv.reshape(n, 3 * H, D)                                       # [n, q|k|v heads, D]
                K.rope_2d_inplace(qkv3, self.cos, self.sin, self.pos[c0:c1], self.bpos[c0:c1], 2 * H)
                Q[c0:c1] = qkv3[:, :H]
                self.cache.write(layer, self.slot[:n], self.pos_t[c0:c1], qkv3[:, H:2 * H], qkv3[:, 2 * H:])
            for c0, c1 in chunks:
                n = c1 - c0
                h, attn, tmp = self.h[:n], self.attn[:n], self.tmp[:n]
                K.attention(attn.reshape(n, H, D), self.att, Q[c0:c1], kc, vc, self.slot[:n], self.pos_t[c0:c1],
                            self.scale, n_bidir)
                b.attn_output(tmp, attn)                                              # [n, E]
                tmp += b.attn_output_b
                K.layernorm(h, X[c0:c1], b.attn_norm_w, b.attn_norm_b, self.eps)      # the block's input, again
                h *= self.alpha
                h += tmp
                X[c0:c1] = h                                                          # alpha * ln(x) + attn
                # mlp
                ff = self.ff[:n]
                K.layernorm(h, X[c0:c1], b.ffn_norm_w, b.ffn_norm_b, self.eps)        # [n, E]
                b.ffn_up(ff, h)                                                       # [n, F]
                ff += b.ffn_up_b
                K.gelu_tanh(ff)
                b.ffn_down(tmp, ff)                                                   # [n, E]
                tmp += b.ffn_down_b
                h *= self.alpha
                h += tmp
                X[c0:c1] = h                                                          # alpha * ln(x) + mlp
        if logits is not None:
            rows = logits.shape[0]
            for c0 in range(T - rows, T, C):
                c1 = min(T, c0 + C)
                h = self.h[: c1 - c0]
                K.layernorm(h, X[c0:c1], self.output_norm_w, self.output_norm_b, self.eps)
                self.output(logits[c0 - (T - rows): c1 - (T - rows)], h)             # [n, vocab]
