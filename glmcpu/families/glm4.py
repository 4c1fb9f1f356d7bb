"""GLM-4-9B-chat (THUDM/glm-4-9b-chat, -1m, glm-4-9b base) with THUDM's remote code: the ChatGLM2
checkpoint layout (glmcpu/families/chatglm2.py), a base-scaled rotary (10000 * rope_ratio), the
tiktoken tokenizer and the role-token chat format of ChatGLM3. Architecture: ``chatglm``.

The Hugging-Face-native glm-4-9b-chat-hf is the ``glm`` family; GLM-4-0414 is ``glm4-0414``.
"""
from glmcpu.families import chatglm2, chatglm3

NAME = "glm4"
TITLE = "GLM-4-9B (THUDM remote code)"
ARCH = chatglm2.ARCH
MODEL_TYPES = chatglm2.MODEL_TYPES
TENSORS, IGNORED, UNSUPPORTED_TENSORS = chatglm2.TENSORS, chatglm2.IGNORED, chatglm2.UNSUPPORTED_TENSORS
TOKENIZER_FILES = ("tokenizer.model",)
TOKENIZER_KIND = "tiktoken"
STOP_TOKENS = ("<|user|>", "<|observation|>")
GGUF_ARCH, GGUF_TENSORS = chatglm2.GGUF_ARCH, chatglm2.GGUF_TENSORS
row_permutation = chatglm2.row_permutation


def recognise(config, hints):
    return chatglm2.recognise_as(NAME, config, hints)


def recognise_gguf(g):
    """Byte-level BPE with the remote-code layout's fused QKV (older llama.cpp GLM-4-9B-chat files)."""
    return g["arch"] == GGUF_ARCH and g["tokenizer_model"] == "gpt2" and "blk.0.attn_qkv.weight" in g["tensors"]


def params(config):
    return chatglm2.layout_params(config, chatglm3.rope_scaling)


def make_tokenizer(info, data):
    from glmcpu.tokenizer import TiktokenGLM4
    return TiktokenGLM4(data)


def chat_prompt(tok, messages, tools=None, parse_special=False, template=None):
    from glmcpu.chat import check_messages, family_messages
    return chatglm3.role_prompt(tok, family_messages(NAME, check_messages(messages, openai=True), tools), parse_special)
