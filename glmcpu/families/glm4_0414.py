"""GLM-4-9B-0414, GLM-Z1-9B-0414, GLM-4-32B-0414: transformers' ``Glm4ForCausalLM``
(``model_type: glm4``). The ``glm`` family (glmcpu/families/glm.py) plus two RMSNorms per layer on
each sublayer's output before its residual add: ``post_self_attn_layernorm`` and
``post_mlp_layernorm`` (``post_attention_layernorm`` stays the pre-MLP norm).
Architecture: ``chatglm`` with ``post_norms``.
"""
from glmcpu.families import glm

NAME = "glm4-0414"
TITLE = "Glm4ForCausalLM (GLM-4-0414)"
ARCH = glm.ARCH
MODEL_TYPES = ("glm4",)

TENSORS = dict(glm.TENSORS, **{
    "blk.{i}.attn_post_norm.weight": glm.LAYER + "post_self_attn_layernorm.weight",
    "blk.{i}.ffn_post_norm.weight": glm.LAYER + "post_mlp_layernorm.weight",
})
IGNORED, UNSUPPORTED_TENSORS = glm.IGNORED, glm.UNSUPPORTED_TENSORS
GGUF_ARCH = "glm4"  # llama.cpp's Glm4Model
GGUF_TENSORS = dict(glm.GGUF_TENSORS, **{
    "blk.{i}.attn_post_norm.weight": "blk.{i}.post_attention_norm.weight",
    "blk.{i}.ffn_post_norm.weight": "blk.{i}.post_ffw_norm.weight",
})
TOKENIZER_FILES, TOKENIZER_KIND, STOP_TOKENS = glm.TOKENIZER_FILES, glm.TOKENIZER_KIND, glm.STOP_TOKENS
tied, split_rows, make_tokenizer, chat_prompt = glm.tied, glm.split_rows, glm.make_tokenizer, glm.chat_prompt


def recognise(config, hints):
    return config.get("model_type") == "glm4"


def recognise_gguf(g):
    return g["arch"] == GGUF_ARCH


def params(config):
    return glm.glm_params(config, post_norms=True)
