"""Per-family knowledge for the converter: detection, config checks, and a declarative name map.

Each family maps Hugging Face tensor names to glmcpu's internal names ({i} is the layer index;
None drops the tensor) and turns config.json into the normalized ``params`` the runtime reads.
Every config option that changes the math and is not implemented fails with "unsupported: <flag>".
"""
import json
import math
import os
import re

import numpy as np

from glmcpu.errors import GlmcpuError, UnsupportedError

FAMILIES = ("chatglm1", "chatglm2", "chatglm3", "glm4")

# ChatGLM2-6B, ChatGLM3-6B and GLM-4-9B share one architecture and one checkpoint layout.
GLM_NAME_MAP = {
    "transformer.embedding.word_embeddings.weight": "token_embd.weight",
    "transformer.rotary_pos_emb.inv_freq": None,  # recomputed from the config at load
    "transformer.encoder.layers.{i}.input_layernorm.weight": "blk.{i}.attn_norm.weight",
    "transformer.encoder.layers.{i}.self_attention.query_key_value.weight": "blk.{i}.attn_qkv.weight",
    "transformer.encoder.layers.{i}.self_attention.query_key_value.bias": "blk.{i}.attn_qkv.bias",
    "transformer.encoder.layers.{i}.self_attention.dense.weight": "blk.{i}.attn_output.weight",
    "transformer.encoder.layers.{i}.post_attention_layernorm.weight": "blk.{i}.ffn_norm.weight",
    "transformer.encoder.layers.{i}.mlp.dense_h_to_4h.weight": "blk.{i}.ffn_up_gate.weight",
    "transformer.encoder.layers.{i}.mlp.dense_4h_to_h.weight": "blk.{i}.ffn_down.weight",
    "transformer.encoder.final_layernorm.weight": "output_norm.weight",
    "transformer.output_layer.weight": "output.weight",
}


def _compile_map(name_map):
    out = []
    for hf, ours in name_map.items():
        pat = re.compile("^" + re.escape(hf).replace(r"\{i\}", r"(?P<i>\d+)") + "$")
        out.append((pat, ours))
    return out


_GLM_MAP = _compile_map(GLM_NAME_MAP)

# ChatGLM-6B (v1): GLM blocks with LayerNorm biases and biases on every linear layer.
V1_NAME_MAP = {
    "transformer.word_embeddings.weight": "token_embd.weight",
    "transformer.layers.{i}.attention.rotary_emb.inv_freq": None,  # float16-rounded 1/10000^(2i/d), recomputed
    "transformer.layers.{i}.input_layernorm.weight": "blk.{i}.attn_norm.weight",
    "transformer.layers.{i}.input_layernorm.bias": "blk.{i}.attn_norm.bias",
    "transformer.layers.{i}.attention.query_key_value.weight": "blk.{i}.attn_qkv.weight",
    "transformer.layers.{i}.attention.query_key_value.bias": "blk.{i}.attn_qkv.bias",
    "transformer.layers.{i}.attention.dense.weight": "blk.{i}.attn_output.weight",
    "transformer.layers.{i}.attention.dense.bias": "blk.{i}.attn_output.bias",
    "transformer.layers.{i}.post_attention_layernorm.weight": "blk.{i}.ffn_norm.weight",
    "transformer.layers.{i}.post_attention_layernorm.bias": "blk.{i}.ffn_norm.bias",
    "transformer.layers.{i}.mlp.dense_h_to_4h.weight": "blk.{i}.ffn_up.weight",
    "transformer.layers.{i}.mlp.dense_h_to_4h.bias": "blk.{i}.ffn_up.bias",
    "transformer.layers.{i}.mlp.dense_4h_to_h.weight": "blk.{i}.ffn_down.weight",
    "transformer.layers.{i}.mlp.dense_4h_to_h.bias": "blk.{i}.ffn_down.bias",
    "transformer.final_layernorm.weight": "output_norm.weight",
    "transformer.final_layernorm.bias": "output_norm.bias",
    "lm_head.weight": "output.weight",
}
_V1_MAP = _compile_map(V1_NAME_MAP)


def map_name(hf_name, compiled=_GLM_MAP):
    """Internal name for an HF tensor name; None to drop it. KeyError if unknown."""
    for pat, ours in compiled:
        m = pat.match(hf_name)
        if m:
            return None if ours is None else ours.format(**m.groupdict())
    raise KeyError(hf_name)


def _hint_from_name(text):
    t = (text or "").lower()
    if "glm-4" in t or "glm4" in t:
        return "glm4"
    if "chatglm3" in t:
        return "chatglm3"
    if "chatglm2" in t or "codegeex2" in t:
        return "chatglm2"
    return None


def detect_family(config, src=None, override=None):
    """Which family a config.json describes; raises UnsupportedError with a reason otherwise."""
    mt = config.get("model_type")
    if mt != "chatglm":
        raise UnsupportedError(
            f"unsupported: model_type {mt!r}; glmcpu converts model_type 'chatglm' checkpoints "
            f"(ChatGLM2-6B, ChatGLM3-6B, GLM-4-9B)")
    if "padded_vocab_size" not in config and ("position_encoding_2d" in config or "inner_hidden_size" in config):
        if override not in (None, "chatglm1"):
            raise GlmcpuError(f"config.json describes a ChatGLM-6B (v1) model, not {override}")
        return "chatglm1"
    if override == "chatglm1":
        raise GlmcpuError("config.json does not describe a ChatGLM-6B (v1) model")
    if "vision_config" in config:
        raise UnsupportedError("unsupported: vision_config (GLM-4V multimodal checkpoints)")
    if override is not None:
        if override not in FAMILIES:
            raise GlmcpuError(f"unknown family {override!r}; choose one of {', '.join(FAMILIES)}")
        return override
    hint = _hint_from_name(config.get("_name_or_path"))
    if hint:
        return hint
    if config.get("padded_vocab_size") == 151552:
        return "glm4"
    tok_cfg = os.path.join(src, "tokenizer_config.json") if src else None
    if tok_cfg and os.path.isfile(tok_cfg):
        try:
            with open(tok_cfg, encoding="utf-8") as f:
                tc = json.load(f)
        except (OSError, ValueError):
            tc = {}
        text = json.dumps(tc)
        if "ChatGLM4Tokenizer" in text:
            return "glm4"
        if "<|user|>" in text:
            return "chatglm3"
        hint = _hint_from_name(tc.get("name_or_path"))
        if hint:
            return hint
    raise GlmcpuError(
        "cannot tell ChatGLM2 from ChatGLM3 from config.json (no _name_or_path hint, no tokenizer_config.json); "
        "pass --family chatglm2 or --family chatglm3")


def _require(config, key, expected, why):
    val = config.get(key, expected)
    if val != expected:
        raise UnsupportedError(f"unsupported: {key}={json.dumps(val)} ({why})")


def check_config(config):
    """Refuse every option of the ChatGLM2/3/GLM-4 modeling code that changes the math and is not implemented."""
    for key in ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size", "padded_vocab_size"):
        if not isinstance(config.get(key), int) or config[key] <= 0:
            raise GlmcpuError(f"config.json: missing or invalid {key!r}")
    _require(config, "rmsnorm", True, "LayerNorm variant")
    _require(config, "apply_residual_connection_post_layernorm", False, "post-norm residual")
    _require(config, "add_bias_linear", False, "biases on every linear layer")
    _require(config, "post_layer_norm", True, "no final layer norm")
    qb = config.get("quantization_bit", 0) or 0
    if qb:
        raise UnsupportedError(
            f"unsupported: quantization_bit={qb} (a pre-quantized THUDM checkpoint); "
            f"convert the original float16/bfloat16 checkpoint instead")
    if config.get("pre_seq_len"):
        raise UnsupportedError(f"unsupported: pre_seq_len={config['pre_seq_len']} (P-tuning v2 prefix encoder)")
    if config.get("rope_scaling"):
        raise UnsupportedError(f"unsupported: rope_scaling={json.dumps(config['rope_scaling'])}")
    rr = config.get("rope_ratio", 1)
    if not isinstance(rr, (int, float)) or rr <= 0:
        raise GlmcpuError(f"config.json: invalid rope_ratio {rr!r}")


def check_config_v1(config):
    for key in ("num_layers", "hidden_size", "num_attention_heads", "inner_hidden_size", "vocab_size",
                "bos_token_id", "gmask_token_id", "mask_token_id"):
        if not isinstance(config.get(key), int) or config[key] < 0:
            raise GlmcpuError(f"config.json: missing or invalid {key!r}")
    _require(config, "position_encoding_2d", True, "1-D rotary positions")
    qb = config.get("quantization_bit", 0) or 0
    if qb:
        raise UnsupportedError(
            f"unsupported: quantization_bit={qb} (a pre-quantized THUDM checkpoint); "
            f"convert the original float16 checkpoint instead")
    if config.get("pre_seq_len"):
        raise UnsupportedError(f"unsupported: pre_seq_len={config['pre_seq_len']} (P-tuning v2 prefix encoder)")
    if config.get("num_image_tokens"):
        raise UnsupportedError(f"unsupported: num_image_tokens={config['num_image_tokens']} (VisualGLM)")
    if config["hidden_size"] % config["num_attention_heads"] or (config["hidden_size"] // config["num_attention_heads"]) % 4:
        raise UnsupportedError("unsupported: head size not a multiple of 4")


def build_params(config, family):
    """Normalized hyper-parameters for the runtime (stored as 'params' in the file)."""
    if family == "chatglm1":
        check_config_v1(config)
        eos = config.get("eos_token_id", 130005)
        return {
            "arch": "chatglm1",
            "n_layer": config["num_layers"],
            "n_embd": config["hidden_size"],
            "n_head": config["num_attention_heads"],
            "head_dim": config["hidden_size"] // config["num_attention_heads"],
            "n_ff": config["inner_hidden_size"],
            "n_vocab": config["vocab_size"],
            "norm_eps": float(config.get("layernorm_epsilon", 1e-5)),
            "rope_base": 10000.0,
            "bos_token_id": config["bos_token_id"],
            "mask_token_id": config["mask_token_id"],
            "gmask_token_id": config["gmask_token_id"],
            "seq_length": int(config.get("max_sequence_length", 2048)),
            "eos_token_ids": eos if isinstance(eos, list) else [eos],
            "pad_token_id": config.get("pad_token_id"),
            "chat": True,
        }
    check_config(config)
    n_head = config["num_attention_heads"]
    head_dim = config.get("kv_channels") or config["hidden_size"] // n_head
    mqa = bool(config.get("multi_query_attention", False))
    n_kv = config.get("multi_query_group_num", 1) if mqa else n_head
    if n_head % n_kv:
        raise UnsupportedError(f"unsupported: num_attention_heads={n_head} not a multiple of multi_query_group_num={n_kv}")
    if head_dim % 4:
        raise UnsupportedError(f"unsupported: kv_channels={head_dim} (must be a multiple of 4 for the half-head rotary)")
    rope_ratio = float(config.get("rope_ratio", 1) or 1)
    if family == "chatglm2":
        # ChatGLM2-6B-32k interpolates positions: pos / rope_ratio, base 10000.
        rope_base, rope_pos_scale = 10000.0, rope_ratio
    else:
        # ChatGLM3-6B-32k/128k and GLM-4 scale the base: 10000 * rope_ratio.
        rope_base, rope_pos_scale = 10000.0 * rope_ratio, 1.0
    eos = config.get("eos_token_id", 2)
    eos = eos if isinstance(eos, list) else [eos]
    return {
        "arch": "chatglm",
        "n_layer": config["num_layers"],
        "n_embd": config["hidden_size"],
        "n_head": n_head,
        "n_kv_head": n_kv,
        "head_dim": head_dim,
        "n_ff": config["ffn_hidden_size"],
        "n_vocab": config["padded_vocab_size"],
        "norm_eps": float(config.get("layernorm_epsilon", 1e-5)),
        "rope_dim": head_dim // 2,
        "rope_base": rope_base,
        "rope_pos_scale": rope_pos_scale,
        "qkv_bias": bool(config.get("add_qkv_bias", False)),
        "seq_length": int(config.get("seq_length", 2048)),
        "eos_token_ids": [int(e) for e in eos if e is not None],
        "pad_token_id": config.get("pad_token_id"),
        # a base (pre-trained, not chat-tuned) model, e.g. chatglm3-6b-base: raw completion, no chat template
        "chat": "base" not in re.split(r"[-_/.]", str(config.get("_name_or_path", "")).lower()),
    }


def expected_shapes(p):
    """Internal tensor name -> shape the params imply."""
    if p["arch"] == "chatglm1":
        E, HD, F, V = p["n_embd"], p["n_head"] * p["head_dim"], p["n_ff"], p["n_vocab"]
        shapes = {"token_embd.weight": (V, E), "output_norm.weight": (E,), "output_norm.bias": (E,),
                  "output.weight": (V, E)}
        for i in range(p["n_layer"]):
            b = f"blk.{i}."
            shapes.update({b + "attn_norm.weight": (E,), b + "attn_norm.bias": (E,),
                           b + "attn_qkv.weight": (3 * HD, E), b + "attn_qkv.bias": (3 * HD,),
                           b + "attn_output.weight": (E, HD), b + "attn_output.bias": (E,),
                           b + "ffn_norm.weight": (E,), b + "ffn_norm.bias": (E,),
                           b + "ffn_up.weight": (F, E), b + "ffn_up.bias": (F,),
                           b + "ffn_down.weight": (E, F), b + "ffn_down.bias": (E,)})
        return shapes
    qkv = (p["n_head"] + 2 * p["n_kv_head"]) * p["head_dim"]
    shapes = {
        "token_embd.weight": (p["n_vocab"], p["n_embd"]),
        "output_norm.weight": (p["n_embd"],),
        "output.weight": (p["n_vocab"], p["n_embd"]),
    }
    for i in range(p["n_layer"]):
        b = f"blk.{i}."
        shapes[b + "attn_norm.weight"] = (p["n_embd"],)
        shapes[b + "attn_qkv.weight"] = (qkv, p["n_embd"])
        if p["qkv_bias"]:
            shapes[b + "attn_qkv.bias"] = (qkv,)
        shapes[b + "attn_output.weight"] = (p["n_embd"], p["n_head"] * p["head_dim"])
        shapes[b + "ffn_norm.weight"] = (p["n_embd"],)
        shapes[b + "ffn_up_gate.weight"] = (2 * p["n_ff"], p["n_embd"])
        shapes[b + "ffn_down.weight"] = (p["n_embd"], p["n_ff"])
    return shapes


def qkv_row_permutation(n_head, head_dim):
    """Rows of a Megatron per-head [q|k|v] fused weight (multi_query_attention=false) reordered to
    [all q | all k | all v]: new_row -> old_row."""
    part, h, d = np.meshgrid(np.arange(3), np.arange(n_head), np.arange(head_dim), indexing="ij")
    return (h * 3 * head_dim + part * head_dim + d).reshape(-1)


def plan_tensors(checkpoint, config, params):
    """[(internal name, source Tensor, row permutation or None)] in file order; validates names and shapes."""
    shapes = expected_shapes(params)
    v1 = params["arch"] == "chatglm1"
    compiled = _V1_MAP if v1 else _GLM_MAP
    found = {}
    for hf_name, t in checkpoint.tensors.items():
        try:
            ours = map_name(hf_name, compiled)
        except KeyError:
            if "prefix_encoder" in hf_name:
                raise UnsupportedError(f"unsupported: {hf_name} (P-tuning v2 prefix encoder)") from None
            raise GlmcpuError(f"{t.path}: unexpected tensor {hf_name!r} for a {params['arch']} checkpoint "
                              f"(unsupported checkpoint variant?)") from None
        if ours is None:
            continue
        if ours not in shapes:
            raise GlmcpuError(f"{t.path}: tensor {hf_name!r} does not fit config.json "
                              f"(layer index beyond num_layers={params['n_layer']}, or an unexpected bias)")
        if t.st_dtype not in ("F32", "F16", "BF16"):
            raise GlmcpuError(f"{t.path}: tensor {hf_name!r} has dtype {t.st_dtype}; expected float32/float16/bfloat16")
        found[ours] = t
    if "output.weight" not in found and "token_embd.weight" in found and (v1 or config.get("tie_word_embeddings")):
        found["output.weight"] = found["token_embd.weight"]  # tied (v1 checkpoints saved without lm_head)
    mqa = bool(config.get("multi_query_attention", False)) and not v1  # v1: per-head [q|k|v] rows
    plan = []
    for ours, shape in shapes.items():
        if ours not in found:
            raise GlmcpuError(f"{checkpoint.src}: checkpoint is missing the tensor that maps to {ours!r}")
        t = found[ours]
        if tuple(t.shape) != shape:
            raise GlmcpuError(f"{t.path}: tensor {t.name!r} has shape {list(t.shape)}, but config.json implies "
                              f"{list(shape)} (config and weights disagree)")
        perm = None
        if not mqa and ours.endswith(("attn_qkv.weight", "attn_qkv.bias")):
            perm = qkv_row_permutation(params["n_head"], params["head_dim"])
        plan.append((ours, t, perm))
    return plan
