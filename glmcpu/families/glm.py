"""glm-4-9b-chat-hf, GLM-Edge 1.5B/4B chat: transformers' ``GlmForCausalLM`` (``model_type: glm``).

Separate q/k/v projections (bias iff ``attention_bias``) fused here into one QKV matrix, a fused
``gate_up_proj`` ([gate | up]), rotary on the first ``head_dim * partial_rotary_factor`` channels
with adjacent pairs, ``rope_theta`` from the config, tied embeddings when ``tie_word_embeddings``.
It runs on the ``chatglm`` architecture (glmcpu/models/chatglm.py). Tokenizer: ``tokenizer.json``;
chat format: the jinja ``chat_template`` stored from ``tokenizer_config.json``.
"""
import json

from glmcpu.errors import GlmcpuError, UnsupportedError
from glmcpu.families.common import GGUF_TENSORS_SPLIT, REQUIRED, config_int, config_number, config_token_id, is_base_model

NAME = "glm"
TITLE = "GlmForCausalLM (glm-4-9b-chat-hf, GLM-Edge)"
ARCH = "chatglm"
MODEL_TYPES = ("glm",)

LAYER = "model.layers.{i}."
TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "blk.{i}.attn_norm.weight": LAYER + "input_layernorm.weight",
    "blk.{i}.attn_qkv.weight": [LAYER + "self_attn.q_proj.weight", LAYER + "self_attn.k_proj.weight",
                                LAYER + "self_attn.v_proj.weight"],
    "blk.{i}.attn_qkv.bias": [LAYER + "self_attn.q_proj.bias", LAYER + "self_attn.k_proj.bias",
                              LAYER + "self_attn.v_proj.bias"],
    "blk.{i}.attn_output.weight": LAYER + "self_attn.o_proj.weight",
    "blk.{i}.ffn_norm.weight": LAYER + "post_attention_layernorm.weight",
    "blk.{i}.ffn_up_gate.weight": LAYER + "mlp.gate_up_proj.weight",  # [gate | up]
    "blk.{i}.ffn_down.weight": LAYER + "mlp.down_proj.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
IGNORED = ["model.rotary_emb.inv_freq", LAYER + "self_attn.rotary_emb.inv_freq"]
UNSUPPORTED_TENSORS = {}
TOKENIZER_FILES = ("tokenizer.json",)
TOKENIZER_KIND = "tokenizers"
STOP_TOKENS = ("<|user|>", "<|observation|>")
GGUF_ARCH, GGUF_TENSORS = "chatglm", GGUF_TENSORS_SPLIT  # llama.cpp writes GlmForCausalLM as "chatglm"

# transformers' GlmConfig defaults, used for keys a config leaves out
DEFAULTS = {"head_dim": 128, "partial_rotary_factor": 0.5, "rope_theta": 10000.0, "rms_norm_eps": 1.5625e-07,
            "attention_bias": True, "tie_word_embeddings": False, "hidden_act": "silu",
            "max_position_embeddings": 131072, "eos_token_id": [151329, 151336, 151338]}


def split_rows(name, params):
    """Rows of q, k and v in the fused QKV tensor (and its bias)."""
    H, G, D = params["n_head"], params["n_kv_head"], params["head_dim"]
    return [H * D, G * D, G * D]


def recognise(config, hints):
    return config.get("model_type") == "glm"


def recognise_gguf(g):
    """Byte-level BPE with separate q/k/v (llama.cpp's ChatGLMModel for GlmForCausalLM)."""
    return g["arch"] == GGUF_ARCH and g["tokenizer_model"] == "gpt2" and "blk.0.attn_q.weight" in g["tensors"]


def tied(config):
    return bool(config.get("tie_word_embeddings", DEFAULTS["tie_word_embeddings"]))


def _int(config, key):
    return config_int(config, key, DEFAULTS.get(key, REQUIRED))


def _number(value, key):
    return config_number({key: value}, key)


def rope_config(config):
    """(rope_theta, partial_rotary_factor) from the top-level keys or the newer ``rope_parameters``."""
    rp = config.get("rope_parameters")
    if rp is not None and not isinstance(rp, dict):
        raise GlmcpuError(f"config.json: invalid 'rope_parameters': {rp!r}")
    rp = rp or {}
    kind = rp.get("rope_type", "default")
    if kind != "default":
        raise UnsupportedError(f"unsupported: rope_parameters.rope_type={json.dumps(kind)}")
    if config.get("rope_scaling"):
        raise UnsupportedError(f"unsupported: rope_scaling={json.dumps(config['rope_scaling'])}")
    theta = rp.get("rope_theta", config.get("rope_theta", DEFAULTS["rope_theta"]))
    factor = rp.get("partial_rotary_factor", config.get("partial_rotary_factor", DEFAULTS["partial_rotary_factor"]))
    theta, factor = _number(theta, "rope_theta"), _number(factor, "partial_rotary_factor")
    if factor > 1:
        raise GlmcpuError(f"config.json: invalid 'partial_rotary_factor': {factor}")
    return theta, factor


def check_config(config):
    """Refuse what transformers' GLM code can do and glmcpu does not."""
    act = config.get("hidden_act", DEFAULTS["hidden_act"])
    if act != "silu":
        raise UnsupportedError(f"unsupported: hidden_act={json.dumps(act)} (only silu)")
    for key, why in (("quantization_config", "a pre-quantized checkpoint: convert the bf16 release"),
                     ("vision_config", "multimodal checkpoints"), ("sliding_window", "sliding-window attention")):
        if config.get(key):
            raise UnsupportedError(f"unsupported: {key} ({why})")


def glm_params(config, post_norms):
    """Hyper-parameters of the GlmForCausalLM / Glm4ForCausalLM layout for the chatglm architecture."""
    check_config(config)
    n_head, n_kv, head_dim = _int(config, "num_attention_heads"), _int(config, "num_key_value_heads"), _int(config, "head_dim")
    if n_head % n_kv:
        raise UnsupportedError(f"unsupported: num_attention_heads={n_head} not a multiple of num_key_value_heads={n_kv}")
    theta, factor = rope_config(config)
    rope_dim = int(head_dim * factor)
    if rope_dim % 2 or rope_dim <= 0:
        raise UnsupportedError(f"unsupported: head_dim * partial_rotary_factor = {head_dim * factor} (not an even number)")
    eos = config.get("eos_token_id", DEFAULTS["eos_token_id"])
    eos = eos if isinstance(eos, list) else [eos]
    if not all(e is None or (isinstance(e, int) and not isinstance(e, bool) and 0 <= e < 2**31) for e in eos):
        raise GlmcpuError(f"config.json: invalid eos_token_id {config.get('eos_token_id')!r}")
    bias = config.get("attention_bias", DEFAULTS["attention_bias"])
    if not isinstance(bias, bool):
        raise GlmcpuError(f"config.json: invalid 'attention_bias': {bias!r}")
    return {
        "arch": ARCH,
        "n_layer": _int(config, "num_hidden_layers"),
        "n_embd": _int(config, "hidden_size"),
        "n_head": n_head,
        "n_kv_head": n_kv,
        "head_dim": head_dim,
        "n_ff": _int(config, "intermediate_size"),
        "n_vocab": _int(config, "vocab_size"),
        "norm_eps": _number(config.get("rms_norm_eps", DEFAULTS["rms_norm_eps"]), "rms_norm_eps"),
        "rope_dim": rope_dim,
        "rope_base": theta,
        "rope_pos_scale": 1.0,
        "qkv_bias": bias,
        "post_norms": post_norms,
        "seq_length": _int(config, "max_position_embeddings"),
        "eos_token_ids": [int(e) for e in eos if e is not None],
        "pad_token_id": config_token_id(config, "pad_token_id"),
        "chat": not is_base_model(config),
    }


def params(config):
    return glm_params(config, post_norms=False)


def make_tokenizer(info, data):
    from glmcpu.tokenizer_hf import HFTokenizer
    return HFTokenizer(data, info.get("config"))


def chat_prompt(tok, messages, tools=None, parse_special=False, template=None):
    """The model's own jinja chat template (stored in the file), rendered as transformers does."""
    from glmcpu.chat import check_messages
    from glmcpu.chat_template import encode_chat
    if not template:
        raise GlmcpuError("this model file has no chat template; convert again with the tokenizer_config.json "
                          "of the release next to the weights (or --tokenizer-dir DIR)")
    return encode_chat(tok, template, check_messages(messages, openai=True), tools=tools, parse_special=parse_special)
