"""The tokenizer part of GGUF import and export: llama.cpp's ``tokenizer.*`` keys <-> the original
tokenizer file that a glmcpu model file stores (docs/FORMAT.md, ``tokenizer`` metadata).

  to_gguf(family, filename, data, config, chat_template, n_vocab, model_config=None)
      -> [(key, value, value_type)]   the keys llama.cpp's convert_hf_to_gguf.py writes for that family
                                      from the same tokenizer file, in its order
  from_gguf(fields, family) -> (filename, data, config, chat_template)
      the original-format tokenizer file rebuilt from a GGUF's tokenizer.* values, for the family's
      make_tokenizer; ``config`` is a tokenizer_config.json-like dict (HF-native families) or None

``value_type`` is GGUF's value type number (``gguf.GGUFValueType(value_type)``); arrays are ``ARRAY``
with a list whose element type the writer infers as the converter's ``add_array`` does (str -> STRING,
int -> INT32, float -> FLOAT32). ``write_keys(writer, keys)`` applies them to a ``gguf.GGUFWriter``.
The dict from_gguf takes: ``read_gguf_metadata(path)`` (a plain KV reader, well under a second for GLM-4's
vocabulary) or ``read_fields(gguf.GGUFReader(path))`` (same values; the reader needs ~20 s to open it).

What the converter (llama-cpp-python 0.3.36's vendored llama.cpp: conversion/chatglm.py, glm.py, base.py,
gguf-py/gguf/vocab.py) writes, per family:

  chatglm3   ChatGLMModel.set_vocab_chatglm3 (taken when _name_or_path contains THUDM/chatglm3-6b):
             model "llama", pre "chatglm-spm"; one token per id 0..n_vocab-1: the 64789 sentencepiece
             pieces with ids 0, 1, 2 renamed "<unk>", "<bos>", "<eos>" (the remote-code tokenizer has no
             text for them), their scores and types (UNKNOWN, CONTROL, BYTE, NORMAL); then [MASK] [gMASK]
             [sMASK] sop eop <|system|> <|user|> <|assistant|> <|observation|> (CONTROL, score 0); then
             "[PAD<id>]" (UNUSED, score 0) up to padded_vocab_size (65024). Special ids come from
             config.json only (eos 2, pad 0): tokenizer_config.json names tokens but has no added_tokens
             list to look them up in. add_bos_token false (set_gguf_parameters). No chat template.
  chatglm2   The current converter cannot convert ChatGLM2: its name sends it down the GPT-2 path,
             which stops on ``hparams["vocab_size"]`` (the config has only padded_vocab_size), and
             get_vocab_base would need a fast tokenizer (AutoTokenizer without trust_remote_code,
             ``tokenizer.vocab``). We write what set_vocab_chatglm3 gives for ChatGLM2's tokenizer
             (the same code over the same sentencepiece model): the same keys, with the 5 specials only.
  glm4       (remote-code GLM-4-9B, tiktoken tokenizer.model) The current converter cannot convert it
             either, for the same reasons. We write what its GLM-4 path wrote before it was folded
             into get_vocab_base, whose helpers (ChatGLMModel.bpe, token_bytes_to_string) are still in
             conversion/chatglm.py: model "gpt2"; pre by the converter's hash of the ids of its check
             text ("chatglm-bpe": the remote tokenizer adds [gMASK] <sop>); tokens = the ranks' bytes in
             GPT-2's byte-to-unicode form, the 14 specials (CONTROL) at 151329.., "[PAD<id>]" (UNUSED)
             up to padded_vocab_size (151552); merges = for every multi-byte token in rank order,
             bpe(ranks, token, max_rank=rank) joined by spaces (1072 of them have 3 to 7 parts, as the
             converter's assert allowed); eos = <|endoftext|>, eot = <|user|>, unk = <|endoftext|>,
             pad from config.json; the chat template of tokenizer_config.json; add_bos_token false.
  glm        GlmForCausalLM -> ChatGLMModel.set_vocab -> get_vocab_base: model "gpt2", pre by the hash
             ("glm4" for a ByteLevel post-processor, "chatglm-bpe" when it adds [gMASK] <sop>); tokens
             of tokenizer.json (added tokens CONTROL when special), "[PAD<id>]" up to vocab_size;
             merges of tokenizer.json; special ids by gguf.SpecialVocab (tokenizer_config's eos/pad
             tokens, the post-processor's add_bos/add_eos, config.json ids) then eos/eot/unk as for glm4;
             add_bos_token false unless the post-processor adds a bos.
  glm4-0414  Glm4ForCausalLM -> Glm4Model.set_vocab: as glm, plus bos = <|endoftext|>, and no
             add_bos_token of its own (only SpecialVocab's).

Rebuilding (from_gguf):

  chatglm2/3  A SentencePiece ModelProto serialized here (no protobuf dependency): the pieces before the
              specials (ids 1, 2 named back "<s>", "</s>"), their scores and types; trainer_spec and
              normalizer_spec are the fixed values of THUDM's tokenizer.model (BPE, byte_fallback,
              identity normalizer, add_dummy_prefix true, remove_extra_whitespaces false, unk/bos/eos
              0/1/2, no pad, and its training options, _SPM_TRAINER_SPEC below); the GGUF can only
              override add_dummy_prefix and remove_extra_whitespaces (tokenizer.ggml.add_space_prefix,
              .remove_extra_whitespaces). From the real 65024-token export the file is byte-identical.
  glm4        The tiktoken ranks file ("base64(bytes) rank" lines in rank order): byte-identical.
  glm, 0414   A tokenizer.json: BPE vocab and merges from the GGUF, added tokens from the CONTROL /
              USER_DEFINED ids, and GLM-4's fixed pre-tokenizer (Split on the GLM-4 regex + ByteLevel),
              ByteLevel decoder and post-processor (or [gMASK] <sop> TemplateProcessing when the GGUF
              says add_bos_token with bos [gMASK]), BPE with ignore_merges (tiktoken's rule, whichever
              of the two GLM-4 pre names the GGUF has); byte-identical to ../shared/tokenizers/glm-4-hf's.
              Added-token flags (lstrip, rstrip, single_word, normalized) are not in a GGUF: false.
              config: added_tokens_decoder, chat_template, clean_up_tokenization_spaces false, eos_token /
              pad_token (the texts of the GGUF's eos / padding ids), tokenizer_class.
  Token types UNUSED (and "[PAD<id>]" fillers typed USER_DEFINED, as older converters wrote them) are
  padding and dropped; every problem is a GlmcpuError naming the key.
"""
import base64
import copy
import hashlib
import json
import struct

from glmcpu.errors import GlmcpuError

# GGUF value types (GGUF's numbering, = gguf.GGUFValueType)
UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY = 4, 5, 6, 7, 8, 9
# token types: gguf.TokenType, identical to sentencepiece's ModelProto.SentencePiece.Type
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

K = "tokenizer.ggml."
MODEL, PRE, TOKENS, SCORES, TOKEN_TYPE, MERGES = (K + "model", K + "pre", K + "tokens", K + "scores",
                                                  K + "token_type", K + "merges")
ADD_BOS, ADD_EOS, ADD_SEP = K + "add_bos_token", K + "add_eos_token", K + "add_sep_token"
ADD_PREFIX, REMOVE_EXTRA_WS = K + "add_space_prefix", K + "remove_extra_whitespaces"
CHARSMAP = K + "precompiled_charsmap"
CHAT_TEMPLATE = "tokenizer.chat_template"
# gguf.SpecialVocab.add_to_gguf: the GGUFWriter method add_<type>_token_id exists for these (not for cls)
ID_KEYS = {"bos": K + "bos_token_id", "eos": K + "eos_token_id", "unk": K + "unknown_token_id",
           "sep": K + "seperator_token_id", "pad": K + "padding_token_id", "mask": K + "mask_token_id",
           "eot": K + "eot_token_id", "eom": K + "eom_token_id"}
ADD_KEYS = {"bos": ADD_BOS, "eos": ADD_EOS, "sep": ADD_SEP}  # GGUFWriter.add_add_<type>_token

# which converter path each family takes (module docstring)
PATHS = {"chatglm2": "spm", "chatglm3": "spm", "glm4": "tiktoken", "glm": "hf", "glm4-0414": "hf"}


def _path(family):
    if family not in PATHS:
        raise GlmcpuError(f"GGUF has no tokenizer form for family {family!r} (llama.cpp supports "
                          f"{', '.join(PATHS)})")
    return PATHS[family]


# ---------------------------------------------------------------- sentencepiece (ChatGLM2/3)

def _spm_specials(family):
    from glmcpu.tokenizer import GLM3_ROLES, GLM_SPECIAL
    return GLM_SPECIAL + (GLM3_ROLES if family == "chatglm3" else [])


def _varint(v):
    if v < 0:
        v += 1 << 64  # proto int32/int64: a negative value is its 64-bit two's complement
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _pb(num, kind, value):
    """One protobuf field: kind "v" varint, "s" length-delimited (str or bytes), "f" float32."""
    if kind == "v":
        return _varint(num << 3) + _varint(int(value))
    if kind == "f":
        return _varint(num << 3 | 5) + struct.pack("<f", value)
    if isinstance(value, str):
        value = value.encode("utf-8")
    return _varint(num << 3 | 2) + _varint(len(value)) + value


def pb_fields(buf):
    """(field number, wire type, value) of a serialized protobuf message (a reader for tests/tools)."""
    out, i = [], 0

    def varint(i):
        shift = val = 0
        while True:
            b = buf[i]
            i += 1
            val |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return val, i
    while i < len(buf):
        key, i = varint(i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, i = varint(i)
        elif wt == 1:
            val, i = buf[i:i + 8], i + 8
        elif wt == 2:
            n, i = varint(i)
            val, i = bytes(buf[i:i + n]), i + n
        elif wt == 5:
            val, i = struct.unpack("<f", buf[i:i + 4])[0], i + 4
        else:
            raise ValueError(f"protobuf wire type {wt}")
        out.append((num, wt, val))
    return out


# THUDM's ChatGLM2/ChatGLM3 tokenizer.model (sha256 e7dc4c39...), fields in number order as serialized.
# TrainerSpec: none of it is in a GGUF; kept as the official file has it (its training options included).
_SPM_TRAINER_SPEC = [
    (1, "s", "/mnt/vepfs/workspace/zxdu/new_tokenizer/llama.txt"),  # input
    (2, "s", "english_32k_bpe"),  # model_prefix
    (3, "v", 2),  # model_type BPE
    (4, "v", 32000),  # vocab_size (the training run's; the file has 64789 pieces)
    (6, "v", 0),  # self_test_sample_size
    (7, "s", ""),  # input_format
    (10, "f", 0.9999),  # character_coverage
    (11, "v", 0),  # input_sentence_size
    (14, "v", 1000000),  # seed_sentencepiece_size
    (15, "f", 0.75),  # shrinking_factor
    (16, "v", 80),  # num_threads
    (17, "v", 2),  # num_sub_iterations
    (18, "v", 4192),  # max_sentence_length
    (19, "v", 1),  # shuffle_input_sentence
    (20, "v", 16),  # max_sentencepiece_length
    (21, "v", 1),  # split_by_unicode_script
    (22, "v", 1),  # split_by_whitespace
    (23, "v", 1),  # split_by_number
    (24, "v", 0),  # treat_whitespace_as_suffix
    (25, "v", 1),  # split_digits
    (26, "v", 1),  # allow_whitespace_only_pieces
    (32, "v", 1),  # vocabulary_output_piece_score
    (33, "v", 1),  # hard_vocab_limit
    (34, "v", 0),  # use_all_vocab
    (35, "v", 1),  # byte_fallback
    (36, "s", ""),  # required_chars
    (40, "v", 0),  # unk_id
    (41, "v", 1),  # bos_id
    (42, "v", 2),  # eos_id
    (43, "v", -1),  # pad_id (none)
    (44, "s", " \u2047 "),  # unk_surface
    (45, "s", "<unk>"),  # unk_piece
    (46, "s", "<s>"),  # bos_piece
    (47, "s", "</s>"),  # eos_piece
    (48, "s", "<pad>"),  # pad_piece
    (49, "v", 1),  # train_extremely_large_corpus
    (50, "v", 0),  # enable_differential_privacy
    (51, "f", 0.0),  # differential_privacy_noise_level
    (52, "v", 0),  # differential_privacy_clipping_threshold
    (53, "s", ""),  # pretokenization_delimiter
]
# the names the converter gives ids 0..2, and the official pieces they stand for
_SPM_RENAMED = {0: ("<unk>", "<unk>"), 1: ("<bos>", "<s>"), 2: ("<eos>", "</s>")}


def _normalizer_spec(add_dummy_prefix, remove_extra_whitespaces):
    return b"".join([_pb(1, "s", "identity"), _pb(2, "s", b""), _pb(3, "v", int(add_dummy_prefix)),
                     _pb(4, "v", int(remove_extra_whitespaces)), _pb(6, "s", "")])


def build_sentencepiece_model(pieces, scores, types, add_dummy_prefix=True, remove_extra_whitespaces=False):
    """A serialized SentencePiece ModelProto with these pieces and ChatGLM2/3's fixed specs."""
    out = []
    for piece, score, t in zip(pieces, scores, types):
        body = _pb(1, "s", piece) + _pb(2, "f", score) + (_pb(3, "v", t) if t != NORMAL else b"")
        out.append(_pb(1, "s", body))
    out.append(_pb(2, "s", b"".join(_pb(*f) for f in _SPM_TRAINER_SPEC)))
    out.append(_pb(3, "s", _normalizer_spec(add_dummy_prefix, remove_extra_whitespaces)))
    return b"".join(out)


def _load_sp(data, what):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(bytes(data))
    except Exception as e:
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise GlmcpuError(f"{what} is not a valid sentencepiece model ({reason})") from None
    return sp


def _spm_to_gguf(family, data, config, chat_template, n_vocab, model_config):
    sp = _load_sp(data, "the tokenizer")
    n_sp = sp.vocab_size()
    specials = _spm_specials(family)
    if n_sp + len(specials) > n_vocab:
        raise GlmcpuError(f"the tokenizer has {n_sp + len(specials)} tokens but the model only {n_vocab} "
                          f"(padded_vocab_size); the tokenizer is not this model's")
    tokens, scores, types = [], [], []
    for i in range(n_vocab):
        if i < n_sp:
            piece = _SPM_RENAMED[i][0] if i in _SPM_RENAMED else sp.id_to_piece(i)
            t = NORMAL
            if sp.is_unknown(i):
                t = UNKNOWN
            elif sp.is_control(i):
                t = CONTROL
            elif sp.is_unused(i):
                t = UNUSED
            elif sp.is_byte(i):
                t = BYTE
            tokens.append(piece)
            scores.append(float(sp.get_score(i)))
            types.append(t)
        elif i - n_sp < len(specials):
            tokens.append(specials[i - n_sp])
            scores.append(0.0)
            types.append(CONTROL)
        else:
            tokens.append(f"[PAD{i}]")
            scores.append(0.0)
            types.append(UNUSED)
    kv = _KV()
    kv.put(ADD_BOS, False, BOOL)  # ChatGLMModel.set_gguf_parameters
    kv.put(MODEL, "llama", STRING)
    kv.put(PRE, "chatglm-spm", STRING)
    kv.put(TOKENS, tokens, ARRAY)
    kv.put(SCORES, scores, ARRAY)
    kv.put(TOKEN_TYPE, types, ARRAY)
    SpecialVocab(None, config, model_config, chat_template, n_vocab=len(tokens)).add_to(kv)
    return kv.items()


def _spm_from_gguf(family, f, tokens, types):
    scores = _float_list(f, SCORES, len(tokens))
    pre = f.get(PRE)
    if pre not in (None, "default", "chatglm-spm"):
        raise GlmcpuError(f"GGUF tokenizer: {PRE} is {pre!r}; a {family} SentencePiece tokenizer is written "
                          f"with 'chatglm-spm' (convert the model again with llama.cpp's convert_hf_to_gguf.py)")
    specials = _spm_specials(family)
    n = _find_block(tokens, types, specials)
    if n is None:
        raise GlmcpuError(f"GGUF tokenizer: {TOKENS} does not hold {family}'s special tokens "
                          f"{' '.join(specials)} (CONTROL) after the SentencePiece pieces; "
                          f"not a {family} tokenizer (check --family)")
    _check_padding(tokens, types, n + len(specials), family)
    for i, (gguf_name, piece) in _SPM_RENAMED.items():
        want = UNKNOWN if i == 0 else CONTROL
        if n <= i or types[i] != want or tokens[i] not in (gguf_name, piece):
            raise GlmcpuError(f"GGUF tokenizer: token {i} is {tokens[i] if i < n else None!r} (type "
                              f"{types[i] if i < n else None}), ChatGLM's SentencePiece model has {piece!r} there")
    pieces = [_SPM_RENAMED[i][1] if i in _SPM_RENAMED else tokens[i] for i in range(n)]
    bad = next((i for i in range(n) if types[i] not in (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE)), None)
    if bad is not None:
        raise GlmcpuError(f"GGUF tokenizer: {TOKEN_TYPE}[{bad}] = {types[bad]} is not a token type")
    if f.get(CHARSMAP):
        raise GlmcpuError(f"GGUF tokenizer: {CHARSMAP} is set, but ChatGLM's SentencePiece normalizer is the "
                          f"identity; this GGUF's tokenizer is not ChatGLM's")
    add_prefix = _bool(f, ADD_PREFIX, True)
    remove_ws = _bool(f, REMOVE_EXTRA_WS, False)
    data = build_sentencepiece_model(pieces, scores[:n], types[:n], add_prefix, remove_ws)
    sp = _load_sp(data, "the SentencePiece model rebuilt from the GGUF")
    if sp.vocab_size() != n:
        raise GlmcpuError(f"GGUF tokenizer: the rebuilt SentencePiece model has {sp.vocab_size()} pieces, "
                          f"not {n} (duplicate pieces in {TOKENS}?)")
    return "tokenizer.model", data, None, _template(f)


# ---------------------------------------------------------------- byte-level BPE helpers

def bytes_to_unicode():
    """GPT-2's byte -> printable character table (transformers.convert_slow_tokenizer.bytes_to_unicode)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_BYTE_ENCODER = bytes_to_unicode()
_BYTE_DECODER = {c: b for b, c in _BYTE_ENCODER.items()}


def token_bytes_to_string(b):
    return "".join(_BYTE_ENCODER[x] for x in b)


def token_string_to_bytes(s, i=None):
    try:
        return bytes(_BYTE_DECODER[c] for c in s)
    except KeyError:
        raise GlmcpuError(f"GGUF tokenizer: token {i} {s!r} is not a byte-level BPE token "
                          f"(tokenizer.ggml.model 'gpt2' needs GPT-2's byte-to-unicode form)") from None


def bpe(ranks, token, max_rank=None):
    """ChatGLMModel.bpe of the converter: the parts ``token`` is merged from, by tiktoken's ranks."""
    parts = [bytes([b]) for b in token]
    while True:
        min_idx = min_rank = None
        for i, pair in enumerate(zip(parts[:-1], parts[1:])):
            rank = ranks.get(pair[0] + pair[1])
            if rank is not None and (min_rank is None or rank < min_rank):
                min_idx, min_rank = i, rank
        if min_rank is None or (max_rank is not None and min_rank >= max_rank):
            break
        parts = parts[:min_idx] + [parts[min_idx] + parts[min_idx + 1]] + parts[min_idx + 2:]
    return parts


# TextModel.get_vocab_base_pre: the converter names the pre-tokenizer by the sha256 of str(ids) of this text
# (encoded with the tokenizer's own special tokens added); the entries for the GLM tokenizers.
CHKTXT = (
    '\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\U0001f680 (normal) \U0001f636\u200d\U0001f32b\ufe0f '
    '(multiple emojis concatenated) \u2705 \U0001f999\U0001f999 3 33 333 3333 33333 333333 3333333 33333333 3.3 '
    '3..3 3...3 \u1780\u17b6\u1793\u17cb\u178f\u17c2\u1796\u17b7\u179f\u17c1\u179f\u17a2\u17b6\u1785\U0001f601 '
    '?\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929\uff5e ------======= \u043d\u0435\u0449\u043e \u043d\u0430 '
    '\u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438 \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been '
    '\'told he\'s there, \'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL')
PRE_HASHES = {
    "b6e8e1518dc4305be2fe39c313ed643381c4da5db34a98f6a04c093f8afbe99b": "chatglm-bpe",  # THUDM/glm-4-9b-chat
    "81d72c7348a9f0ebe86f23298d37debe0a5e71149e29bd283904c02262b27516": "chatglm-bpe",  # THUDM/glm-4-9b-chat
    "a1336059768a55c99a734006ffb02203cd450fed003e9a71886c88acf24fdbc2": "glm4",  # THUDM/glm-4-9b-hf
    "9ca2dd618e8afaf09731a7cf6e2105b373ba6a1821559f258b272fe83e6eb902": "glm4",  # zai-org/GLM-4.5-Air
    "cdf5f35325780597efd76153d4d1c16778f766173908894c04afc20108536267": "glm4",  # zai-org/GLM-4.7-Flash
}
GLM_PRES = ("chatglm-bpe", "glm4")  # llama-vocab.cpp: both LLAMA_VOCAB_PRE_TYPE_CHATGLM4 (glm4: ignore_merges)


def pre_hash(ids):
    return hashlib.sha256(str(list(ids)).encode()).hexdigest()


# ---------------------------------------------------------------- GLM-4 tiktoken (remote-code GLM-4-9B)

def _read_ranks(data):
    ranks = {}
    try:
        for line in bytes(data).splitlines():
            if line.strip():
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
    except ValueError:
        raise GlmcpuError("the tokenizer is not a GLM-4 tiktoken file (lines of 'base64 rank')") from None
    return ranks


def _tiktoken_to_gguf(family, data, config, chat_template, n_vocab, model_config):
    from glmcpu.tokenizer import TiktokenGLM4
    ranks = _read_ranks(data)
    tok = TiktokenGLM4(bytes(data))
    added = dict(tok.special)  # name -> id, all special (CONTROL)
    if tok.vocab_size > n_vocab:
        raise GlmcpuError(f"the tokenizer has {tok.vocab_size} tokens but the model only {n_vocab} "
                          f"(padded_vocab_size); the tokenizer is not this model's")
    tokpre = _pre_name(pre_hash(tok.encode(CHKTXT, add_special_tokens=True)), None)
    vocab, merges = {}, []
    for token, rank in ranks.items():
        vocab[token_bytes_to_string(token)] = rank
        if len(token) == 1:
            continue
        merges.append(" ".join(map(token_bytes_to_string, bpe(ranks, token, max_rank=rank))))
    reverse = {i: t for t, i in {**vocab, **added}.items()}
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        else:
            tokens.append(reverse[i])
            types.append(CONTROL if reverse[i] in added else NORMAL)
    kv = _KV()
    kv.put(ADD_BOS, False, BOOL)  # ChatGLMModel.set_gguf_parameters
    kv.put(MODEL, "gpt2", STRING)
    kv.put(PRE, tokpre, STRING)
    kv.put(TOKENS, tokens, ARRAY)
    kv.put(TOKEN_TYPE, types, ARRAY)
    sv = SpecialVocab(None, config, model_config, chat_template, load_merges=False)
    sv.merges = merges
    for typ, name in (("eos", "<|endoftext|>"), ("eot", "<|user|>"), ("unk", "<|endoftext|>")):
        sv.set_special_token(typ, added[name])
    sv.add_to(kv)
    return kv.items()


def _tiktoken_from_gguf(family, f, tokens, types):
    from glmcpu.tokenizer import GLM4_SPECIAL
    _check_pre(f, family)
    n = next((i for i, t in enumerate(types) if t != NORMAL), len(types))
    if _find_block(tokens, types, GLM4_SPECIAL, start=n) != n:
        raise GlmcpuError(f"GGUF tokenizer: {TOKENS} does not hold GLM-4's 14 special tokens "
                          f"{GLM4_SPECIAL[0]}..{GLM4_SPECIAL[-1]} (CONTROL) right after the {n} ordinary "
                          f"tokens; not a GLM-4 tokenizer (check --family)")
    _check_padding(tokens, types, n + len(GLM4_SPECIAL), family)
    lines, seen = [], set()
    for i in range(n):
        b = token_string_to_bytes(tokens[i], i)
        if b in seen:
            raise GlmcpuError(f"GGUF tokenizer: token {i} {tokens[i]!r} appears twice in {TOKENS}")
        seen.add(b)
        lines.append(base64.b64encode(b) + b" " + str(i).encode() + b"\n")
    return "tokenizer.model", b"".join(lines), None, _template(f)


# ---------------------------------------------------------------- tokenizer.json (glm, glm4-0414)

GLM4_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
              r"\s*[\r\n]+|\s+(?!\S)|\s+")
GLM4_PRE_TOKENIZER = {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": GLM4_REGEX}, "behavior": "Isolated", "invert": False},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
GLM4_BYTELEVEL_POST = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
GLM4_DECODER = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
BPE_HEAD = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True}


def glm_prefix_post_processor(gmask_id, sop_id):
    """transformers' GLM conversion post-processor adding [gMASK] <sop> (use_post_processor=True)."""
    def special(name):
        return {"SpecialToken": {"id": name, "type_id": 0}}
    return {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        {"type": "TemplateProcessing",
         "single": [special("[gMASK]"), special("<sop>"), {"Sequence": {"id": "A", "type_id": 0}}],
         "pair": [special("[gMASK]"), special("<sop>"), {"Sequence": {"id": "A", "type_id": 0}},
                  {"Sequence": {"id": "B", "type_id": 1}}],
         "special_tokens": {"<sop>": {"id": "<sop>", "ids": [sop_id], "tokens": ["<sop>"]},
                            "[gMASK]": {"id": "[gMASK]", "ids": [gmask_id], "tokens": ["[gMASK]"]}}}]}


def dump_tokenizer_json(tj):
    """json.dumps(tj, indent=2, ensure_ascii=False) as UTF-8 (the layout of a saved tokenizer.json), with the
    BPE vocab and merges written here: the indenting encoder takes seconds on GLM-4's 470k entries."""
    from json.encoder import encode_basestring as enc  # the C version where there is one
    model = tj["model"]
    head = dict(tj, model=dict(model, vocab="\0glmcpu:vocab\0", merges="\0glmcpu:merges\0"))
    text = json.dumps(head, indent=2, ensure_ascii=False)
    vocab = "{\n" + ",\n".join(f"      {enc(k)}: {int(v)}" for k, v in model["vocab"].items()) + "\n    }" \
        if model["vocab"] else "{}"
    merges = "[\n" + ",\n".join(f"      [\n        {enc(a)},\n        {enc(b)}\n      ]" for a, b in model["merges"]) \
        + "\n    ]" if model["merges"] else "[]"
    # the placeholders are the model's last values: replaced from the right
    text = _replace_last(text, '"\\u0000glmcpu:merges\\u0000"', merges)
    text = _replace_last(text, '"\\u0000glmcpu:vocab\\u0000"', vocab)
    return text.encode("utf-8")


def _replace_last(text, old, new):
    i = text.rindex(old)
    return text[:i] + new + text[i + len(old):]


def _looks_special(text):
    """TextModel.does_token_look_special."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<\uff5c") and text.endswith("\uff5c>"))
            or (text.startswith("<unused") and text.endswith(">")))


def _load_tokenizers(data):
    from glmcpu.tokenizer_hf import _load
    return _load(bytes(data))


# the converter class each HF-native family goes through: (writes add_bos_token false in its
# set_gguf_parameters, special tokens set_vocab sets after gguf.SpecialVocab loaded its own)
_HF_CLASSES = {
    "glm": (True, (("eos", "<|endoftext|>"), ("eot", "<|user|>"), ("unk", "<|endoftext|>"))),  # ChatGLMModel
    "glm4-0414": (False, (("eos", "<|endoftext|>"), ("eot", "<|user|>"), ("unk", "<|endoftext|>"),
                          ("bos", "<|endoftext|>"))),  # Glm4Model
}


def _hf_to_gguf(family, data, config, chat_template, n_vocab, model_config):
    tk = _load_tokenizers(data)
    tj = json.loads(bytes(data))
    vocab = tk.get_vocab(with_added_tokens=True)
    if vocab and max(vocab.values()) >= n_vocab:
        raise GlmcpuError(f"the tokenizer has ids up to {max(vocab.values())} but the model only {n_vocab} "
                          f"tokens (vocab_size); the tokenizer is not this model's")
    decoder = tk.get_added_tokens_decoder()  # id -> AddedToken
    added = {t.content: i for i, t in sorted(decoder.items())}
    ids = tk.encode(CHKTXT).ids  # transformers' encode: the post-processor's special tokens included
    tokpre = _pre_name(pre_hash(ids), tj.get("pre_tokenizer"))
    reverse = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            continue
        token = reverse[i]
        if token in added:
            at = decoder[i]
            if not at.normalized:  # get_vocab_base: tokenizer.decode(tokenizer.encode(token))
                token = tk.decode(tk.encode(token, add_special_tokens=False).ids, skip_special_tokens=False)
            if at.special or _looks_special(token):
                types.append(CONTROL)
            else:
                token = token.replace("\u2581", " ")
                types.append(USER_DEFINED)
        else:
            types.append(NORMAL)
        tokens.append(token)
    add_bos_first, extra = _HF_CLASSES[family]
    kv = _KV()
    if add_bos_first:
        kv.put(ADD_BOS, False, BOOL)  # ChatGLMModel.set_gguf_parameters
    kv.put(MODEL, "gpt2", STRING)
    kv.put(PRE, tokpre, STRING)
    kv.put(TOKENS, tokens, ARRAY)
    kv.put(TOKEN_TYPE, types, ARRAY)
    sv = SpecialVocab(tj, config, model_config, chat_template, load_merges=True)
    for typ, name in extra:
        if name not in added:
            raise GlmcpuError(f"tokenizer.json has no added token {name!r}: not a GLM-4 tokenizer "
                              f"(llama.cpp's converter needs it for the {typ} id)")
        sv.set_special_token(typ, added[name])
    sv.add_to(kv)
    return kv.items()


def _hf_from_gguf(family, f, tokens, types):
    _check_pre(f, family)
    merges = f.get(MERGES)
    if not isinstance(merges, (list, tuple)) or not merges:
        raise GlmcpuError(f"GGUF tokenizer: {MERGES} is missing; a byte-level BPE tokenizer.json needs the "
                          f"merges (convert the model again with llama.cpp's convert_hf_to_gguf.py)")
    vocab, added = {}, []
    for i, (t, ty) in enumerate(zip(tokens, types)):
        if _is_padding(tokens, types, i):
            continue
        if ty == NORMAL:
            token_string_to_bytes(t, i)
            if t in vocab:
                raise GlmcpuError(f"GGUF tokenizer: token {i} {t!r} appears twice in {TOKENS}")
            vocab[t] = i
        elif ty in (CONTROL, USER_DEFINED):
            added.append({"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": ty == CONTROL})
        else:
            raise GlmcpuError(f"GGUF tokenizer: token {i} {t!r} has type {ty} ({TOKEN_TYPE}); a byte-level "
                              f"BPE vocabulary has only NORMAL, CONTROL, USER_DEFINED and UNUSED tokens")
    pairs = []
    for j, m in enumerate(merges):
        parts = m.split(" ") if isinstance(m, str) else None
        if parts is None or len(parts) != 2 or parts[0] not in vocab or parts[1] not in vocab:
            raise GlmcpuError(f"GGUF tokenizer: {MERGES}[{j}] = {m!r} is not a pair of vocabulary tokens "
                              f"(a GGUF written from GLM-4's tiktoken file: import it as family glm4)")
        pairs.append(parts)
    by_text = {a["content"]: a["id"] for a in added}
    post = GLM4_BYTELEVEL_POST
    bos = _id(f, ID_KEYS["bos"], len(tokens))
    if _bool(f, ADD_BOS, False) and bos is not None and tokens[bos] == "[gMASK]" and "<sop>" in by_text:
        post = glm_prefix_post_processor(bos, by_text["<sop>"])
    tj = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
          "pre_tokenizer": GLM4_PRE_TOKENIZER, "post_processor": post, "decoder": GLM4_DECODER,
          "model": dict(BPE_HEAD, vocab=vocab, merges=pairs)}
    data = dump_tokenizer_json(tj)
    template = _template(f)
    config = {"added_tokens_decoder": {str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip",
                                                                         "single_word", "special")} for a in added}}
    if template is not None:
        config["chat_template"] = template
    config["clean_up_tokenization_spaces"] = False
    for typ in ("eos", "pad"):
        i = _id(f, ID_KEYS[typ], len(tokens))
        if i is not None:
            config[f"{typ}_token"] = tokens[i]
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    return "tokenizer.json", data, config, template


# ---------------------------------------------------------------- gguf.SpecialVocab, in memory

class _KV:
    """The GGUFWriter's key order: a key written again keeps its place and takes the new value."""

    def __init__(self):
        self.kv = {}

    def put(self, key, value, vtype):
        self.kv[key] = (value, vtype)

    def remove(self, key):
        self.kv.pop(key, None)

    def items(self):
        return [(k, v, t) for k, (v, t) in self.kv.items()]


class SpecialVocab:
    """gguf-py's SpecialVocab (gguf/vocab.py) on in-memory files: ``tokenizer_json`` (dict or None),
    ``tokenizer_config`` (dict or None), ``model_config`` (config.json, dict or None); the chat template
    argument stands for chat_template.jinja (used when tokenizer_config.json has none). merges.txt is
    never read (glmcpu stores one tokenizer file)."""

    def __init__(self, tokenizer_json, tokenizer_config, model_config, chat_template=None, load_merges=False,
                 n_vocab=None):
        self.special_token_ids = {}
        self.add_special_token = {}
        self.n_vocab = n_vocab
        self.load_merges = load_merges
        self.merges = []
        self.chat_template = None
        self.normalizer_lowercase = None
        self.normalizer_strip_accents = None
        self.special_token_types = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
        tc = copy.deepcopy(tokenizer_config) if isinstance(tokenizer_config, dict) else None
        self._from_tokenizer_json(tokenizer_json if isinstance(tokenizer_json, dict) else None, tc,
                                  chat_template or None)
        self._from_config_json(model_config)

    def set_special_token(self, typ, tid):
        if not isinstance(tid, int):
            return
        if tid < 0:
            raise GlmcpuError(f"invalid value for special token type {typ}: {tid}")
        if self.n_vocab is None or tid < self.n_vocab:
            if typ not in self.special_token_ids:
                self.special_token_ids[typ] = tid

    def _parse_normalizer(self, normalizer):
        t = normalizer.get("type")
        if t == "Lowercase":
            self.normalizer_lowercase = True
        elif t == "StripAccents":
            self.normalizer_strip_accents = True
        elif t == "BertNormalizer":
            if "lowercase" in normalizer:
                self.normalizer_lowercase = normalizer["lowercase"]
            if "strip_accents" in normalizer:
                self.normalizer_strip_accents = normalizer["strip_accents"]
        elif t == "Sequence":
            for norm in normalizer.get("normalizers", []):
                self._parse_normalizer(norm)

    def _from_tokenizer_json(self, tokenizer, tokenizer_config, chat_template_alt):
        added_tokens = {}
        if tokenizer:
            if self.load_merges:
                merges = tokenizer.get("model", {}).get("merges")
                if isinstance(merges, list) and merges:
                    if isinstance(merges[0], str):
                        self.merges = merges
                    elif isinstance(merges[0], list) and len(merges[0]) == 2 and isinstance(merges[0][0], str):
                        # a space inside a part is written as chr(ord(" ") + 256)
                        self.merges = [" ".join(part.replace(" ", "\u0120") for part in pair) for pair in merges]
                    else:
                        raise GlmcpuError("tokenizer.json: unknown merges format")
            normalizer = tokenizer.get("normalizer")
            if normalizer:
                self._parse_normalizer(normalizer)
            added_tokens = tokenizer.get("added_tokens", {})
        if tokenizer:
            self._post_processor(tokenizer, tokenizer_config)
        if not tokenizer_config:
            return
        chat_template = tokenizer_config.get("chat_template", chat_template_alt)
        if chat_template is None or isinstance(chat_template, (str, list)):
            self.chat_template = chat_template
        for typ in self.special_token_types:
            add_entry = tokenizer_config.get(f"add_{typ}_token")
            if isinstance(add_entry, bool) and typ not in self.add_special_token:
                self.add_special_token[typ] = add_entry
            entry = tokenizer_config.get(f"{typ}_token")
            if isinstance(entry, str):
                content = entry
            elif isinstance(entry, dict) and isinstance(entry.get("content"), str):
                content = entry["content"]
            else:
                continue
            self.set_special_token(typ, next((a.get("id") for a in added_tokens if a.get("content") == content), None))

    def _post_processor(self, tokenizer, tokenizer_config):
        tc = tokenizer_config
        special_bos = (tc or {}).get("bos_token")
        special_cls = (tc or {}).get("cls_token")
        special_eos = (tc or {}).get("eos_token")
        special_sep = (tc or {}).get("sep_token")
        if not special_bos and special_cls and tc:
            tc["bos_token"] = special_bos = special_cls
        if not special_eos and special_sep and tc:
            tc["eos_token"] = special_eos = special_sep
        post = tokenizer.get("post_processor")
        if not post:
            return
        for proc in post.get("processors", [post]):
            ptype = proc.get("type")
            if ptype == "ByteLevel":
                self.add_special_token.setdefault("bos", False)
                self.add_special_token.setdefault("eos", False)
            elif ptype == "RobertaProcessing":
                self.add_special_token.update(bos=True, eos=True, sep=True)
                if not special_cls and tc:
                    tc["cls_token"] = special_cls = proc.get("cls", [special_bos])[0]
                if not special_sep and tc:
                    tc["sep_token"] = special_sep = proc.get("sep", [special_eos])[0]
            elif ptype == "TemplateProcessing":
                single, pair = proc.get("single", []), proc.get("pair", [])
                first = last = None
                if len(single) > 1:
                    first = single[0].get("SpecialToken", {}).get("id")
                    if first:
                        if not tc:
                            special_bos = first
                        elif first not in (special_bos, special_cls):
                            if not special_bos:
                                tc["bos_token"] = special_bos = first
                            if not special_cls:
                                tc["cls_token"] = special_cls = first
                        self.add_special_token["bos"] = first in (special_bos, special_cls)
                    last = single[-1].get("SpecialToken", {}).get("id")
                    if last:
                        if not tc:
                            special_eos = last
                        elif last != special_eos:
                            if "eot" not in self.special_token_types:
                                self.special_token_types = tuple(self.special_token_types) + ("eot",)
                                tc["eot_token"] = special_eos
                            elif "eom" not in self.special_token_types:
                                self.special_token_types = tuple(self.special_token_types) + ("eom",)
                                tc["eom_token"] = special_eos
                            tc["eos_token"] = special_eos = last
                        self.add_special_token["eos"] = last == special_eos
                if pair:
                    start = 1 if first and pair[0].get("SpecialToken", {}).get("id") == first else 0
                    stop = -1 if last and pair[-1].get("SpecialToken", {}).get("id") == last else None
                    pair = pair[start:stop]
                    if pair and pair[0].get("Sequence", {}).get("id") == "A" and \
                            pair[-1].get("Sequence", {}).get("id") == "B" and pair[1:-1]:
                        mid = pair[1:-1]
                        add_sep = False
                        entry = mid[0].get("SpecialToken", {}).get("id")
                        if entry and entry in (special_sep, special_eos) and not last:
                            add_sep = True
                        if len(mid) == 2:
                            entry = mid[1].get("SpecialToken", {}).get("id")
                            if entry and entry in (special_sep, special_eos):
                                add_sep = True
                        self.add_special_token["sep"] = add_sep
                        if add_sep and not special_sep and tc:
                            tc["sep_token"] = special_eos

    def _from_config_json(self, config):
        if not isinstance(config, dict):
            return
        for typ in self.special_token_types:
            tid = config.get(f"{typ}_token_id")
            if tid is None and isinstance(config.get("text_config"), dict):
                tid = config["text_config"].get(f"{typ}_token_id")
            self.set_special_token(typ, tid)

    def add_to(self, kv):
        if self.merges:
            kv.put(MERGES, list(self.merges), ARRAY)
        for typ, tid in self.special_token_ids.items():
            if typ in ID_KEYS:
                kv.put(ID_KEYS[typ], tid, UINT32)
        for typ, value in self.add_special_token.items():
            if typ in ADD_KEYS:
                kv.put(ADD_KEYS[typ], value, BOOL)
        if self.chat_template is not None:
            _put_chat_template(kv, self.chat_template)
        if self.normalizer_lowercase is not None:
            kv.put(K + "normalizer.lowercase", self.normalizer_lowercase, BOOL)
        if self.normalizer_strip_accents is not None:
            kv.put(K + "normalizer.strip_accents", self.normalizer_strip_accents, BOOL)


def _put_chat_template(kv, value):
    """GGUFWriter.add_chat_template (named templates in their given order, not a set's)."""
    if not isinstance(value, str):
        default, names = None, []
        for choice in value:
            name = "".join(c if c.isascii() and c.isalnum() else "_" for c in choice.get("name", ""))
            template = choice.get("template")
            if name and template is not None:
                if name == "default":
                    default = template
                else:
                    names.append(name)
                    if template:
                        kv.put(f"{CHAT_TEMPLATE}.{name}", template, STRING)
        if names:
            kv.put("tokenizer.chat_templates", names, ARRAY)
        if default is None:
            return
        value = default
    if value:
        kv.put(CHAT_TEMPLATE, value, STRING)


# ---------------------------------------------------------------- field checks

def _field(f, key, what):
    if key not in f or f[key] is None:
        raise GlmcpuError(f"GGUF tokenizer: {key} is missing ({what}); convert the model again with "
                          f"llama.cpp's convert_hf_to_gguf.py, or convert from the original checkpoint")
    return f[key]


def _as_list(v):
    if hasattr(v, "tolist"):
        v = v.tolist()
    return list(v) if isinstance(v, (list, tuple)) else None


def _string_list(f, key):
    v = _as_list(_field(f, key, "the token strings"))
    if not v:
        raise GlmcpuError(f"GGUF tokenizer: {key} must be a non-empty list of strings")
    out = []
    for i, t in enumerate(v):
        if isinstance(t, (bytes, bytearray)):
            try:
                t = bytes(t).decode("utf-8")
            except UnicodeDecodeError:
                raise GlmcpuError(f"GGUF tokenizer: {key}[{i}] is not UTF-8") from None
        if not isinstance(t, str):
            raise GlmcpuError(f"GGUF tokenizer: {key}[{i}] is {type(t).__name__}, not a string")
        out.append(t)
    return out


def _int_list(f, key, n):
    v = _as_list(_field(f, key, "the token types"))
    if v is None or len(v) != n:
        raise GlmcpuError(f"GGUF tokenizer: {key} has {len(v) if v is not None else 'no'} entries but "
                          f"{TOKENS} has {n}; the GGUF's tokenizer is damaged")
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        raise GlmcpuError(f"GGUF tokenizer: {key} must hold integers")
    return v


def _float_list(f, key, n):
    v = _as_list(_field(f, key, "the SentencePiece scores"))
    if v is None or len(v) != n:
        raise GlmcpuError(f"GGUF tokenizer: {key} has {len(v) if v is not None else 'no'} entries but "
                          f"{TOKENS} has {n}; the GGUF's tokenizer is damaged")
    try:
        return [float(x) for x in v]
    except (TypeError, ValueError):
        raise GlmcpuError(f"GGUF tokenizer: {key} must hold numbers") from None


def _bool(f, key, default):
    v = f.get(key, default)
    if hasattr(v, "item"):
        v = v.item()
    if not isinstance(v, bool):
        raise GlmcpuError(f"GGUF tokenizer: {key} must be true or false, got {v!r}")
    return v


def _id(f, key, n):
    v = f.get(key)
    if v is None:
        return None
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n:
        raise GlmcpuError(f"GGUF tokenizer: {key} = {v!r} is not a token id below {n}")
    return v


def _template(f):
    t = f.get(CHAT_TEMPLATE)
    if t is None or t == "":
        return None
    if isinstance(t, (bytes, bytearray)):
        t = bytes(t).decode("utf-8", "replace")
    if not isinstance(t, str):
        raise GlmcpuError(f"GGUF tokenizer: {CHAT_TEMPLATE} must be a string")
    return t


def _check_pre(f, family):
    pre = f.get(PRE)
    if pre not in GLM_PRES:
        raise GlmcpuError(f"GGUF tokenizer: {PRE} is {pre!r}, not one of GLM-4's pre-tokenizers "
                          f"{' or '.join(map(repr, GLM_PRES))}; not a {family} tokenizer (check --family, or "
                          f"convert the model again with llama.cpp's convert_hf_to_gguf.py)")


def _pre_name(h, pre_tokenizer):
    """The converter's pre-tokenizer name for a check-text hash. An unknown hash stops the converter;
    a tokenizer.json with GLM-4's own pre-tokenizer still runs as llama.cpp's "glm4" pre-tokenizer."""
    if h in PRE_HASHES:
        return PRE_HASHES[h]
    if pre_tokenizer == GLM4_PRE_TOKENIZER:
        return "glm4"
    raise GlmcpuError(f"the tokenizer's pre-tokenizer is not GLM-4's (check hash {h[:16]}... unknown to "
                      f"llama.cpp's converter); it cannot be written as a GGUF tokenizer")


def _find_block(tokens, types, names, start=0):
    """First index >= start where ``names`` follow each other as added tokens (CONTROL; USER_DEFINED
    as older converters wrote some), or None."""
    k = len(names)
    i = start
    while True:
        try:
            i = tokens.index(names[0], i)
        except ValueError:
            return None
        if tokens[i:i + k] == list(names) and all(t in (CONTROL, USER_DEFINED) for t in types[i:i + k]):
            return i
        i += 1


def _is_padding(tokens, types, i):
    """A "[PAD<id>]" filler: UNUSED as the converter writes it (older converters: USER_DEFINED)."""
    return types[i] == UNUSED or (types[i] == USER_DEFINED and tokens[i] == f"[PAD{i}]")


def _check_padding(tokens, types, start, family):
    for i in range(start, len(tokens)):
        if not _is_padding(tokens, types, i):
            raise GlmcpuError(f"GGUF tokenizer: token {i} {tokens[i]!r} follows {family}'s special tokens but is "
                              f"not padding (UNUSED); the tokenizer is not {family}'s (check --family)")


# ---------------------------------------------------------------- API

def to_gguf(family_name, filename, data_bytes, config, chat_template, n_vocab, model_config=None):
    """The tokenizer.* keys llama.cpp's converter writes for ``family_name`` from this tokenizer file,
    padded to ``n_vocab`` tokens: a list of (key, value, GGUF value type) in the converter's order.
    config: tokenizer_config.json (dict or None); chat_template: the stored template (used when config has
    none, as chat_template.jinja would be); model_config: the model's config.json (its *_token_id entries
    give special ids, as the converter reads them; pass it)."""
    path = _path(family_name)
    if not isinstance(n_vocab, int) or isinstance(n_vocab, bool) or n_vocab <= 0:
        raise GlmcpuError(f"n_vocab must be a positive integer, got {n_vocab!r}")
    if not isinstance(data_bytes, (bytes, bytearray, memoryview)):
        raise GlmcpuError(f"the tokenizer file {filename!r} must be given as bytes")
    fn = {"spm": _spm_to_gguf, "tiktoken": _tiktoken_to_gguf, "hf": _hf_to_gguf}[path]
    return fn(family_name, bytes(data_bytes), config, chat_template, n_vocab, model_config)


_EXPECTED_MODEL = {"spm": ("llama", "SentencePiece"), "tiktoken": ("gpt2", "byte-level BPE"),
                   "hf": ("gpt2", "byte-level BPE")}


def from_gguf(fields, family_name):
    """(filename, data, config, chat_template): the family's tokenizer file rebuilt from a GGUF's
    tokenizer.* values (``fields``: key -> value decoded to Python, as read_fields gives), ready for
    the family's make_tokenizer. config: a tokenizer_config.json-like dict (glm, glm4-0414) or None."""
    path = _path(family_name)
    if not isinstance(fields, dict):
        raise GlmcpuError("GGUF tokenizer fields must be a dict of key -> value")
    model = _field(fields, MODEL, "the tokenizer type")
    want, kind = _EXPECTED_MODEL[path]
    if model != want:
        raise GlmcpuError(f"GGUF tokenizer: {MODEL} is {model!r}, but a {family_name} model has a {kind} tokenizer "
                          f"({want!r}); check --family, or convert the model again with llama.cpp's converter")
    tokens = _string_list(fields, TOKENS)
    types = _int_list(fields, TOKEN_TYPE, len(tokens))
    if SCORES in fields and fields[SCORES] is not None:
        _float_list(fields, SCORES, len(tokens))
    fn = {"spm": _spm_from_gguf, "tiktoken": _tiktoken_from_gguf, "hf": _hf_from_gguf}[path]
    return fn(family_name, fields, tokens, types)


def read_fields(reader):
    """tokenizer.* fields of a gguf.GGUFReader as the plain dict from_gguf takes."""
    return {key: field.contents() for key, field in reader.fields.items() if key.startswith("tokenizer.")}


def read_gguf_metadata(path, prefix="tokenizer."):
    """The key/values of GGUF file ``path`` whose key starts with ``prefix``, as from_gguf takes them."""
    from .gguf_file import GGUFFile
    return {k: v for k, v in GGUFFile(path).kv.items() if k.startswith(prefix)}


def write_keys(writer, keys):
    """Apply to_gguf's keys to a writer with ``add(key, value, vtype)`` (convert/gguf_file.py)."""
    for key, value, vtype in keys:
        writer.add(key, value, vtype)
