"""Helpers the family modules and the converter share."""
import math
import re

from glmcpu.errors import GlmcpuError

REQUIRED = object()

# llama.cpp's GGUF tensor names (llama-arch.cpp, LLM_ARCH_CHATGLM / LLM_ARCH_GLM4) for our names,
# as its convert_hf_to_gguf.py writes them: the same as ours but for the fused [gate | up] matrix,
# which it calls ffn_up. A list means rows concatenated (separate q, k, v of the HF-native layouts).
GGUF_TENSORS_FUSED = {
    "token_embd.weight": "token_embd.weight",
    "blk.{i}.attn_norm.weight": "blk.{i}.attn_norm.weight",
    "blk.{i}.attn_qkv.weight": "blk.{i}.attn_qkv.weight",
    "blk.{i}.attn_qkv.bias": "blk.{i}.attn_qkv.bias",
    "blk.{i}.attn_output.weight": "blk.{i}.attn_output.weight",
    "blk.{i}.ffn_norm.weight": "blk.{i}.ffn_norm.weight",
    "blk.{i}.ffn_up_gate.weight": "blk.{i}.ffn_up.weight",
    "blk.{i}.ffn_down.weight": "blk.{i}.ffn_down.weight",
    "output_norm.weight": "output_norm.weight",
    "output.weight": "output.weight",
}
GGUF_TENSORS_SPLIT = dict(GGUF_TENSORS_FUSED, **{
    "blk.{i}.attn_qkv.weight": ["blk.{i}.attn_q.weight", "blk.{i}.attn_k.weight", "blk.{i}.attn_v.weight"],
    "blk.{i}.attn_qkv.bias": ["blk.{i}.attn_q.bias", "blk.{i}.attn_k.bias", "blk.{i}.attn_v.bias"],
})


def config_int(config, key, default=REQUIRED, minimum=1):
    """config.json's integer ``key`` (``default`` when absent): a clear error for any other type
    or a value outside [minimum, 2**31)."""
    v = config.get(key, default)
    if v is REQUIRED or isinstance(v, bool) or not isinstance(v, int) or not minimum <= v < 2**31:
        raise GlmcpuError(f"config.json: missing or invalid {key!r}: {config.get(key)!r} "
                          f"(expected an integer >= {minimum})")
    return v


def config_number(config, key, default=REQUIRED):
    """config.json's positive finite number ``key`` as a float."""
    v = config.get(key, default)
    if v is REQUIRED or isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
        raise GlmcpuError(f"config.json: missing or invalid {key!r}: {config.get(key)!r} (expected a positive number)")
    return float(v)


def config_bool(config, key, default):
    """config.json's true/false ``key``."""
    v = config.get(key, default)
    if not isinstance(v, bool):
        raise GlmcpuError(f"config.json: invalid {key!r}: {v!r} (expected true or false)")
    return v


def config_token_id(config, key, default=None):
    """config.json's optional token id ``key`` (None when absent or null)."""
    return None if config.get(key, default) is None else config_int(config, key, default, minimum=0)


def is_base_model(config):
    """A base (pre-trained, not chat-tuned) model, e.g. chatglm3-6b-base, by its _name_or_path."""
    name = config.get("_name_or_path")
    return isinstance(name, str) and "base" in re.split(r"[-_/.]", name.lower())


def name_hint(text):
    """A family suggested by a model name such as THUDM/chatglm3-6b-32k, or None."""
    if not isinstance(text, str):
        return None
    t = text.lower()
    if "glm-4" in t or "glm4" in t:
        return "glm4"
    if "chatglm3" in t:
        return "chatglm3"
    if "chatglm2" in t or "codegeex2" in t:
        return "chatglm2"
    return None


def layer_pattern(name):
    """'blk.3.attn_qkv.weight' -> ('blk.{i}.attn_qkv.weight', {'i': '3'}); other names unchanged."""
    m = re.match(r"^blk\.(\d+)\.(.*)$", name)
    if not m:
        return name, {}
    return "blk.{i}." + m.group(2), {"i": m.group(1)}


def compile_patterns(patterns):
    """Regexes for checkpoint name patterns with "{i}"."""
    return [re.compile("^" + re.escape(p).replace(r"\{i\}", r"\d+") + "$") for p in patterns]
