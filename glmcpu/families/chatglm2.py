"""ChatGLM2-6B (THUDM/chatglm2-6b, -32k; CodeGeeX2-6B's layout): remote-code ``model_type: chatglm``.

ChatGLM3-6B and GLM-4-9B-chat use the same checkpoint layout and config keys; their modules
import the layout from here and differ in rotary scaling, tokenizer and chat format.
Architecture: ``chatglm`` (glmcpu/models/chatglm.py).
"""
import json

import numpy as np

from glmcpu.errors import GlmcpuError, UnsupportedError
from glmcpu.families.common import GGUF_TENSORS_FUSED, config_bool, config_int, config_number, config_token_id, is_base_model, name_hint

NAME = "chatglm2"
TITLE = "ChatGLM2-6B"
ARCH = "chatglm"
MODEL_TYPES = ("chatglm",)

# our name <- checkpoint name
TENSORS = {
    "token_embd.weight": "transformer.embedding.word_embeddings.weight",
    "blk.{i}.attn_norm.weight": "transformer.encoder.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_qkv.weight": "transformer.encoder.layers.{i}.self_attention.query_key_value.weight",
    "blk.{i}.attn_qkv.bias": "transformer.encoder.layers.{i}.self_attention.query_key_value.bias",
    "blk.{i}.attn_output.weight": "transformer.encoder.layers.{i}.self_attention.dense.weight",
    "blk.{i}.ffn_norm.weight": "transformer.encoder.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_up_gate.weight": "transformer.encoder.layers.{i}.mlp.dense_h_to_4h.weight",  # [gate | up]
    "blk.{i}.ffn_down.weight": "transformer.encoder.layers.{i}.mlp.dense_4h_to_h.weight",
    "output_norm.weight": "transformer.encoder.final_layernorm.weight",
    "output.weight": "transformer.output_layer.weight",
}
IGNORED = ["transformer.rotary_pos_emb.inv_freq"]  # recomputed from the config at load
UNSUPPORTED_TENSORS = {"prefix_encoder": "P-tuning v2 prefix encoder"}

TOKENIZER_FILES = ("tokenizer.model",)
TOKENIZER_KIND = "sentencepiece"
STOP_TOKENS = ()
GGUF_ARCH, GGUF_TENSORS = "chatglm", GGUF_TENSORS_FUSED


def is_v1(config):
    """A ChatGLM-6B (v1) config (GLM blocks), which shares model_type 'chatglm'."""
    return "padded_vocab_size" not in config and ("position_encoding_2d" in config or "inner_hidden_size" in config)


def recognise(config, hints):
    """True/False/None for the three families of this layout; ``NAME`` is the one asked about."""
    return recognise_as(NAME, config, hints)


def recognise_gguf(g):
    """A GGUF (``g``: arch, tokenizer_model, tokens, tensors) of ChatGLM2: SentencePiece, no role tokens."""
    return g["arch"] == GGUF_ARCH and g["tokenizer_model"] == "llama" and "<|user|>" not in g["tokens"]


def recognise_as(name, config, hints):
    if is_v1(config):
        return False
    said = name_hint(hints["name"])
    if said is None:
        if config.get("padded_vocab_size") == 151552:
            said = "glm4"
        elif "ChatGLM4Tokenizer" in hints["tokenizer_config_text"]:
            said = "glm4"
        elif "<|user|>" in hints["tokenizer_config_text"]:
            said = "chatglm3"
        else:
            said = name_hint(hints["tokenizer_config"].get("name_or_path"))
    return None if said is None else said == name


def _require(config, key, expected, why):
    val = config.get(key, expected)
    if val != expected:
        raise UnsupportedError(f"unsupported: {key}={json.dumps(val)} ({why})")


def refuse_thudm_variants(config):
    """Pre-quantized THUDM checkpoints and P-tuning prefixes (every remote-code generation)."""
    qb = config.get("quantization_bit", 0) or 0
    if qb:
        raise UnsupportedError(
            f"unsupported: quantization_bit={qb} (a pre-quantized THUDM checkpoint); "
            f"convert the original float16/bfloat16 checkpoint instead")
    if config.get("pre_seq_len"):
        raise UnsupportedError(f"unsupported: pre_seq_len={config['pre_seq_len']} (P-tuning v2 prefix encoder)")


def check_config(config):
    """Refuse every option of the ChatGLM2/3/GLM-4 modeling code that changes the math and is not implemented."""
    for key in ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size", "padded_vocab_size"):
        config_int(config, key)
    _require(config, "rmsnorm", True, "LayerNorm variant")
    _require(config, "apply_residual_connection_post_layernorm", False, "post-norm residual")
    _require(config, "add_bias_linear", False, "biases on every linear layer")
    _require(config, "post_layer_norm", True, "no final layer norm")
    refuse_thudm_variants(config)
    if config.get("rope_scaling"):
        raise UnsupportedError(f"unsupported: rope_scaling={json.dumps(config['rope_scaling'])}")
    rr = config.get("rope_ratio", 1)
    if isinstance(rr, bool) or not isinstance(rr, (int, float)) or not rr > 0:
        raise GlmcpuError(f"config.json: invalid rope_ratio {rr!r}")


def rope_scaling(rope_ratio):
    """ChatGLM2-6B-32k interpolates positions: pos / rope_ratio, base 10000. -> (base, pos_scale)"""
    return 10000.0, rope_ratio


def eos_list(config, default):
    eos = config.get("eos_token_id", default)
    eos = eos if isinstance(eos, list) else [eos]
    if not all(e is None or (isinstance(e, int) and not isinstance(e, bool) and 0 <= e < 2**31) for e in eos):
        raise GlmcpuError(f"config.json: invalid eos_token_id {config.get('eos_token_id')!r}")
    return [int(e) for e in eos if e is not None]


def layout_params(config, rope):
    """Hyper-parameters of the ChatGLM2/3/GLM-4 layout; ``rope(rope_ratio) -> (base, pos_scale)``."""
    check_config(config)
    n_head = config["num_attention_heads"]
    head_dim = config_int(config, "kv_channels", config["hidden_size"] // n_head)
    mqa = config_bool(config, "multi_query_attention", False)
    n_kv = config_int(config, "multi_query_group_num", 1) if mqa else n_head
    if n_head % n_kv:
        raise UnsupportedError(f"unsupported: num_attention_heads={n_head} not a multiple of multi_query_group_num={n_kv}")
    if head_dim % 4:
        raise UnsupportedError(f"unsupported: kv_channels={head_dim} (must be a multiple of 4 for the half-head rotary)")
    rope_base, rope_pos_scale = rope(float(config.get("rope_ratio", 1) or 1))
    return {
        "arch": ARCH,
        "n_layer": config["num_layers"],
        "n_embd": config["hidden_size"],
        "n_head": n_head,
        "n_kv_head": n_kv,
        "head_dim": head_dim,
        "n_ff": config["ffn_hidden_size"],
        "n_vocab": config["padded_vocab_size"],
        "norm_eps": config_number(config, "layernorm_epsilon", 1e-5),
        "rope_dim": head_dim // 2,
        "rope_base": rope_base,
        "rope_pos_scale": rope_pos_scale,
        "qkv_bias": config_bool(config, "add_qkv_bias", False),
        "post_norms": False,
        "seq_length": config_int(config, "seq_length", 2048),
        "eos_token_ids": eos_list(config, 2),
        "pad_token_id": config_token_id(config, "pad_token_id"),
        "chat": not is_base_model(config),  # a base model (chatglm3-6b-base): raw completion, no template
    }


def params(config):
    return layout_params(config, rope_scaling)


def row_permutation(name, params, config):
    """Without multi_query_attention the fused QKV rows are Megatron's per-head [q|k|v]; ours are
    [all q | all k | all v]: new row -> old row."""
    if config.get("multi_query_attention", False) or not name.endswith(("attn_qkv.weight", "attn_qkv.bias")):
        return None
    part, h, d = np.meshgrid(np.arange(3), np.arange(params["n_head"]), np.arange(params["head_dim"]), indexing="ij")
    return (h * 3 * params["head_dim"] + part * params["head_dim"] + d).reshape(-1)


def make_tokenizer(info, data):
    from glmcpu.tokenizer import SentencePieceGLM
    return SentencePieceGLM(data, NAME, roles=False)


def chat_prompt(tok, messages, tools=None, parse_special=False, template=None):
    """The official ChatGLM2 chat prompt: "[Round i]\\n\\n问：...\\n\\n答：..." rounds (no system role:
    the official code drops it)."""
    from glmcpu.chat import check_messages, rounds_and_query, refuse_tools
    refuse_tools(NAME, tools)
    rounds, query = rounds_and_query(check_messages(messages))
    prompt = "".join(f"[Round {i + 1}]\n\n问：{q}\n\n答：{r}\n\n" for i, (q, r) in enumerate(rounds))
    prompt += f"[Round {len(rounds) + 1}]\n\n问：{query}\n\n答："
    return tok.prefix_ids() + tok.encode(prompt, parse_special=parse_special)
