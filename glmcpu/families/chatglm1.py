"""ChatGLM-6B (THUDM/chatglm-6b, v1): remote-code ``model_type: chatglm`` with GLM blocks, 2-D
rotary positions and a bidirectional prompt prefix. Architecture: ``chatglm1``
(glmcpu/models/chatglm1.py).
"""
from glmcpu.errors import UnsupportedError
from glmcpu.families import chatglm2
from glmcpu.families.common import config_int, config_number, config_token_id

NAME = "chatglm1"
TITLE = "ChatGLM-6B (v1)"
ARCH = "chatglm1"
MODEL_TYPES = ("chatglm",)

TENSORS = {
    "token_embd.weight": "transformer.word_embeddings.weight",
    "blk.{i}.attn_norm.weight": "transformer.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_norm.bias": "transformer.layers.{i}.input_layernorm.bias",
    "blk.{i}.attn_qkv.weight": "transformer.layers.{i}.attention.query_key_value.weight",  # per-head [q|k|v]
    "blk.{i}.attn_qkv.bias": "transformer.layers.{i}.attention.query_key_value.bias",
    "blk.{i}.attn_output.weight": "transformer.layers.{i}.attention.dense.weight",
    "blk.{i}.attn_output.bias": "transformer.layers.{i}.attention.dense.bias",
    "blk.{i}.ffn_norm.weight": "transformer.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_norm.bias": "transformer.layers.{i}.post_attention_layernorm.bias",
    "blk.{i}.ffn_up.weight": "transformer.layers.{i}.mlp.dense_h_to_4h.weight",
    "blk.{i}.ffn_up.bias": "transformer.layers.{i}.mlp.dense_h_to_4h.bias",
    "blk.{i}.ffn_down.weight": "transformer.layers.{i}.mlp.dense_4h_to_h.weight",
    "blk.{i}.ffn_down.bias": "transformer.layers.{i}.mlp.dense_4h_to_h.bias",
    "output_norm.weight": "transformer.final_layernorm.weight",
    "output_norm.bias": "transformer.final_layernorm.bias",
    "output.weight": "lm_head.weight",
}
IGNORED = ["transformer.layers.{i}.attention.rotary_emb.inv_freq"]  # float16-rounded, recomputed at load
UNSUPPORTED_TENSORS = chatglm2.UNSUPPORTED_TENSORS
TOKENIZER_FILES = ("ice_text.model",)
TOKENIZER_KIND = "sentencepiece"
STOP_TOKENS = ("<eop>",)
GGUF_ARCH = GGUF_TENSORS = None  # llama.cpp has no ChatGLM-6B (v1) architecture
row_permutation = chatglm2.row_permutation  # per-head [q|k|v] rows -> [all q | all k | all v]


def recognise(config, hints):
    return chatglm2.is_v1(config)


def recognise_gguf(g):
    return False


def tied(config):
    return True  # v1 checkpoints are saved with or without lm_head (it is the embedding)


def params(config):
    for key in ("num_layers", "hidden_size", "num_attention_heads", "inner_hidden_size", "vocab_size"):
        config_int(config, key)
    for key in ("bos_token_id", "gmask_token_id", "mask_token_id"):
        config_int(config, key, minimum=0)
    if config.get("position_encoding_2d", True) is not True:
        raise UnsupportedError("unsupported: position_encoding_2d=false (1-D rotary positions)")
    chatglm2.refuse_thudm_variants(config)
    if config.get("num_image_tokens"):
        raise UnsupportedError(f"unsupported: num_image_tokens={config['num_image_tokens']} (VisualGLM)")
    if config["hidden_size"] % config["num_attention_heads"] or (config["hidden_size"] // config["num_attention_heads"]) % 4:
        raise UnsupportedError("unsupported: head size not a multiple of 4")
    return {
        "arch": ARCH,
        "n_layer": config["num_layers"],
        "n_embd": config["hidden_size"],
        "n_head": config["num_attention_heads"],
        "head_dim": config["hidden_size"] // config["num_attention_heads"],
        "n_ff": config["inner_hidden_size"],
        "n_vocab": config["vocab_size"],
        "norm_eps": config_number(config, "layernorm_epsilon", 1e-5),
        "rope_base": 10000.0,
        "bos_token_id": config["bos_token_id"],
        "mask_token_id": config["mask_token_id"],
        "gmask_token_id": config["gmask_token_id"],
        "seq_length": config_int(config, "max_sequence_length", 2048),
        "eos_token_ids": chatglm2.eos_list(config, 130005),
        "pad_token_id": config_token_id(config, "pad_token_id"),
        "chat": True,
    }


def make_tokenizer(info, data):
    from glmcpu.tokenizer import IceTextTokenizer
    return IceTextTokenizer(data)


def chat_prompt(tok, messages, tools=None, parse_special=False, template=None):
    """The official ChatGLM-6B chat prompt: a first turn is the bare query; with history,
    "[Round i]\\n问：...\\n答：..." rounds. No system role (the official code has none). The
    prompt ends with [gMASK] <sop>."""
    from glmcpu.chat import check_messages, rounds_and_query, refuse_tools
    refuse_tools(NAME, tools)
    rounds, query = rounds_and_query(check_messages(messages))
    if not rounds:
        prompt = query
    else:
        prompt = "".join(f"[Round {i}]\n问：{q}\n答：{r}\n" for i, (q, r) in enumerate(rounds))
        prompt += f"[Round {len(rounds)}]\n问：{query}\n答："
    return tok.encode(prompt, parse_special=parse_special) + tok.suffix_ids()
