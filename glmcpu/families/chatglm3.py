"""ChatGLM3-6B (THUDM/chatglm3-6b, -32k, -128k, -base): the ChatGLM2 layout (glmcpu/families/
chatglm2.py) with a base-scaled rotary, role tokens in the tokenizer and a role-token chat format.
Architecture: ``chatglm``.
"""
from glmcpu.families import chatglm2

NAME = "chatglm3"
TITLE = "ChatGLM3-6B"
ARCH = chatglm2.ARCH
MODEL_TYPES = chatglm2.MODEL_TYPES
TENSORS, IGNORED, UNSUPPORTED_TENSORS = chatglm2.TENSORS, chatglm2.IGNORED, chatglm2.UNSUPPORTED_TENSORS
TOKENIZER_FILES = ("tokenizer.model",)
TOKENIZER_KIND = "sentencepiece"
STOP_TOKENS = ("<|user|>", "<|observation|>")
GGUF_ARCH, GGUF_TENSORS = chatglm2.GGUF_ARCH, chatglm2.GGUF_TENSORS
row_permutation = chatglm2.row_permutation


def recognise(config, hints):
    return chatglm2.recognise_as(NAME, config, hints)


def recognise_gguf(g):
    """SentencePiece with the role tokens (llama.cpp's set_vocab_chatglm3)."""
    return g["arch"] == GGUF_ARCH and g["tokenizer_model"] == "llama" and "<|user|>" in g["tokens"]


def rope_scaling(rope_ratio):
    """ChatGLM3-6B-32k/128k scale the base: 10000 * rope_ratio. -> (base, pos_scale)"""
    return 10000.0 * rope_ratio, 1.0


def params(config):
    return chatglm2.layout_params(config, rope_scaling)


def make_tokenizer(info, data):
    from glmcpu.tokenizer import SentencePieceGLM
    return SentencePieceGLM(data, NAME, roles=True)


def role_prompt(tok, messages, parse_special=False):
    """The official build_chat_input: [gMASK] sop, then per message <|role|> metadata "\\n" content,
    then <|assistant|>. Content is encoded literally unless parse_special (a user typing
    "<|user|>" stays text)."""
    ids = tok.prefix_ids()
    for m in messages:
        ids += [tok.token_id(f"<|{m['role']}|>")] + tok.encode(m.get("metadata", "") + "\n", parse_special=False)
        ids += tok.encode(m["content"], parse_special=parse_special)
    return ids + [tok.token_id("<|assistant|>")]


def chat_prompt(tok, messages, tools=None, parse_special=False, template=None):
    from glmcpu.chat import check_messages, family_messages
    return role_prompt(tok, family_messages(NAME, check_messages(messages, openai=True), tools), parse_special)
