"""A GGUF file (llama.cpp's format, also Ollama's) as a converter source.

The file is memory-mapped (gguf.GGUFReader); nothing is read whole. Which GLM family it is comes
from its llama.cpp architecture, tokenizer and tensors (``families.detect_gguf``); the
hyper-parameters from its ``<arch>.*`` keys (what llama.cpp itself runs), the head size from the
attention tensors' shapes; the tokenizer is rebuilt from its ``tokenizer.*`` keys into the
family's own tokenizer file (convert/gguf_tokenizer.py). Tensors of a type the registry has
(F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K) are repacked bit for bit by the
pipeline, or requantized from their dequantized values with ``--dtype``; other types are refused.
"""
import base64
import hashlib

import numpy as np

from glmcpu import families, models, qtypes
from glmcpu.errors import GlmcpuError, UnsupportedError
from glmcpu.families.common import is_base_model, layer_pattern
from . import gguf_tokenizer
from .gguf_file import GGUFFile

class GGUFTensor:
    """One GGUF tensor as a converter reader, in our [rows, cols] order."""

    def __init__(self, f, info):
        self.name, self.path, self.shape = info.name, f.path, info.shape
        if not 1 <= len(self.shape) <= 2:
            raise GlmcpuError(f"{f.path}: tensor {info.name!r} has {len(self.shape)} dimensions; GLM weights have 1 or 2")
        self.ggml_type, self.ggml_type_name = info.ggml_type, info.type_name
        self._f, self._info = f, info

    def ggml_rows(self, r0=None, r1=None):
        return self._f.data(self._info)[r0:r1]

    def rows_f32(self, r0=None, r1=None):
        """Dequantized rows, through the registry (every type glmcpu stores); other types are refused
        naming the tensor."""
        raw, cols = self.ggml_rows(r0, r1), self.shape[-1]
        q = qtypes.BY_GGML_TYPE.get(self.ggml_type)
        if q is not None:
            shape = (raw.shape[0], cols) if len(self.shape) == 2 else self.shape
            x = q.dequantize(dict(zip(q.storage, q.from_ggml(raw, shape))), shape)
        else:
            from .pipeline import unreadable_type
            raise GlmcpuError(unreadable_type(self))
        return np.asarray(x, np.float32).reshape(self.shape if len(self.shape) == 1 else (-1, cols))


class GGUFConcat:
    """GGUF tensors stacked along rows (attn_q, attn_k, attn_v -> our fused QKV): ggml rows are
    independent, so their blocks concatenate as they are."""

    def __init__(self, parts):
        self.parts = parts
        first = parts[0]
        self.name, self.path = "+".join(p.name for p in parts), first.path
        self.shape = (sum(p.shape[0] for p in parts),) + first.shape[1:]
        for p in parts[1:]:
            if p.shape[1:] != first.shape[1:]:
                raise GlmcpuError(f"{p.path}: tensor {p.name!r} {list(p.shape)} cannot be stacked with "
                                  f"{first.name!r} {list(first.shape)}")
        kinds = {p.ggml_type for p in parts}
        self.ggml_type = first.ggml_type if len(kinds) == 1 else None
        self.ggml_type_name = (first.ggml_type_name if len(kinds) == 1
                               else "mixed (" + ", ".join(f"{p.name} {p.ggml_type_name}" for p in parts) + ")")

    def _rows(self, fn, r0, r1):
        r0 = 0 if r0 is None else r0
        r1 = self.shape[0] if r1 is None else r1
        out, base = [], 0
        for p in self.parts:
            lo, hi = max(r0, base), min(r1, base + p.shape[0])
            if lo < hi:
                out.append(getattr(p, fn)(lo - base, hi - base))
            base += p.shape[0]
        return np.concatenate(out, axis=0)

    def ggml_rows(self, r0=None, r1=None):
        return self._rows("ggml_rows", r0, r1)

    def rows_f32(self, r0=None, r1=None):
        return self._rows("rows_f32", r0, r1)


def _params(path, g, kv, tensors):
    """Our normalized hyper-parameters from the GGUF's <arch>.* keys and tensor shapes."""
    A = g["arch"] + "."

    def need(key, kind):
        v = kv.get(A + key)
        if v is None:
            raise GlmcpuError(f"{path}: the GGUF has no {A + key}, which glmcpu needs to run the model; "
                              f"convert the model again with a current llama.cpp converter")
        if kind is int and (isinstance(v, bool) or not isinstance(v, (int, np.integer))):
            raise GlmcpuError(f"{path}: GGUF {A + key} is {v!r}, not an integer")
        if kind is float:
            if isinstance(v, bool) or not isinstance(v, (int, float, np.number)):
                raise GlmcpuError(f"{path}: GGUF {A + key} is {v!r}, not a number")
            if float(np.float32(v)) == v:  # a float32 key: its shortest decimal (1e-05, not 9.99999974738e-06)
                return float(str(np.float32(v)))
        return kind(v)

    H = need("attention.head_count", int)
    G = need("attention.head_count_kv", int) if A + "attention.head_count_kv" in kv else H
    if H <= 0 or G <= 0:
        raise GlmcpuError(f"{path}: GGUF head counts {H} / {G} are not positive")
    if "blk.0.attn_qkv.weight" in tensors:
        rows, heads, what = tensors["blk.0.attn_qkv.weight"].shape[0], H + 2 * G, "blk.0.attn_qkv"
    elif "blk.0.attn_q.weight" in tensors:
        rows, heads, what = tensors["blk.0.attn_q.weight"].shape[0], H, "blk.0.attn_q"
    else:
        raise GlmcpuError(f"{path}: the GGUF has no blk.0.attn_qkv or blk.0.attn_q tensor")
    if rows % heads:
        raise GlmcpuError(f"{path}: {what} has {rows} rows, not a multiple of {heads} heads")
    head_dim = rows // heads
    if A + "attention.key_length" in kv and need("attention.key_length", int) != head_dim:
        raise GlmcpuError(f"{path}: GGUF {A}attention.key_length disagrees with the attention tensors ({head_dim})")
    scaling = kv.get(A + "rope.scaling.type", "none")
    pos_scale = 1.0
    if scaling == "linear":
        pos_scale = need("rope.scaling.factor", float)
    elif scaling != "none":
        raise UnsupportedError(f"unsupported: GGUF {A}rope.scaling.type {scaling!r}")
    if "token_embd.weight" not in tensors:
        raise GlmcpuError(f"{path}: the GGUF has no token_embd.weight tensor")
    eos = [kv[k] for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")
           if isinstance(kv.get(k), (int, np.integer)) and not isinstance(kv.get(k), bool)]
    pad = kv.get("tokenizer.ggml.padding_token_id")
    return {
        "arch": "chatglm",
        "n_layer": need("block_count", int),
        "n_embd": need("embedding_length", int),
        "n_head": H,
        "n_kv_head": G,
        "head_dim": head_dim,
        "n_ff": need("feed_forward_length", int),
        "n_vocab": tensors["token_embd.weight"].shape[0],
        "norm_eps": need("attention.layer_norm_rms_epsilon", float),
        "rope_dim": need("rope.dimension_count", int),
        "rope_base": need("rope.freq_base", float) if A + "rope.freq_base" in kv else 10000.0,  # llama.cpp's default
        "rope_pos_scale": pos_scale,
        "qkv_bias": "blk.0.attn_qkv.bias" in tensors or "blk.0.attn_q.bias" in tensors,
        "post_norms": "blk.0.post_attention_norm.weight" in tensors,
        "seq_length": need("context_length", int),
        "eos_token_ids": list(dict.fromkeys(int(e) for e in eos)),
        "pad_token_id": int(pad) if isinstance(pad, (int, np.integer)) and not isinstance(pad, bool) else None,
        "chat": not is_base_model({"_name_or_path": kv.get("general.name") or ""}),
    }


def _gguf_names(family, ours):
    pattern, fields = layer_pattern(ours)
    src = family.GGUF_TENSORS.get(pattern)
    if src is None:
        return None
    return [s.format(**fields) for s in src] if isinstance(src, list) else [src.format(**fields)]


def _plan(path, family, params, tensors):
    """[(our name, reader)] in our tensor order; every GGUF tensor used, shapes checked."""
    used, plan = set(), []
    for ours, shape in models.tensor_table(params).items():
        names = _gguf_names(family, ours)
        if names is None:
            raise GlmcpuError(f"glmcpu bug: family {family.NAME} has no GGUF name for {ours!r}")
        if ours == "output.weight" and names[0] not in tensors:
            names = ["token_embd.weight"]  # tied: llama.cpp then runs the output layer on the embedding
        missing = [n for n in names if n not in tensors]
        if missing:
            raise GlmcpuError(f"{path}: the GGUF has no tensor {missing[0]!r} (for {ours!r}); "
                              f"the file is incomplete or not a {family.TITLE} model")
        used.update(names)
        t = tensors[names[0]] if len(names) == 1 else GGUFConcat([tensors[n] for n in names])
        if tuple(t.shape) != tuple(shape):
            raise GlmcpuError(f"{path}: tensor {t.name!r} has shape {list(t.shape)}, but the GGUF metadata "
                              f"implies {list(shape)}")
        plan.append((ours, t))
    extra = sorted(set(tensors) - used)
    if extra:
        raise UnsupportedError(f"unsupported: GGUF tensor {extra[0]!r} (not part of a {family.TITLE} model)")
    return plan


def _tokenizer(path, kv, family, log):
    fields = {k: v for k, v in kv.items() if k.startswith("tokenizer.")}
    if "tokenizer.ggml.tokens" not in fields:
        log(f"note: {path} has no tokenizer; the file will have none")
        return None, None
    filename, data, config, template = gguf_tokenizer.from_gguf(fields, family.NAME)
    entry = {"type": family.TOKENIZER_KIND, "filename": filename, "sha256": hashlib.sha256(data).hexdigest(),
             "config": config}
    family.make_tokenizer(entry, data)  # raises a clear error if it does not load
    entry["data"] = base64.b64encode(data).decode("ascii")
    return entry, template


def open_gguf(path, family=None, log=None):
    """A GGUF file as a converter Source."""
    from .pipeline import Source
    log = log or (lambda msg: None)
    f = GGUFFile(path)
    kv = f.kv
    arch = kv.get("general.architecture")
    if not isinstance(arch, str):
        raise GlmcpuError(f"{path}: the GGUF has no general.architecture")
    tensors = {}
    for info in f.tensors:
        if info.name in tensors:
            raise GlmcpuError(f"{path}: tensor {info.name!r} appears twice in the GGUF")
        tensors[info.name] = GGUFTensor(f, info)
    toks, types = kv.get("tokenizer.ggml.tokens") or [], kv.get("tokenizer.ggml.token_type") or []
    special = {t for t, ty in zip(toks, types) if ty == 3}  # CONTROL tokens tell ChatGLM2 from ChatGLM3
    g = {"arch": arch, "tokenizer_model": kv.get("tokenizer.ggml.model"), "tokens": special, "tensors": set(tensors)}
    fam = families.detect_gguf(g, family)
    params = _params(path, g, kv, tensors)
    plan = _plan(path, fam, params, tensors)
    tok, template = _tokenizer(path, kv, fam, log)
    config = {"_name_or_path": kv.get("general.name") or "", "source_format": "gguf",
              "gguf_metadata": {k: v for k, v in kv.items()
                                if isinstance(v, (str, int, float, bool)) and not k.startswith("tokenizer.")}}
    return Source(path, fam, config, params, tok, template, plan, inputs=(path,), kind="gguf")
