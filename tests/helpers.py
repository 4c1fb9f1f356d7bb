"""Test helpers: paths to the golden data, an independent numpy reference of the official
ChatGLM2/3/GLM-4 forward (written from the official modeling code, sharing nothing with the
runtime), and minimal writers for safetensors and torch-zip checkpoints (no torch needed)."""
import io
import json
import os
import pickle
import zipfile
from collections import OrderedDict

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared")
GOLDEN = os.path.join(SHARED, "golden")
TOKENIZERS = os.path.join(SHARED, "tokenizers")
GLM_CASES = ["chatglm3-tiny", "chatglm2-tiny-bin", "glm4-tiny"]


def golden(case):
    path = os.path.join(GOLDEN, case)
    assert os.path.isdir(path), f"golden data missing: {path} (../shared/golden must sit beside the repo)"
    return path


# ---------------------------------------------------------------- safetensors / torch writers

ST_NP = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


def write_safetensors(path, tensors, metadata=None):
    """tensors: name -> (dtype string, numpy array of that storage type)."""
    header, blobs, pos = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, (dt, arr) in tensors.items():
        b = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [pos, pos + len(b)]}
        blobs.append(b)
        pos += len(b)
    raw = json.dumps(header).encode()
    raw += b" " * ((-len(raw)) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw + b"".join(blobs))


def read_raw_tensors(case_dir):
    """All tensors of a golden safetensors case as (dtype, raw array) without conversion."""
    from glmcpu.file import Mapped
    m = Mapped(os.path.join(case_dir, "model.safetensors"))
    return {n: (m.info(n)["dtype"], np.array(m.tensor(n))) for n in m.names}


class _Global:
    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle only requires reduce functions to be callable
        raise NotImplementedError


class _Storage:
    def __init__(self, type_name, key, numel):
        self.type, self.key, self.numel = _Global("torch", type_name), key, numel


class _Tensor:
    def __init__(self, storage, shape):
        self.storage, self.shape = storage, shape

    def __reduce__(self):
        stride, acc = [], 1
        for s in reversed(self.shape):
            stride.insert(0, acc)
            acc *= s
        return (_Global("torch._utils", "_rebuild_tensor_v2"),
                (self.storage, 0, tuple(self.shape), tuple(stride), False, OrderedDict()))


class _TorchPickler(pickle._Pickler):
    dispatch = dict(pickle._Pickler.dispatch)

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", obj.type, obj.key, "cpu", obj.numel)
        return None

    def save_global_stub(self, obj, name=None):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[_Global] = save_global_stub


TORCH_STORAGE = {"F32": "FloatStorage", "F16": "HalfStorage", "BF16": "BFloat16Storage"}


def write_torch_zip(path, tensors, prefix="archive", pickle_bytes=None):
    """A torch.save-format zip (state dict of tensors) written without torch."""
    sd, blobs = OrderedDict(), {}
    for i, (name, (dt, arr)) in enumerate(tensors.items()):
        st = _Storage(TORCH_STORAGE[dt], str(i), arr.size)
        sd[name] = _Tensor(st, arr.shape)
        blobs[str(i)] = np.ascontiguousarray(arr).tobytes()
    if pickle_bytes is None:
        buf = io.BytesIO()
        _TorchPickler(buf, protocol=2).dump(sd)
        pickle_bytes = buf.getvalue()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr(f"{prefix}/data.pkl", pickle_bytes)
        z.writestr(f"{prefix}/byteorder", "little")
        for k, b in blobs.items():
            z.writestr(f"{prefix}/data/{k}", b)
        z.writestr(f"{prefix}/version", "3\n")


# ---------------------------------------------------------------- numpy reference forward

def _f32(dt, a):
    if dt == "F32":
        return a.astype(np.float32)
    if dt == "F16":
        return a.view(np.float16).astype(np.float32) if a.dtype == np.uint16 else a.astype(np.float32)
    return (a.astype(np.uint32) << 16).view(np.float32)


def reference_logits(config, tensors, ids, family):
    """Full-sequence forward of the official ChatGLM2/3/GLM-4 modeling code in float64 numpy.

    tensors: HF name -> (dtype, raw array). Returns logits [len(ids), vocab] (no KV cache: the
    causal mask over the whole sequence, so it checks the cache logic of the engine too)."""
    W = {n: _f32(dt, a).astype(np.float64) for n, (dt, a) in tensors.items()}
    H = config["num_attention_heads"]
    D = config.get("kv_channels") or config["hidden_size"] // H
    mqa = config.get("multi_query_attention", False)
    G = config.get("multi_query_group_num", 1) if mqa else H
    eps = config["layernorm_epsilon"]
    rr = config.get("rope_ratio", 1)
    T = len(ids)

    # RotaryEmbedding(rotary_dim // 2): n_elem = kv_channels // 2
    n_elem = D // 2
    base = 10000.0 if family == "chatglm2" else 10000.0 * rr
    theta = 1.0 / (base ** (np.arange(0, n_elem, 2) / n_elem))
    seq = np.arange(T, dtype=np.float64) / (rr if family == "chatglm2" else 1)
    ang = np.outer(seq, theta)                                      # [T, n_elem/2]
    cos, sin = np.cos(ang), np.sin(ang)

    def rope(x):                                                    # x [T, heads, D]
        rot, keep = x[..., :n_elem], x[..., n_elem:]
        x0, x1 = rot[..., 0::2], rot[..., 1::2]
        c, s = cos[:, None, :], sin[:, None, :]
        out = np.empty_like(rot)
        out[..., 0::2] = x0 * c - x1 * s
        out[..., 1::2] = x1 * c + x0 * s
        return np.concatenate([out, keep], axis=-1)

    def rmsnorm(x, w):
        return w * (x / np.sqrt((x * x).mean(-1, keepdims=True) + eps))

    p = "transformer."
    x = W[p + "embedding.word_embeddings.weight"][np.asarray(ids)]  # [T, E]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(config["num_layers"]):
        L = f"{p}encoder.layers.{i}."
        h = rmsnorm(x, W[L + "input_layernorm.weight"])
        qkv = h @ W[L + "self_attention.query_key_value.weight"].T
        if L + "self_attention.query_key_value.bias" in W:
            qkv = qkv + W[L + "self_attention.query_key_value.bias"]
        if mqa:
            q = qkv[:, : H * D].reshape(T, H, D)
            k = qkv[:, H * D: (H + G) * D].reshape(T, G, D)
            v = qkv[:, (H + G) * D:].reshape(T, G, D)
        else:  # Megatron layout: per head [q | k | v]
            per = qkv.reshape(T, H, 3 * D)
            q, k, v = per[..., :D], per[..., D:2 * D], per[..., 2 * D:]
        q, k = rope(q), rope(k)
        k = np.repeat(k, H // G, axis=1)
        v = np.repeat(v, H // G, axis=1)
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(D) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        ctx = np.einsum("hts,shd->thd", s, v).reshape(T, H * D)
        x = x + ctx @ W[L + "self_attention.dense.weight"].T
        h = rmsnorm(x, W[L + "post_attention_layernorm.weight"])
        gu = h @ W[L + "mlp.dense_h_to_4h.weight"].T
        a, b = np.split(gu, 2, axis=-1)
        x = x + (a / (1 + np.exp(-a)) * b) @ W[L + "mlp.dense_4h_to_h.weight"].T
    x = rmsnorm(x, W[p + "encoder.final_layernorm.weight"])
    return (x @ W[p + "output_layer.weight"].T).astype(np.float32)


def max_rel(got, want):
    return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


# ---------------------------------------------------------------- random checkpoints with real tokenizers

FAMILY_SHAPES = {  # name_or_path, padded vocab, tokenizer file (relative to TOKENIZERS), tokenizer_config
    "chatglm2": ("THUDM/chatglm2-6b", 65024, "chatglm2-chatglm3/tokenizer.model", "chatglm2-chatglm3/tokenizer_config.chatglm2.json"),
    "chatglm3": ("THUDM/chatglm3-6b", 65024, "chatglm2-chatglm3/tokenizer.model", "chatglm2-chatglm3/tokenizer_config.chatglm3.json"),
    "glm4": ("THUDM/glm-4-9b-chat", 151552, "glm-4-9b-chat/tokenizer.model", "glm-4-9b-chat/tokenizer_config.json"),
    "glm": ("THUDM/glm-4-9b-chat-hf", 151552, "glm-4-hf/tokenizer.json", "glm-4-hf/tokenizer_config.json"),
    "glm4-0414": ("THUDM/GLM-4-9B-0414", 151552, "glm-4-hf/tokenizer.json", "glm-4-hf/tokenizer_config.0414.json"),
}
HF_CONFIG_OF = {"glm": "glm4-hf-tiny", "glm4-0414": "glm4-0414-tiny-bf16-sharded"}


def random_checkpoint(path, family="chatglm3", hidden=32, layers=1, heads=2, groups=1, ffn=64, seed=0,
                      name=None, tweak=None):
    """A small random ChatGLM2/3/GLM-4 checkpoint with the family's real vocab size and tokenizer.
    tweak(tensors) may edit the float32 tensors before they are written."""
    import shutil
    name_or_path, vocab, tok, tok_cfg = FAMILY_SHAPES[family]
    kv = hidden // heads
    if family in HF_CONFIG_OF:  # transformers-native layout
        cfg = json.load(open(os.path.join(GOLDEN, HF_CONFIG_OF[family], "config.json")))
        cfg.update(_name_or_path=name or name_or_path, vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                   num_attention_heads=heads, num_key_value_heads=groups, head_dim=kv, intermediate_size=ffn,
                   max_position_embeddings=2048, eos_token_id=[151329, 151336, 151338], pad_token_id=151329)
    else:
        cfg = json.load(open(os.path.join(GOLDEN, "chatglm3-tiny", "config.json")))
        cfg.update(_name_or_path=name or name_or_path, padded_vocab_size=vocab, hidden_size=hidden, num_layers=layers,
                   num_attention_heads=heads, multi_query_group_num=groups, kv_channels=kv, ffn_hidden_size=ffn,
                   seq_length=2048)
    if family == "glm4":
        cfg.update(rope_ratio=500, eos_token_id=[151329, 151336, 151338], pad_token_id=151329)
    rng = np.random.default_rng(seed)
    from glmcpu import families
    shapes = families.checkpoint_shapes(families.get(family), cfg)  # the converter's own table, inverted
    tensors = {}
    for n, shape in shapes.items():
        a = rng.standard_normal(shape, dtype=np.float32)
        if n.endswith("norm.weight"):
            a = 1 + 0.1 * a
        elif len(shape) == 2:
            a *= np.float32(2.0 / np.sqrt(shape[-1]))
        tensors[n] = a.astype(np.float32)
    if tweak:
        tweak(tensors)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    write_safetensors(os.path.join(path, "model.safetensors"), {n: ("F32", a) for n, a in tensors.items()})
    shutil.copy(os.path.join(TOKENIZERS, tok), os.path.join(path, os.path.basename(tok)))
    shutil.copy(os.path.join(TOKENIZERS, tok_cfg), os.path.join(path, "tokenizer_config.json"))
    return str(path)


def reference_logits_v1(config, tensors, ids):
    """ChatGLM-6B (v1) forward of the official modeling code in float64 numpy, whole sequence in one
    pass (prompt must contain [gMASK]/[MASK] and <sop>; tokens after <sop> are 'generated')."""
    W = {n: _f32(dt, a).astype(np.float64) for n, (dt, a) in tensors.items()}
    E, H = config["hidden_size"], config["num_attention_heads"]
    D, L, eps = E // H, config["num_layers"], config["layernorm_epsilon"]
    ids = [int(i) for i in ids]
    T = len(ids)
    ctx = ids.index(config["bos_token_id"])
    mask_tok = config["gmask_token_id"] if config["gmask_token_id"] in ids else config["mask_token_id"]
    mpos = ids.index(mask_tok)
    pos = np.array([t if t < ctx else mpos for t in range(T)])
    bpos = np.array([0 if t < ctx else t - ctx + 1 for t in range(T)])
    dim = D // 2
    inv = (1.0 / (10000 ** (np.arange(0, dim, 2) / dim))).astype(np.float16).astype(np.float64)

    def rot(x, p):                                    # rotate-half on x [T, H, dim]
        ang = np.outer(p, inv)                        # [T, dim/2]
        emb = np.concatenate([ang, ang], -1)[:, None, :]
        x1, x2 = x[..., : dim // 2], x[..., dim // 2:]
        return x * np.cos(emb) + np.concatenate([-x2, x1], -1) * np.sin(emb)

    def ln(x, w, b):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w + b

    mask = np.tril(np.ones((T, T), bool))
    mask[:, :ctx] = True
    x = W["transformer.word_embeddings.weight"][ids]
    alpha = np.sqrt(2 * 28)  # the official GLMBlock never gets num_layers: its default 28 is used
    for i in range(L):
        p = f"transformer.layers.{i}."
        a = ln(x, W[p + "input_layernorm.weight"], W[p + "input_layernorm.bias"])
        qkv = (a @ W[p + "attention.query_key_value.weight"].T + W[p + "attention.query_key_value.bias"]).reshape(T, H, 3 * D)
        q, k, v = qkv[..., :D], qkv[..., D:2 * D], qkv[..., 2 * D:]
        q = np.concatenate([rot(q[..., :dim], pos), rot(q[..., dim:], bpos)], -1)
        k = np.concatenate([rot(k[..., :dim], pos), rot(k[..., dim:], bpos)], -1)
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(D)
        s = np.where(mask[None], s, -np.inf)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        ctxv = np.einsum("hts,shd->thd", s, v).reshape(T, H * D)
        x = a * alpha + ctxv @ W[p + "attention.dense.weight"].T + W[p + "attention.dense.bias"]
        m = ln(x, W[p + "post_attention_layernorm.weight"], W[p + "post_attention_layernorm.bias"])
        h = m @ W[p + "mlp.dense_h_to_4h.weight"].T + W[p + "mlp.dense_h_to_4h.bias"]
        h = 0.5 * h * (1 + np.tanh(0.7978845608028654 * h * (1 + 0.044715 * h * h)))
        x = m * alpha + h @ W[p + "mlp.dense_4h_to_h.weight"].T + W[p + "mlp.dense_4h_to_h.bias"]
    x = ln(x, W["transformer.final_layernorm.weight"], W["transformer.final_layernorm.bias"])
    return (x @ W["lm_head.weight"].T).astype(np.float32)
