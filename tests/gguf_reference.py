"""Reference GGUF writer: the file llama.cpp's ``convert_hf_to_gguf.py`` writes for a GLM checkpoint,
reproduced without torch/transformers (numpy, the ``gguf`` package, sentencepiece, tokenizers and
glmcpu's own checkpoint reader). It is a test fixture: every step below names the converter function
it mirrors. Mirrored version: llama.cpp as vendored in llama-cpp-python 0.3.36 (conversion/*.py,
gguf-py 0.19.0), run with transformers 4.57.6. Verified byte for byte against that converter by
tools/check_gguf_reference.py (fixtures and the scripts that made them: /work/data/gguf-ref/README.md).

    write_reference_gguf(src_dir, out_path, outtype, tokenizer_pre=None)   # outtype: f32 f16 bf16 q8_0

Spec (what the converter writes)
================================

Which class, which GGUF architecture (config.json ``architectures[0]``, conversion/__init__.py):

    ChatGLMModel, ChatGLMForConditionalGeneration, GlmForCausalLM -> conversion/chatglm.py ChatGLMModel, arch "chatglm"
    Glm4ForCausalLM                                               -> conversion/glm.py Glm4Model,       arch "glm4"

So the HF-native GLM-4-9B-chat-hf and GLM-Edge (``GlmForCausalLM``) are written as "chatglm", not
"glm4"; only GLM-4-0414 / GLM-Z1 (``Glm4ForCausalLM``) are "glm4". ChatGLM-6B v1 is not supported.

hparams (ModelBase.load_hparams): ``AutoConfig.from_pretrained(trust_remote_code=False).to_dict()``.
For model_type "chatglm" (remote code) that fails and the raw config.json is used; for "glm"/"glm4"
it is config.json over the GlmConfig/Glm4Config defaults (partial_rotary_factor 0.5, head_dim 128,
max_position_embeddings 131072, rms_norm_eps 1.5625e-07, rope_theta 10000.0, ...). A transformers-5
``rope_parameters`` dict is used as is (rope_theta, partial_rotary_factor read from it; its
rope_type "default" only logs "Unknown RoPE type"), so both config layouts give the same file.

Metadata keys, in file order:

  general.architecture, general.type = "model", general.name / organization / basename / finetune /
  size_label ... (gguf.Metadata heuristics on config.json ``_name_or_path`` and the directory name;
  size_label from the parameter count), then the architecture keys:

  arch "chatglm" (ChatGLMModel.set_gguf_parameters; the same code for remote-code and GlmForCausalLM
  configs, which is why several HF keys are ignored):
    chatglm.context_length            seq_length, else hidden_size (!: GlmForCausalLM has no seq_length,
                                      so context_length = hidden_size; max_position_embeddings is ignored)
    chatglm.embedding_length          hidden_size (or n_embed)
    chatglm.feed_forward_length       ffn_hidden_size, else intermediate_size, else 4*hidden
    chatglm.block_count               n_layers | num_hidden_layers | n_layer | num_layers (first present)
    chatglm.attention.head_count      n_head, else num_attention_heads
    chatglm.attention.head_count_kv   multi_query_group_num, else num_key_value_heads, else head_count
    chatglm.attention.layer_norm_rms_epsilon  layernorm_epsilon, else 1e-5 (!: rms_norm_eps of
                                      GlmForCausalLM configs is ignored, the file says 1e-5)
    general.file_type                 0 f32, 1 f16, 32 bf16, 7 q8_0
    chatglm.rope.dimension_count      int((attention_dim or hidden_size // num_attention_heads)
                                      * partial_rotary_factor (default 0.5)); head_dim is ignored
    tokenizer.ggml.add_bos_token      False (written here, among the model keys)
    chatglm.rope.freq_base            10000 * rope_ratio (rope_ratio of remote-code GLM-4), else 10000
                                      (!: rope_theta is ignored)
  arch "glm4" (TextModel.set_gguf_parameters + Glm4Model):
    glm4.block_count, glm4.context_length (max_position_embeddings), glm4.embedding_length (hidden_size),
    glm4.feed_forward_length (intermediate_size), glm4.attention.head_count (num_attention_heads),
    glm4.attention.head_count_kv (num_key_value_heads), glm4.rope.freq_base (rope_theta),
    glm4.attention.layer_norm_rms_epsilon (rms_norm_eps), glm4.attention.key_length and
    glm4.attention.value_length (head_dim), general.file_type,
    glm4.rope.dimension_count = int((head_dim or hidden/heads) * partial_rotary_factor (default 0.5))
  then general.quantization_version = 2, then the tokenizer keys (below).

Tensors (order: weight files sorted by name (or the index's files, sorted), tensors of each
safetensors file sorted by name; rotary ``inv_freq`` buffers dropped; "transformer." prefix removed
for ChatGLM). No tensor is permuted, split, fused or rescaled for these architectures:

    llama.cpp name          remote-code ChatGLM2/3 / GLM-4 (transformer.*)   HF GlmForCausalLM / Glm4ForCausalLM
    token_embd              embedding.word_embeddings                        model.embed_tokens
    output_norm             encoder.final_layernorm                          model.norm
    output                  output_layer                                     lm_head (absent when tied: not written)
    blk.N.attn_norm         encoder.layers.N.input_layernorm                 model.layers.N.input_layernorm
    blk.N.attn_qkv          encoder.layers.N.self_attention.query_key_value  -
    blk.N.attn_q/_k/_v      -                                                model.layers.N.self_attn.{q,k,v}_proj
    blk.N.attn_output       encoder.layers.N.self_attention.dense            model.layers.N.self_attn.o_proj
    blk.N.ffn_norm          encoder.layers.N.post_attention_layernorm        model.layers.N.post_attention_layernorm
    blk.N.ffn_up            encoder.layers.N.mlp.dense_h_to_4h               model.layers.N.mlp.gate_up_proj
    blk.N.ffn_down          encoder.layers.N.mlp.dense_4h_to_h               model.layers.N.mlp.down_proj
    blk.N.post_attention_norm  -                                             model.layers.N.post_self_attn_layernorm (glm4)
    blk.N.post_ffw_norm        -                                             model.layers.N.post_mlp_layernorm (glm4)

  q/k/v: the fused query_key_value is stored as is: rows [q: heads*head_dim | k: kv*head_dim |
  v: kv*head_dim] (bias the same); the HF checkpoints keep separate attn_q/attn_k/attn_v (+ .bias when
  attention_bias). No rotary row permutation (GLM rotates adjacent pairs, ggml's "normal" rope; only
  M-RoPE Glm4v would be permuted). gate/up: the fused [gate; up] matrix is written as ONE tensor
  ``ffn_up`` with 2*ffn rows (first half = gate); there is no ffn_gate tensor.
  Types: 1-D tensors and names ending "_norm.weight" are F32 always; every other ".weight" takes the
  outtype (f32 F32, f16 F16, bf16 BF16, q8_0 Q8_0, incl. token_embd and output; Q8_0 falls back to
  F16 when the row length is not a multiple of 32). Data: bf16 (or anything not f16/f32) is widened
  to f32 first, f16 stays f16, then gguf.quants (round-to-nearest-even f16/bf16, ggml Q8_0).

Tokenizer keys, per family (tokenizer.ggml.*):

  ChatGLM3 (only when config ``_name_or_path`` contains "THUDM/chatglm3-6b"; set_vocab_chatglm3):
    model "llama", pre "chatglm-spm", tokens/scores/token_type for ids 0..padded_vocab_size-1 from the
    release's tokenization_chatglm.py over the sentencepiece model: ids 0/1/2 renamed "<unk>"/"<bos>"/
    "<eos>" (types from sentencepiece: UNKNOWN 2, CONTROL 3, CONTROL 3), sentencepiece ids keep their
    piece, score and type (NORMAL 1 / BYTE 6 ...); the 9 specials [MASK] [gMASK] [sMASK] sop eop
    <|system|> <|user|> <|assistant|> <|observation|> follow the sentencepiece vocab as CONTROL (score
    0); every later id up to padded_vocab_size is "[PAD<id>]" UNUSED 5 (score 0). No merges. Special
    ids from config.json: eos_token_id, pad_token_id (padding_token_id). add_bos_token False (above).
  GLM-4 vocabulary from tokenizer.json (GlmForCausalLM -> chatglm, Glm4ForCausalLM -> glm4;
    TextModel.get_vocab_base): model "gpt2", pre from the hash of the ids of a fixed text
    ("glm4" for the GLM-4 tokenizer.json, "chatglm-bpe" for glm-4-9b-chat's tiktoken tokenizer),
    tokens = tokenizer.json vocab strings (byte-level unicode) for ids 0..vocab_size-1, NORMAL 1;
    added special tokens CONTROL 3; ids without a token "[PAD<id>]" UNUSED 5; merges from
    tokenizer.json ("a b"). Special ids: tokenizer_config eos_token/pad_token etc. looked up in the
    added tokens, then config.json *_token_id (integers only: eos lists are skipped), then
    eos = unk = <|endoftext|>, eot = <|user|> (both classes) and bos = <|endoftext|> (glm4 only), each
    only if not set yet. add_eos_token False and add_bos_token False from the ByteLevel
    post-processor; chat_template from tokenizer_config.json.
  Remote-code ChatGLM2 and GLM-4-9B-chat (tiktoken): not convertible by this converter version:
    ChatGLMModel.set_vocab evaluates hparams["vocab_size"] eagerly (KeyError, those configs only have
    padded_vocab_size), and get_vocab_base needs a fast tokenizer (tokenizer.vocab). Raised here too.
  Vocabulary size: the converter never truncates: it asserts every tokenizer id < the model's vocab
  size (padded_vocab_size / vocab_size) and pads the rest with [PAD<id>] UNUSED.
"""
from __future__ import annotations

import json
import os
import re
from hashlib import sha256
from pathlib import Path

import numpy as np

import gguf
from glmcpu.convert.hf import Checkpoint

FTYPES = {  # convert_hf_to_gguf.py main(): ftype_map
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}
QTYPE_OF_FTYPE = {  # base.py ModelBase.prepare_tensors: the ftype -> tensor type ladder
    gguf.LlamaFileType.ALL_F32: gguf.GGMLQuantizationType.F32,
    gguf.LlamaFileType.MOSTLY_F16: gguf.GGMLQuantizationType.F16,
    gguf.LlamaFileType.MOSTLY_BF16: gguf.GGMLQuantizationType.BF16,
    gguf.LlamaFileType.MOSTLY_Q8_0: gguf.GGMLQuantizationType.Q8_0,
}

# conversion/__init__.py TEXT_MODEL_MAP + the @ModelBase.register lines of chatglm.py / glm.py
MODEL_CLASS = {
    "GlmForCausalLM": "ChatGLMModel",
    "ChatGLMModel": "ChatGLMModel",
    "ChatGLMForConditionalGeneration": "ChatGLMModel",
    "Glm4ForCausalLM": "Glm4Model",
}
GGUF_ARCH = {"ChatGLMModel": "chatglm", "Glm4Model": "glm4"}  # model_arch = MODEL_ARCH.CHATGLM / GLM4

# transformers 4.57.6 GlmConfig / Glm4Config defaults that reach the converter through
# AutoConfig(...).to_dict() (base.py ModelBase.load_hparams) when config.json omits them.
_GLM_CONFIG_DEFAULTS = dict(
    vocab_size=151552, hidden_size=4096, intermediate_size=13696, num_hidden_layers=40,
    num_attention_heads=32, num_key_value_heads=2, partial_rotary_factor=0.5, head_dim=128,
    hidden_act="silu", attention_dropout=0.0, max_position_embeddings=131072, initializer_range=0.02,
    rms_norm_eps=1.5625e-07, use_cache=True, tie_word_embeddings=False, rope_theta=10000.0,
    pad_token_id=151329, eos_token_id=[151329, 151336, 151338], bos_token_id=None, attention_bias=True,
)
HF_CONFIG_DEFAULTS = {"glm": _GLM_CONFIG_DEFAULTS, "glm4": _GLM_CONFIG_DEFAULTS}

# gguf-py tensor_mapping.py: the entries that match GLM checkpoints ({bid} = block index)
TENSOR_MAP = {
    # remote-code ChatGLM2/3, GLM-4 (after "transformer." is removed)
    "embedding.word_embeddings": "token_embd",
    "encoder.final_layernorm": "output_norm",
    "output_layer": "output",
    "encoder.layers.{bid}.input_layernorm": "blk.{bid}.attn_norm",
    "encoder.layers.{bid}.self_attention.query_key_value": "blk.{bid}.attn_qkv",
    "encoder.layers.{bid}.self_attention.dense": "blk.{bid}.attn_output",
    "encoder.layers.{bid}.post_attention_layernorm": "blk.{bid}.ffn_norm",
    "encoder.layers.{bid}.mlp.dense_h_to_4h": "blk.{bid}.ffn_up",
    "encoder.layers.{bid}.mlp.dense_4h_to_h": "blk.{bid}.ffn_down",
    # transformers-native GlmForCausalLM / Glm4ForCausalLM
    "model.embed_tokens": "token_embd",
    "model.norm": "output_norm",
    "lm_head": "output",
    "model.layers.{bid}.input_layernorm": "blk.{bid}.attn_norm",
    "model.layers.{bid}.self_attn.q_proj": "blk.{bid}.attn_q",
    "model.layers.{bid}.self_attn.k_proj": "blk.{bid}.attn_k",
    "model.layers.{bid}.self_attn.v_proj": "blk.{bid}.attn_v",
    "model.layers.{bid}.self_attn.o_proj": "blk.{bid}.attn_output",
    "model.layers.{bid}.post_attention_layernorm": "blk.{bid}.ffn_norm",
    "model.layers.{bid}.mlp.gate_up_proj": "blk.{bid}.ffn_up",
    "model.layers.{bid}.mlp.down_proj": "blk.{bid}.ffn_down",
    "model.layers.{bid}.post_self_attn_layernorm": "blk.{bid}.post_attention_norm",  # glm4 only
    "model.layers.{bid}.post_mlp_layernorm": "blk.{bid}.post_ffw_norm",  # glm4 only
}
ARCH_ONLY = {"blk.{bid}.post_attention_norm": "glm4", "blk.{bid}.post_ffw_norm": "glm4"}  # MODEL_TENSORS[arch]

# base.py TextModel.get_vocab_base_pre: the text whose token ids identify the pre-tokenizer ...
CHKTXT = '\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s there, \'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL'
# ... and the GLM entries of its hash table (the other ~90 entries are other model families)
PRE_BY_HASH = {
    "b6e8e1518dc4305be2fe39c313ed643381c4da5db34a98f6a04c093f8afbe99b": "chatglm-bpe",  # THUDM/glm-4-9b-chat
    "81d72c7348a9f0ebe86f23298d37debe0a5e71149e29bd283904c02262b27516": "chatglm-bpe",  # THUDM/glm-4-9b-chat
    "a1336059768a55c99a734006ffb02203cd450fed003e9a71886c88acf24fdbc2": "glm4",  # THUDM/glm-4-9b-hf
    "9ca2dd618e8afaf09731a7cf6e2105b373ba6a1821559f258b272fe83e6eb902": "glm4",  # zai-org/GLM-4.5-Air
    "cdf5f35325780597efd76153d4d1c16778f766173908894c04afc20108536267": "glm4",  # zai-org/GLM-4.7-Flash
}

# tokenization_chatglm.py of THUDM/chatglm3-6b (SPTokenizer.__init__): specials after the sp vocab
CHATGLM3_SPECIALS = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop",
                     "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]

# base.py SentencePieceTokenTypes / gguf.TokenType values
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def _read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ================================================================ hparams

def load_hparams(src):
    """base.py ModelBase.load_hparams: AutoConfig(...).to_dict() (config.json over the class defaults
    for the transformers-native model types), else the raw config.json (remote-code "chatglm")."""
    cfg = _read_json(os.path.join(src, "config.json"))
    defaults = HF_CONFIG_DEFAULTS.get(cfg.get("model_type"))
    if defaults is None:
        return dict(cfg)
    # transformers 4.57 does not know the transformers-5 "rope_parameters" dict: it is kept as an
    # extra attribute, next to the class defaults rope_theta 10000.0 / partial_rotary_factor 0.5
    hp = dict(defaults)
    hp.update(cfg)
    return hp


def find_hparam(hp, keys, optional=False):
    """base.py ModelBase.find_hparam: the first key present."""
    for k in keys:
        if k in hp:
            return hp[k]
    if optional:
        return None
    raise KeyError(f"could not find any of: {keys}")


class Model:
    """What base.py TextModel.__init__ derives from the hparams."""

    def __init__(self, src, outtype):
        self.src = Path(src)
        self.hparams = load_hparams(src)
        archs = self.hparams.get("architectures") or []
        self.hf_arch = archs[0] if archs else None  # base.py get_model_architecture
        if self.hf_arch not in MODEL_CLASS:
            raise NotImplementedError(f"Architecture {self.hf_arch!r} not supported!")
        self.cls = MODEL_CLASS[self.hf_arch]
        self.arch = GGUF_ARCH[self.cls]
        self.ftype = FTYPES[outtype]
        self.block_count = find_hparam(self.hparams, ["n_layers", "num_hidden_layers", "n_layer", "num_layers"])
        # TextModel.__init__: rope_parameters, with the top-level keys mirrored into it
        self.rope_parameters = dict(self.hparams.get("rope_parameters", self.hparams.get("rope_scaling")) or {})
        rope_theta = find_hparam(self.hparams, ["global_rope_theta", "rope_global_theta", "rope_theta_global",
                                                "rope_theta", "rotary_emb_base"], optional=True)
        prf = find_hparam(self.hparams, ["partial_rotary_factor", "rope_pct", "rope_percent"], optional=True)
        if "rope_theta" not in self.rope_parameters and rope_theta is not None:
            self.rope_parameters["rope_theta"] = rope_theta
        if "partial_rotary_factor" not in self.rope_parameters and prf is not None:
            self.rope_parameters["partial_rotary_factor"] = prf


# ================================================================ tensors

def filter_tensor_name(model, name):
    """ChatGLMModel.filter_tensors -> TextModel.filter_tensors -> ModelBase.filter_tensors.
    Returns the name the converter keeps, or None when it drops the tensor."""
    if model.cls == "ChatGLMModel":
        if name.endswith(".rotary_pos_emb.inv_freq"):
            return None
        name = name.removeprefix("transformer.")
    # TextModel.filter_tensors: multimodal parts are skipped
    if name.startswith(("mlp", "vit.", "vpm.", "siglip2.", "conformer.", "merger.", "resampler.", "sound_encoder.",
                        "sound_projection.", "speech_embeddings.")) \
            or any(s in name for s in ("visual.", "vision.", "audio.", "talker.", "vision_", "audio_", "token2wav.",
                                       "code2wav.", "projector.", "pre_mm_projector_norm", "image_newline",
                                       "view_seperator", "patch_embed", "patch_embedding", "patch_merger.",
                                       "patch_merge_mlp.", "model.connector.")):
        return None
    if name.endswith("e_score_correction_bias"):  # ModelBase.filter_tensors
        name = name.replace("e_score_correction_bias", "e_score_correction.bias")
    if "language_model." in name:
        name = name.replace("language_model.", "")
    return name


def ordered_tensors(model, ck):
    """ModelBase.index_tensors order: the weight files sorted by name (from the index's weight_map when
    there is one), and inside each safetensors file the tensors sorted by name (SafetensorsLocal);
    inside a .bin, torch.load's order (glmcpu's reader keeps the pickle's order)."""
    by_file = {}
    for name, t in ck.tensors.items():
        by_file.setdefault(os.path.basename(t.path), []).append(name)
    out = []
    for part in sorted(by_file):
        names = by_file[part]
        if part.endswith(".safetensors"):
            names = sorted(names)
        for name in names:
            new = filter_tensor_name(model, name)
            if new is not None:
                out.append((new, ck.tensors[name]))
    return out


def map_tensor_name(model, name):
    """ModelBase.map_tensor_name with gguf.TensorNameMap(arch, block_count), suffixes .weight/.bias."""
    for suffix in ("", ".weight", ".bias"):
        if suffix and not name.endswith(suffix):
            continue
        base = name[: len(name) - len(suffix)] if suffix else name
        m = re.search(r"\.(\d+)\.", base + ".")
        bid = int(m.group(1)) if m else None
        key = base.replace(f".{bid}.", ".{bid}.", 1) if bid is not None else base
        if key.endswith(f".{bid}") and bid is not None:
            key = key[: -len(str(bid))] + "{bid}"
        target = TENSOR_MAP.get(key)
        if target is None or (bid is not None and bid >= model.block_count):
            continue
        if ARCH_ONLY.get(target, model.arch) != model.arch:
            continue
        return target.format(bid=bid) + suffix
    raise ValueError(f"Can not map tensor {name!r}")


def source_array(t):
    """ModelBase.prepare_tensors: torch f16/f32 are kept, every other dtype (bf16 ...) becomes f32."""
    raw = t.raw()
    if t.st_dtype == "F32":
        return np.ascontiguousarray(raw, dtype=np.float32)
    if t.st_dtype == "F16":
        return np.ascontiguousarray(raw).view(np.float16)
    return t.rows_f32()


def tensor_qtype(model, new_name, n_dims):
    """ModelBase.prepare_tensors: which GGML type a tensor gets (tensor_force_quant is False here)."""
    if n_dims <= 1 or new_name.endswith("_norm.weight"):
        return gguf.GGMLQuantizationType.F32
    if new_name[-7:] not in (".weight", ".lora_a", ".lora_b"):
        return gguf.GGMLQuantizationType.F32
    # (the always-F32 list: ffn_gate_inp, pos_embd, token_types, ssm_conv1d ... : none in GLM models)
    return QTYPE_OF_FTYPE[model.ftype]


def add_tensors(model, w):
    """ModelBase.prepare_tensors: every tensor, in order, through modify_tensors (a plain rename for
    ChatGLMModel and Glm4Model: no permutation, split or fusion) and gguf.quants.quantize."""
    ck = Checkpoint(model.src)
    for name, t in ordered_tensors(model, ck):
        if name.endswith((".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")):
            continue
        data = source_array(t)
        new_name = map_tensor_name(model, name)
        qtype = tensor_qtype(model, new_name, len(data.shape))
        try:
            out = gguf.quants.quantize(data, qtype)
        except gguf.QuantError:  # row length not a multiple of the block: "falling back to F16"
            qtype = gguf.GGMLQuantizationType.F16
            out = gguf.quants.quantize(data, qtype)
        w.add_tensor(new_name, out, raw_dtype=qtype)


# ================================================================ general.* metadata

def add_general_metadata(model, w):
    """ModelBase.prepare_metadata: gguf.Metadata.load + size label + set_type + set_gguf_meta_model."""
    total, shared, expert, n_expert = w.get_total_parameter_count()
    md = gguf.Metadata.load(None, model.src, None, total)
    # gguf-py 0.19.0 as vendored in llama.cpp also takes generation_config "repetition_penalty"
    # (metadata.py Metadata.load); the PyPI 0.19.0 build does not, so apply it here.
    gen = gguf.Metadata.load_generation_config(model.src)
    if gen and "penalty_repeat" not in gen and "repetition_penalty" in gen:
        md.sampling_penalty_repeat = gen["repetition_penalty"]
    if md.name is None:
        md.name = model.src.name
    if md.size_label is None and total > 0:
        md.size_label = gguf.size_label(total, shared, expert, n_expert)
    w.add_type(gguf.GGUFType.MODEL)  # ModelBase.set_type
    md.set_gguf_meta_model(w)


# ================================================================ model parameters

def set_gguf_parameters(model, w):
    hp = model.hparams
    if model.cls == "ChatGLMModel":  # chatglm.py ChatGLMModel.set_gguf_parameters (no super() call)
        n_embed = hp.get("hidden_size", hp.get("n_embed"))
        n_head = hp.get("n_head", hp.get("num_attention_heads"))
        n_head_kv = hp.get("multi_query_group_num", hp.get("num_key_value_heads", n_head))
        w.add_context_length(hp.get("seq_length", n_embed))
        w.add_embedding_length(n_embed)
        w.add_feed_forward_length(hp.get("ffn_hidden_size", hp.get("intermediate_size", 4 * n_embed)))
        w.add_block_count(model.block_count)
        w.add_head_count(n_head)
        w.add_head_count_kv(n_head_kv)
        w.add_layer_norm_rms_eps(hp.get("layernorm_epsilon", 1e-5))
        w.add_file_type(model.ftype)
        rope_dim = hp["attention_dim"] if "attention_dim" in hp else hp["hidden_size"] // hp["num_attention_heads"]
        w.add_rope_dimension_count(int(rope_dim * model.rope_parameters.get("partial_rotary_factor", 0.5)))
        w.add_add_bos_token(False)
        rope_freq = 10000
        if "rope_ratio" in hp:
            rope_freq = rope_freq * hp["rope_ratio"]
        w.add_rope_freq_base(rope_freq)
        return
    # glm.py Glm4Model.set_gguf_parameters = base.py TextModel.set_gguf_parameters + rope dimension
    w.add_block_count(model.block_count)
    if (n_ctx := find_hparam(hp, ["max_position_embeddings", "n_ctx", "n_positions", "max_length",
                                  "max_sequence_length", "model_max_length"], optional=True)) is not None:
        w.add_context_length(n_ctx)
    if (n_embd := find_hparam(hp, ["hidden_size", "n_embd", "dim"], optional=True)) is not None:
        w.add_embedding_length(n_embd)
    if (n_ff := find_hparam(hp, ["prefix_dense_intermediate_size", "dense_intermediate_size", "intermediate_size",
                                 "n_inner", "hidden_dim"], optional=True)) is not None:
        w.add_feed_forward_length(n_ff)
    if (n_head := find_hparam(hp, ["num_attention_heads", "n_head", "n_heads"], optional=True)) is not None:
        w.add_head_count(n_head)
    if (n_head_kv := find_hparam(hp, ["num_key_value_heads", "n_kv_heads"], optional=True)) is not None:
        w.add_head_count_kv(n_head_kv)
    if hp.get("is_causal") is False:
        w.add_causal_attention(False)
    rope_params = model.rope_parameters.get("full_attention", model.rope_parameters)
    rope_type = rope_params.get("rope_type")
    if rope_type is not None and rope_type in ("linear", "yarn", "su", "longrope", "dynamic", "llama3"):
        raise NotImplementedError(f"rope_type {rope_type!r} is not mirrored")
    # any other rope_type (transformers-5 configs say "default"): "Unknown RoPE type" warning, no key
    if "mrope_section" in model.rope_parameters:
        raise NotImplementedError("M-RoPE is not mirrored")
    if (rope_theta := rope_params.get("rope_theta")) is not None:
        w.add_rope_freq_base(rope_theta)
    if (f_rms_eps := find_hparam(hp, ["rms_norm_eps", "norm_eps"], optional=True)) is not None:
        w.add_layer_norm_rms_eps(f_rms_eps)
    if (f_norm_eps := find_hparam(hp, ["layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"], optional=True)) is not None:
        w.add_layer_norm_eps(f_norm_eps)
    if find_hparam(hp, ["num_local_experts", "num_experts", "n_routed_experts", "num_experts_per_tok",
                        "num_experts_per_token", "top_k_experts", "n_group", "topk_group"], optional=True) is not None:
        raise NotImplementedError("MoE keys are not mirrored")
    if (head_dim := hp.get("head_dim")) is not None:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_file_type(model.ftype)
    if (rope_dim := hp.get("head_dim")) is None:
        rope_dim = hp["hidden_size"] // hp["num_attention_heads"]
    w.add_rope_dimension_count(int(rope_dim * model.rope_parameters.get("partial_rotary_factor", 0.5)))


# ================================================================ tokenizer: special vocab

class SpecialVocab:
    """gguf-py/gguf/vocab.py SpecialVocab as vendored with the converter (the PyPI 0.19.0 build differs:
    no ByteLevel post-processor rule, no normalizer flags, another TemplateProcessing/add_* rule)."""

    def __init__(self, path, load_merges=False, n_vocab=None):
        self.special_token_ids = {}
        self.add_special_token = {}
        self.n_vocab = n_vocab
        self.load_merges = load_merges
        self.merges = []
        self.chat_template = None
        self.normalizer_lowercase = None
        self.normalizer_strip_accents = None
        self.special_token_types = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
        path = Path(path)
        self._try_load_from_tokenizer_json(path)
        self._try_load_from_config_json(path)
        if self.load_merges and not self.merges:
            self._try_load_merges_txt(path)

    def add_to_gguf(self, w):
        if self.merges:
            w.add_token_merges(self.merges)
        for typ, tokid in self.special_token_ids.items():
            getattr(w, f"add_{typ}_token_id")(tokid)
        for typ, value in self.add_special_token.items():
            getattr(w, f"add_add_{typ}_token")(value)
        if self.chat_template is not None:
            w.add_chat_template(self.chat_template)
        if self.normalizer_lowercase is not None:
            w.add_bool("tokenizer.ggml.normalizer.lowercase", self.normalizer_lowercase)
        if self.normalizer_strip_accents is not None:
            w.add_bool("tokenizer.ggml.normalizer.strip_accents", self.normalizer_strip_accents)

    def _set_special_token(self, typ, tid):
        if not isinstance(tid, int):
            return
        if tid < 0:
            raise ValueError(f"invalid value for special token type {typ}: {tid}")
        if self.n_vocab is None or tid < self.n_vocab:
            if typ not in self.special_token_ids:  # never overrides an earlier source
                self.special_token_ids[typ] = tid
            return
        # out of range: the converter logs a warning and skips it

    def _try_load_merges_txt(self, path):
        f = path / "merges.txt"
        if not f.is_file():
            return
        lines = f.read_text(encoding="utf-8").splitlines()
        if lines and lines[0].strip().startswith("#"):
            lines = lines[1:]
        merges = []
        for line in lines:
            parts = line.strip().split(None, 3)
            if len(parts) == 2:
                merges.append(f"{parts[0]} {parts[1]}")
        self.merges = merges

    def _parse_normalizer(self, normalizer):
        typ = normalizer.get("type")
        if typ == "Lowercase":
            self.normalizer_lowercase = True
        elif typ == "StripAccents":
            self.normalizer_strip_accents = True
        elif typ == "BertNormalizer":
            if "lowercase" in normalizer:
                self.normalizer_lowercase = normalizer["lowercase"]
            if "strip_accents" in normalizer:
                self.normalizer_strip_accents = normalizer["strip_accents"]
        elif typ == "Sequence":
            for n in normalizer.get("normalizers", []):
                self._parse_normalizer(n)

    def _try_load_from_tokenizer_json(self, path):
        tokenizer = None
        if (path / "tokenizer.json").is_file():
            tokenizer = _read_json(path / "tokenizer.json")
            if self.load_merges:
                merges = tokenizer.get("model", {}).get("merges")
                if isinstance(merges, list) and merges:
                    if isinstance(merges[0], str):
                        self.merges = merges
                    elif isinstance(merges[0], list) and len(merges[0]) == 2 and isinstance(merges[0][0], str):
                        # pair form (transformers >= 4.45): spaces inside a part become U+0120 + 256
                        self.merges = [" ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part)
                                                for part in pair) for pair in merges]
                    else:
                        raise ValueError("Unknown tokenizer merges format")
            if normalizer := tokenizer.get("normalizer"):
                self._parse_normalizer(normalizer)
            added_tokens = tokenizer.get("added_tokens", {})
        else:
            added_tokens = {}
        tc = _read_json(path / "tokenizer_config.json") if (path / "tokenizer_config.json").is_file() else None
        if tokenizer:
            special_bos = (tc or {}).get("bos_token")
            special_cls = (tc or {}).get("cls_token")
            special_eos = (tc or {}).get("eos_token")
            special_sep = (tc or {}).get("sep_token")
            if not special_bos and special_cls and tc:
                tc["bos_token"] = special_bos = special_cls
            if not special_eos and special_sep and tc:
                tc["eos_token"] = special_eos = special_sep
            if post_processor := tokenizer.get("post_processor"):
                for processor in post_processor.get("processors", [post_processor]):
                    ptype = processor.get("type")
                    if ptype == "ByteLevel":
                        self.add_special_token.setdefault("bos", False)
                        self.add_special_token.setdefault("eos", False)
                    elif ptype == "RobertaProcessing":
                        self.add_special_token["bos"] = True
                        self.add_special_token["eos"] = True
                        self.add_special_token["sep"] = True
                        if not special_cls and tc:
                            special_cls = processor.get("cls", [special_bos])[0]
                            tc["cls_token"] = special_cls
                        if not special_sep and tc:
                            special_sep = processor.get("sep", [special_eos])[0]
                            tc["sep_token"] = special_sep
                    elif ptype == "TemplateProcessing":
                        self._template_processing(processor, tc, special_bos, special_cls, special_eos, special_sep)
        if not tc:
            return
        alt = None
        if (path / "chat_template.jinja").is_file():
            alt = (path / "chat_template.jinja").read_text(encoding="utf-8")
            extra = sorted((path / "additional_chat_templates").glob("*.jinja"))  # glob order: not mirrored
            if extra:
                raise NotImplementedError("additional_chat_templates/ is not mirrored")
        elif (path / "chat_template.json").is_file():
            alt = _read_json(path / "chat_template.json").get("chat_template")
        chat_template = tc.get("chat_template", alt)
        if chat_template is None or isinstance(chat_template, (str, list)):
            self.chat_template = chat_template
        for typ in self.special_token_types:
            add_entry = tc.get(f"add_{typ}_token")
            if isinstance(add_entry, bool) and typ not in self.add_special_token:
                self.add_special_token[typ] = add_entry  # the post-processor wins on a mismatch
            entry = tc.get(f"{typ}_token")
            if isinstance(entry, str):
                content = entry
            elif isinstance(entry, dict) and isinstance(entry.get("content"), str):
                content = entry["content"]
            else:
                continue
            tid = next((at.get("id") for at in added_tokens if at.get("content") == content), None)
            self._set_special_token(typ, tid)

    def _template_processing(self, processor, tc, special_bos, special_cls, special_eos, special_sep):
        """The crude TemplateProcessing parse of vocab.py (only the parts that set flags/tokens)."""
        single = processor.get("single", [])
        pair = processor.get("pair", [])
        special_first = special_last = None
        if len(single) > 1:
            if special_first := single[0].get("SpecialToken", {}).get("id"):
                if not tc:
                    special_bos = special_first
                elif special_first not in (special_bos, special_cls):
                    if not special_bos:
                        tc["bos_token"] = special_bos = special_first
                    if not special_cls:
                        tc["cls_token"] = special_cls = special_first
                self.add_special_token["bos"] = special_first in (special_bos, special_cls)
            if special_last := single[-1].get("SpecialToken", {}).get("id"):
                if not tc:
                    special_eos = special_last
                elif special_last != special_eos:
                    if "eot" not in self.special_token_types:
                        self.special_token_types = tuple(self.special_token_types) + ("eot",)
                        tc["eot_token"] = special_eos
                    elif "eom" not in self.special_token_types:
                        self.special_token_types = tuple(self.special_token_types) + ("eom",)
                        tc["eom_token"] = special_eos
                    tc["eos_token"] = special_eos = special_last
                self.add_special_token["eos"] = special_last == special_eos
        if pair:
            seq_start = 1 if special_first and pair[0].get("SpecialToken", {}).get("id") == special_first else 0
            seq_stop = -1 if special_last and pair[-1].get("SpecialToken", {}).get("id") == special_last else None
            mid = pair[slice(seq_start, seq_stop)]
            if mid and mid[0].get("Sequence", {}).get("id") == "A" and mid[-1].get("Sequence", {}).get("id") == "B":
                mid = mid[1:-1]
                if mid:
                    add_sep = False
                    if e := mid[0].get("SpecialToken", {}).get("id"):
                        if e in (special_sep, special_eos) and not special_last:
                            add_sep = True
                    if len(mid) == 2 and (e := mid[1].get("SpecialToken", {}).get("id")):
                        if e in (special_sep, special_eos):
                            add_sep = True
                    self.add_special_token["sep"] = add_sep
                    if add_sep and not special_sep and tc:
                        tc["sep_token"] = special_eos

    def _try_load_from_config_json(self, path):
        if not (path / "config.json").is_file():
            return
        config = _read_json(path / "config.json")
        for typ in self.special_token_types:
            tid = config.get(f"{typ}_token_id")
            if tid is None and "text_config" in config:
                tid = config["text_config"].get(f"{typ}_token_id")
            self._set_special_token(typ, tid)


# ================================================================ tokenizer: GPT-2 BPE (tokenizer.json)

class FastTokenizer:
    """The parts of transformers' PreTrainedTokenizerFast (AutoTokenizer on tokenizer.json +
    tokenizer_config.json) that base.py get_vocab_base reads, on the `tokenizers` library."""

    def __init__(self, src):
        from tokenizers import Tokenizer
        path = Path(src) / "tokenizer.json"
        if not path.is_file():
            # ChatGLMModel.set_vocab / get_vocab_base read `tokenizer.vocab`, which only a fast
            # tokenizer has (remote-code ChatGLM2 sentencepiece / GLM-4 tiktoken tokenizers fail there)
            raise NotImplementedError(f"{src}: no tokenizer.json: the converter needs a fast tokenizer here")
        self.tok = Tokenizer.from_file(str(path))
        tj = _read_json(path)
        self.added = {at["id"]: at for at in tj.get("added_tokens", [])}  # added_tokens_decoder
        tc_path = Path(src) / "tokenizer_config.json"
        tc = _read_json(tc_path) if tc_path.is_file() else {}
        # transformers would append tokenizer_config tokens that tokenizer.json lacks: not mirrored
        for k, v in (tc.get("added_tokens_decoder") or {}).items():
            at = self.added.get(int(k))
            if at is None or at["content"] != v["content"] or at["special"] != v["special"] \
                    or at["normalized"] != v["normalized"]:
                raise NotImplementedError(f"tokenizer_config added token {k} differs from tokenizer.json")
        self.vocab = self.tok.get_vocab(with_added_tokens=True)  # tokenizer.vocab / get_vocab()
        for key in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"):
            content = tc.get(key)
            content = content.get("content") if isinstance(content, dict) else content
            if isinstance(content, str) and content not in self.vocab:
                raise NotImplementedError(f"tokenizer_config {key} {content!r} is not in tokenizer.json")

    def get_added_vocab(self):
        return {at["content"]: i for i, at in sorted(self.added.items())}

    def encode(self, text, add_special_tokens=True):
        return self.tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids):
        return self.tok.decode(ids, skip_special_tokens=False)


def get_vocab_base_pre(tokenizer):
    """base.py TextModel.get_vocab_base_pre: sha256 of str(ids of CHKTXT) -> pre-tokenizer name."""
    chkhsh = sha256(str(tokenizer.encode(CHKTXT)).encode()).hexdigest()
    res = PRE_BY_HASH.get(chkhsh)
    if res is None:
        raise NotImplementedError(f"BPE pre-tokenizer was not recognized (chkhsh {chkhsh})")
    return res


def tokenizer_pre_name(tokenizer_dir):
    """The tokenizer.ggml.pre the converter computes for the (full) tokenizer.json in tokenizer_dir."""
    return get_vocab_base_pre(FastTokenizer(tokenizer_dir))


def does_token_look_special(token):
    """base.py TextModel.does_token_look_special."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<｜") and token.endswith("｜>"))
            or (token.startswith("<unused") and token.endswith(">")))


def get_vocab_base(model, tokenizer, tokenizer_pre):
    """base.py TextModel.get_vocab_base: tokens and types for ids 0..vocab_size-1."""
    vocab_size = model.hparams.get("vocab_size", len(tokenizer.vocab))
    assert max(tokenizer.vocab.values()) < vocab_size  # the converter never truncates a vocabulary
    tokpre = tokenizer_pre if tokenizer_pre is not None else get_vocab_base_pre(tokenizer)
    reverse_vocab = {i: tok for tok, i in tokenizer.vocab.items()}
    added_vocab = tokenizer.get_added_vocab()
    tokens, toktypes = [], []
    for i in range(vocab_size):
        if i not in reverse_vocab:
            tokens.append(f"[PAD{i}]")
            toktypes.append(UNUSED)
            continue
        token = reverse_vocab[i]
        if token in added_vocab:
            at = tokenizer.added[i]
            if not at["normalized"]:  # "pre-normalized": encoded and decoded back
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
            if at["special"] or does_token_look_special(token):
                toktypes.append(CONTROL)
            else:
                token = token.replace("\u2581", " ")
                toktypes.append(USER_DEFINED)
        else:
            toktypes.append(NORMAL)
        tokens.append(token)
    return tokens, toktypes, tokpre


def set_vocab_gpt2(model, w, tokenizer_pre):
    """chatglm.py ChatGLMModel.set_vocab (non-ChatGLM3 branch) and glm.py Glm4Model.set_vocab."""
    hp = model.hparams
    if model.cls == "ChatGLMModel" and "vocab_size" not in hp:
        # hparams.get("padded_vocab_size", hparams["vocab_size"]) evaluates hparams["vocab_size"] first
        raise KeyError("vocab_size")
    tokenizer = FastTokenizer(model.src)
    if model.cls == "ChatGLMModel":
        vocab_size = hp.get("padded_vocab_size", hp["vocab_size"])
        assert max(tokenizer.vocab.values()) < vocab_size
    tokens, toktypes, tokpre = get_vocab_base(model, tokenizer, tokenizer_pre)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(tokpre)
    w.add_token_list(tokens)
    w.add_token_types(toktypes)
    sv = SpecialVocab(model.src, load_merges=True)
    added = tokenizer.get_added_vocab()
    # each only if no earlier source (tokenizer_config, config.json) set it
    sv._set_special_token("eos", added["<|endoftext|>"])
    sv._set_special_token("eot", added["<|user|>"])
    sv._set_special_token("unk", added["<|endoftext|>"])
    if model.cls == "Glm4Model":
        sv._set_special_token("bos", added["<|endoftext|>"])
    sv.add_to_gguf(w)


# ================================================================ tokenizer: ChatGLM3 sentencepiece

def set_vocab_chatglm3(model, w):
    """chatglm.py ChatGLMModel.set_vocab_chatglm3 over THUDM/chatglm3-6b's tokenization_chatglm.py
    (SPTokenizer / ChatGLMTokenizer), with the sentencepiece model read directly."""
    from sentencepiece import SentencePieceProcessor
    sp = SentencePieceProcessor(model_file=str(model.src / "tokenizer.model"))
    n_sp = sp.vocab_size()
    index_special = {n_sp + i: t for i, t in enumerate(CHATGLM3_SPECIALS)}
    n_words = n_sp + len(CHATGLM3_SPECIALS)  # ChatGLMTokenizer.vocab_size

    def convert_id_to_token(index):  # SPTokenizer.convert_id_to_token
        if index in index_special:
            return index_special[index]
        if index in (sp.eos_id(), sp.bos_id(), sp.unk_id()) or index < 0 or index > n_sp:
            return ""
        return sp.id_to_piece(index)

    get_vocab = {convert_id_to_token(i): i for i in range(n_words)}  # ChatGLMTokenizer.get_vocab (+ added)
    tc_path = model.src / "tokenizer_config.json"
    for k, v in (_read_json(tc_path).get("added_tokens_decoder", {}) if tc_path.is_file() else {}).items():
        get_vocab[v["content"]] = int(k)
    vocab_size = model.hparams.get("padded_vocab_size", len(get_vocab))
    assert max(get_vocab.values()) < vocab_size

    tokens, scores, toktypes = [], [], []
    for token_id in range(vocab_size):
        piece = convert_id_to_token(token_id)
        if token_id == 0:
            piece = "<unk>"
        elif token_id == 1:
            piece = "<bos>"
        elif token_id == 2:
            piece = "<eos>"
        text = piece.encode("utf-8")
        score = 0.0
        if len(piece) != 0 and token_id < n_sp:
            score = sp.get_score(token_id)
        if token_id >= n_sp:
            if piece in CHATGLM3_SPECIALS:
                toktype = CONTROL
            elif len(piece) == 0:
                text = f"[PAD{token_id}]".encode("utf-8")
                toktype = UNUSED
            else:
                toktype = USER_DEFINED
        else:
            toktype = NORMAL
            if sp.is_unknown(token_id):
                toktype = UNKNOWN
            elif sp.is_control(token_id):
                toktype = CONTROL
            elif sp.is_unused(token_id):
                toktype = UNUSED
            elif sp.is_byte(token_id):
                toktype = BYTE
        tokens.append(text)
        scores.append(score)
        toktypes.append(toktype)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("chatglm-spm")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(toktypes)
    SpecialVocab(model.src, n_vocab=len(tokens)).add_to_gguf(w)


def set_vocab(model, w, tokenizer_pre):
    if model.cls == "ChatGLMModel" and "THUDM/chatglm3-6b" in model.hparams.get("_name_or_path", ""):
        set_vocab_chatglm3(model, w)
    else:
        set_vocab_gpt2(model, w, tokenizer_pre)


# ================================================================ the file

def write_reference_gguf(src_dir, out_path, outtype, tokenizer_pre=None):
    """Write the GGUF convert_hf_to_gguf.py writes for `src_dir --outtype <outtype>`.

    tokenizer_pre: the tokenizer.ggml.pre value to use instead of recognising the pre-tokenizer from
    the tokenizer's ids (needed when the tokenizer.json is a cut-down copy whose ids no longer hash
    to a known value: pass tokenizer_pre_name(<dir with the full tokenizer.json>))."""
    if outtype not in FTYPES:
        raise ValueError(f"outtype must be one of {sorted(FTYPES)}")
    model = Model(src_dir, outtype)
    w = gguf.GGUFWriter(path=None, arch=model.arch)  # writes general.architecture first
    # ModelBase.write(): prepare_tensors, then prepare_metadata (general.*, model keys,
    # quantization version, tokenizer), then header + KV + tensor data
    add_tensors(model, w)
    add_general_metadata(model, w)
    set_gguf_parameters(model, w)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    set_vocab(model, w, tokenizer_pre)
    w.write_header_to_file(path=Path(out_path))
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(out_path)


# ================================================================ converter inputs for the golden cases

def tiny_checkpoint(case, dest):
    """Build in directory ``dest`` the converter input for golden ``case``: the golden checkpoint
    (config.json, weights, generation_config.json; not expected.npz nor config.as_saved_*) plus the
    real tokenizer files cut down to the tiny model's vocabulary, exactly as
    /work/data/gguf-ref/make_workdirs.py made the directories the real converter ran on
    (its shrink_spm, shrink_tokenizer_json, remap_tokenizer_config, copy_golden; the release's
    tokenization_chatglm.py is left out: write_reference_gguf does not import it).

    ChatGLM3: tokenizer.model = the first 300 sentencepiece pieces (trainer_spec.vocab_size 300),
    the specials [MASK].. follow at 300..308. GLM-4 vocabulary (tokenizer.json): ids 0..299 (256
    bytes + the first 44 merges), merges restricted to kept tokens, the 14 specials moved to 300..313
    (the ids the golden configs use); tokenizer_config.json's added_tokens_decoder renumbered the same.

    Returns (dest, tokenizer_pre): the tokenizer.ggml.pre name the converter gives the real, full
    tokenizer (None for the sentencepiece path), to pass to write_reference_gguf.
    Cases: chatglm3-tiny, glm4-hf-tiny, glm-edge-tiny-bf16, glm4-0414-tiny-bf16-sharded."""
    import shutil
    here = os.path.dirname(os.path.abspath(__file__))
    shared = os.path.join(os.path.dirname(os.path.dirname(here)), "shared")  # as tests/helpers.py
    golden_dir, tok_dir = os.path.join(shared, "golden", case), os.path.join(shared, "tokenizers")
    tokenizer_configs = {"glm4-hf-tiny": "tokenizer_config.json", "glm-edge-tiny-bf16": "tokenizer_config.json",
                         "glm4-0414-tiny-bf16-sharded": "tokenizer_config.0414.json"}
    if case != "chatglm3-tiny" and case not in tokenizer_configs:
        raise ValueError(f"no tokenizer recipe for golden case {case!r}")
    dest = str(dest)
    # copy_golden
    if os.path.isdir(dest):
        shutil.rmtree(dest)
    os.makedirs(dest)
    for f in sorted(os.listdir(golden_dir)):
        if f == "expected.npz" or f.startswith("config.as_saved"):
            continue
        shutil.copyfile(os.path.join(golden_dir, f), os.path.join(dest, f))
    keep = 300  # K_SPM = K_GLM4
    if case == "chatglm3-tiny":
        _shrink_spm(os.path.join(tok_dir, "chatglm2-chatglm3", "tokenizer.model"),
                    os.path.join(dest, "tokenizer.model"), keep)
        _remap_tokenizer_config(os.path.join(tok_dir, "chatglm2-chatglm3", "tokenizer_config.chatglm3.json"),
                                os.path.join(dest, "tokenizer_config.json"), 64789, keep)
        return dest, None
    full = os.path.join(tok_dir, "glm-4-hf")
    _shrink_tokenizer_json(os.path.join(full, "tokenizer.json"), os.path.join(dest, "tokenizer.json"), keep, 151329)
    _remap_tokenizer_config(os.path.join(full, tokenizer_configs[case]), os.path.join(dest, "tokenizer_config.json"),
                            151329, keep)
    return dest, _full_tokenizer_pre(full, tokenizer_configs[case])


_FULL_PRE = {}


def _full_tokenizer_pre(full_dir, tokenizer_config_name):
    """tokenizer_pre_name of the real tokenizer.json next to that tokenizer config (cached: the full
    GLM-4 tokenizer.json is 20 MB), in a directory laid out as make_workdirs.py's _full/<case>."""
    import tempfile
    key = (full_dir, tokenizer_config_name)
    if key not in _FULL_PRE:
        with tempfile.TemporaryDirectory() as d:
            os.symlink(os.path.join(full_dir, "tokenizer.json"), os.path.join(d, "tokenizer.json"))
            os.symlink(os.path.join(full_dir, tokenizer_config_name), os.path.join(d, "tokenizer_config.json"))
            _FULL_PRE[key] = tokenizer_pre_name(d)
    return _FULL_PRE[key]


def _pb_varint(buf, i):
    shift = val = 0
    while True:
        b = buf[i]
        i += 1
        val |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return val, i


def _pb_enc_varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _pb_fields(buf):
    """Top-level protobuf fields: (field number, wire type, the whole field's bytes, payload)."""
    i = 0
    while i < len(buf):
        start = i
        key, i = _pb_varint(buf, i)
        fn, wt = key >> 3, key & 7
        if wt == 0:
            payload, i = _pb_varint(buf, i)
        elif wt == 1:
            payload, i = buf[i:i + 8], i + 8
        elif wt == 2:
            n, i = _pb_varint(buf, i)
            payload, i = buf[i:i + n], i + n
        elif wt == 5:
            payload, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wt}")
        yield fn, wt, buf[start:i], payload


def _shrink_spm(src, dst, keep):
    """make_workdirs.shrink_spm: the first `keep` pieces of a sentencepiece ModelProto (field 1),
    trainer_spec (field 2) vocab_size (its field 4) set to `keep`, everything else as it is."""
    with open(src, "rb") as f:
        buf = f.read()
    out = bytearray()
    n_pieces = 0
    for fn, wt, raw, payload in _pb_fields(buf):
        if fn == 1:
            n_pieces += 1
            if n_pieces <= keep:
                out += raw
        elif fn == 2 and wt == 2:
            ts = bytearray()
            for fn2, wt2, raw2, _ in _pb_fields(payload):
                ts += (_pb_enc_varint(4 << 3) + _pb_enc_varint(keep)) if (fn2 == 4 and wt2 == 0) else raw2
            out += _pb_enc_varint((2 << 3) | 2) + _pb_enc_varint(len(ts)) + ts
        else:
            out += raw
    with open(dst, "wb") as f:
        f.write(bytes(out))
    return n_pieces


def _shrink_tokenizer_json(src, dst, keep, special0):
    """make_workdirs.shrink_tokenizer_json: ids < keep, merges of kept tokens whose result is kept,
    added tokens renumbered from special0 to keep."""
    t = _read_json(src)
    kept = {tok: i for tok, i in t["model"]["vocab"].items() if i < keep}
    assert len(kept) == keep
    merges = []
    for m in t["model"]["merges"]:
        a, b = m if isinstance(m, list) else m.split(" ", 1)
        if a in kept and b in kept and (a + b) in kept:
            merges.append(m)
    t["model"]["vocab"] = dict(sorted(kept.items(), key=lambda kv: kv[1]))
    t["model"]["merges"] = merges
    for at in t["added_tokens"]:
        assert at["id"] >= special0
        at["id"] = at["id"] - special0 + keep
    with open(dst, "w", encoding="utf-8") as f:
        json.dump(t, f, ensure_ascii=False, indent=2)
    return len(merges)


def _remap_tokenizer_config(src, dst, special0, new0):
    """make_workdirs.remap_tokenizer_config: added_tokens_decoder ids moved from special0 to new0."""
    tc = _read_json(src)
    if "added_tokens_decoder" in tc:
        tc["added_tokens_decoder"] = {str(int(k) - special0 + new0): v for k, v in tc["added_tokens_decoder"].items()}
    with open(dst, "w", encoding="utf-8") as f:
        json.dump(tc, f, ensure_ascii=False, indent=2)
