"""GGUF tokenizer export and import (convert/gguf_tokenizer.py).

Export (to_gguf) must write the tokenizer.* keys llama.cpp's convert_hf_to_gguf.py writes: checked
against tests/gguf_reference.py (the torch-free mirror of that converter, itself checked byte for byte
against the real converter's files) on the real full-size tokenizers, against the `gguf` package's
own SpecialVocab, and, for the two families the current converter cannot convert (ChatGLM2, the
remote-code GLM-4), against facts computed here without to_gguf. Import (from_gguf) must rebuild a
tokenizer file that gives the official ids of ../shared/golden/tokenizer*.json, byte-identical to the
release's file. Everything goes through a real GGUF file written by gguf.GGUFWriter.
"""
import copy
import json
import os

import gguf
import numpy as np
import pytest

import gguf_reference
from glmcpu import families
from glmcpu.convert import gguf_tokenizer as gt
from glmcpu.chat import chat_prompt
from glmcpu.errors import GlmcpuError
from glmcpu.tokenizer import GLM3_ROLES, GLM4_PATTERN, GLM4_SPECIAL, GLM_SPECIAL, load_tokenizer
from helpers import GOLDEN, TOKENIZERS, golden

GLM4_SPECIAL0 = 151329  # <|endoftext|>, the first GLM-4 special id
GLM4_EOS = [151329, 151336, 151338]  # <|endoftext|> <|user|> <|observation|>

# family -> (golden case whose config.json we take, tokenizer file, tokenizer_config.json, release vocab size)
SP, SP_TC = "chatglm2-chatglm3/tokenizer.model", "chatglm2-chatglm3/tokenizer_config.{}.json"
CASES = {
    "chatglm3": ("chatglm3-tiny", SP, SP_TC.format("chatglm3"), 65024),
    "chatglm2": ("chatglm2-tiny-bin", SP, SP_TC.format("chatglm2"), 65024),
    "glm4": ("glm4-tiny", "glm-4-9b-chat/tokenizer.model", "glm-4-9b-chat/tokenizer_config.json", 151552),
    "glm": ("glm4-hf-tiny", "glm-4-hf/tokenizer.json", "glm-4-hf/tokenizer_config.json", 151552),
    "glm4-0414": ("glm4-0414-tiny-bf16-sharded", "glm-4-hf/tokenizer.json", "glm-4-hf/tokenizer_config.0414.json",
                  151552),
}
FAMILIES = list(CASES)
GOLD = json.load(open(os.path.join(GOLDEN, "tokenizer.json"), encoding="utf-8"))
GOLD_HF = json.load(open(os.path.join(GOLDEN, "tokenizer_hf.json"), encoding="utf-8"))
GOLD_NAME = {"glm": "glm4-hf", "glm4-0414": "glm4-0414"}
HF = ("glm", "glm4-0414")


def _bytes(rel):
    with open(os.path.join(TOKENIZERS, rel), "rb") as f:
        return f.read()


def _json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def model_config(family):
    """The golden case's config.json at the release's vocabulary size and special ids (the golden
    configs moved them into their 320-token vocabularies)."""
    case, _, _, n = CASES[family]
    c = _json(os.path.join(golden(case), "config.json"))
    c["padded_vocab_size" if "padded_vocab_size" in c else "vocab_size"] = n
    if n == 151552:
        c["eos_token_id"], c["pad_token_id"] = list(GLM4_EOS), GLM4_SPECIAL0
    return c


def tokenizer_config(family):
    return _json(os.path.join(TOKENIZERS, CASES[family][2]))


_cache = {}


def cached(key, make):
    if key not in _cache:
        _cache[key] = make()
    return _cache[key]


def exported(family):
    """to_gguf on the release's tokenizer file."""
    _, rel, _, n = CASES[family]
    return cached(("keys", family), lambda: gt.to_gguf(family, os.path.basename(rel), _bytes(rel),
                                                       tokenizer_config(family), None, n, model_config(family)))


def write_gguf(path, keys):
    """The keys written by the gguf package's own writer (independent of convert/gguf_file.py)."""
    w = gguf.GGUFWriter(str(path), arch="chatglm")
    for key, value, vtype in keys:
        w.add_key_value(key, value, gguf.GGUFValueType(vtype))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    return str(path)


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("gguf_tok")


def gguf_fields(family, tmp):
    """The exported keys written to a GGUF file by gguf.GGUFWriter and read back."""
    return cached(("fields", family),
                  lambda: gt.read_gguf_metadata(write_gguf(tmp / f"{family}.gguf", exported(family))))


def imported(family, tmp):
    return cached(("imported", family), lambda: gt.from_gguf(gguf_fields(family, tmp), family))


def rebuilt_tokenizer(family, tmp):
    def make():
        filename, data, config, template = imported(family, tmp)
        tok = load_tokenizer(family, {"type": families.get(family).TOKENIZER_KIND, "filename": filename,
                                      "config": config}, data)
        return tok, template
    return cached(("tok", family), make)


# ---------------------------------------------------------------- import: golden ids, original bytes

def _golden_cases():
    out = []
    for fam in FAMILIES:
        gold = GOLD_HF[GOLD_NAME[fam]] if fam in HF else GOLD[fam]
        out += [(fam, kind, i) for kind in ("encode", "with_prefix", "chat", "decode")
                for i in range(len(gold.get(kind, [])))]
    return out


@pytest.mark.parametrize("family,kind,i", _golden_cases())
def test_rebuilt_tokenizer_gives_the_official_ids(family, kind, i, gguf_dir):
    tok, template = rebuilt_tokenizer(family, gguf_dir)
    if family in HF:
        e = GOLD_HF[GOLD_NAME[family]][kind][i]
        if kind == "chat":
            assert chat_prompt(tok, e["messages"], tools=e.get("tools"), template=template) == e["ids"]
    else:
        e = GOLD[family][kind][i]
        if kind == "with_prefix":
            assert tok.encode(e["text"], add_special_tokens=True) == e["ids"]
        elif kind == "chat":
            assert chat_prompt(tok, e["history"] + [{"role": "user", "content": e["query"]}]) == e["ids"]
    if kind == "encode":
        assert tok.encode(e["text"]) == e["ids"]
    elif kind == "decode":
        assert tok.decode(e["ids"]) == e["text"]


@pytest.mark.parametrize("family", FAMILIES)
def test_rebuilt_file_is_the_release_file(family, gguf_dir):
    """Byte for byte: the sentencepiece model (pieces, scores, types, specs), the tiktoken ranks file,
    the tokenizer.json; plus what the family code reads from tokenizer_config.json and the template."""
    filename, data, config, template = imported(family, gguf_dir)
    rel = CASES[family][1]
    assert filename == os.path.basename(rel) == families.get(family).TOKENIZER_FILES[0]
    assert data == _bytes(rel)
    tc = tokenizer_config(family)
    assert template == tc.get("chat_template")
    if family in HF:
        for key in ("eos_token", "pad_token", "clean_up_tokenization_spaces", "added_tokens_decoder"):
            assert config[key] == tc[key], key
        tok, _ = rebuilt_tokenizer(family, gguf_dir)
        assert tok.special_tokens_map == {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
        assert tok.eos_id == GLM4_SPECIAL0 and tok.vocab_size == 151343
    else:
        assert config is None


def test_sentencepiece_rebuild_piece_by_piece(gguf_dir):
    """The rebuilt model against the release's through sentencepiece itself, and field by field."""
    import sentencepiece as spm
    data = imported("chatglm3", gguf_dir)[1]
    a, b = spm.SentencePieceProcessor(), spm.SentencePieceProcessor()
    a.LoadFromSerializedProto(_bytes(CASES["chatglm3"][1]))
    b.LoadFromSerializedProto(data)
    assert a.vocab_size() == b.vocab_size() == 64789
    for i in range(0, 64789, 7):
        assert (a.id_to_piece(i), a.get_score(i), a.is_control(i), a.is_byte(i), a.is_unknown(i)) == \
            (b.id_to_piece(i), b.get_score(i), b.is_control(i), b.is_byte(i), b.is_unknown(i))
    specs = [f for f in gt.pb_fields(_bytes(CASES["chatglm3"][1])) if f[0] != 1]  # trainer, normalizer
    assert [f for f in gt.pb_fields(data) if f[0] != 1] == specs


def test_sentencepiece_options_a_gguf_can_carry(gguf_dir):
    """tokenizer.ggml.add_space_prefix / remove_extra_whitespaces, when a GGUF has them, become the
    normalizer's add_dummy_prefix / remove_extra_whitespaces (what llama.cpp does with them)."""
    import sentencepiece as spm
    base = imported("chatglm3", gguf_dir)[1]
    f = _damaged("chatglm3", gguf_dir, add_space_prefix=False, remove_extra_whitespaces=True)
    data = gt.from_gguf(f, "chatglm3")[1]
    assert data != base and len(data) == len(base)
    a, b = spm.SentencePieceProcessor(), spm.SentencePieceProcessor()
    a.LoadFromSerializedProto(base)
    b.LoadFromSerializedProto(data)
    assert a.encode_as_pieces("hi  there") == ["\u2581hi", "\u2581", "\u2581there"]
    assert b.encode_as_pieces("hi  there") == ["hi", "\u2581there"]
    with pytest.raises(GlmcpuError, match="add_space_prefix must be true or false"):
        gt.from_gguf(_damaged("chatglm3", gguf_dir, add_space_prefix="no"), "chatglm3")


def test_older_converters_padding_and_added_types(gguf_dir):
    """Specials written USER_DEFINED and "[PAD<id>]" fillers written USER_DEFINED (older converters)."""
    f = gguf_fields("glm4", gguf_dir)
    types = [gt.USER_DEFINED if t != gt.NORMAL else t for t in f[gt.TOKEN_TYPE]]
    assert gt.from_gguf(_damaged("glm4", gguf_dir, token_type=types), "glm4")[1] == imported("glm4", gguf_dir)[1]


# ---------------------------------------------------------------- export: the converter's keys

def _checkpoint(tmp, family, files, config):
    """A converter input directory: the golden weights (linked) with these tokenizer files and config."""
    case = CASES[family][0]
    d = tmp / f"ckpt-{family}-{len(os.listdir(tmp))}"
    d.mkdir()
    for f in os.listdir(golden(case)):
        if f.startswith(("config", "expected", "tokenizer")):
            continue
        os.symlink(os.path.join(golden(case), f), d / f)
    for name, data in files.items():
        (d / name).write_bytes(data)
    (d / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return d


def _with_types(path):
    """key -> (value, value type[, element type]) of a GGUF file's tokenizer keys, in file order."""
    r = gguf.GGUFReader(path)
    return [(k, f.contents(), [int(t) for t in f.types]) for k, f in r.fields.items() if k.startswith("tokenizer.")]


@pytest.mark.parametrize("family", ["chatglm3", "glm4-0414"])
def test_export_equals_the_converter_at_release_size(family, tmp_path, gguf_dir):
    """Same keys, order and values as gguf_reference's converter run on a checkpoint with the real
    tokenizer files and the release's vocabulary size (the embedding's rows do not matter to it)."""
    _, rel, tc_rel, _ = CASES[family]
    files = {os.path.basename(rel): _bytes(rel), "tokenizer_config.json": _bytes(tc_rel)}
    src = _checkpoint(tmp_path, family, files, model_config(family))
    ref = gguf_reference.write_reference_gguf(src, tmp_path / "ref.gguf", "f32")
    expected = gt.read_gguf_metadata(ref)
    ours = exported(family)
    assert [k for k, _, _ in ours] == list(expected)
    for key, value, _ in ours:
        assert value == expected[key], key
    assert gguf_fields(family, gguf_dir) == expected  # and the same once written by GGUFWriter


def _shrunk_sentencepiece(keep):
    """The release's model cut to its first `keep` pieces (what the tiny converter runs used)."""
    out = bytearray()
    for num, wt, raw in _raw_fields(_bytes(CASES["chatglm3"][1])):
        if num == 1:
            keep -= 1
            if keep < 0:
                continue
        out += raw
    return bytes(out)


def _raw_fields(buf):
    i = 0
    while i < len(buf):
        start = i
        key, i = _varint(buf, i)
        n, i = _varint(buf, i) if key & 7 == 2 else (0, i)
        if key & 7 == 5:
            i += 4
        elif key & 7 == 0:
            raise AssertionError("top-level ModelProto fields are messages")
        i += n
        yield key >> 3, key & 7, buf[start:i]


def _varint(buf, i):
    shift = val = 0
    while True:
        b = buf[i]
        i += 1
        val |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return val, i


def _shrunk_tokenizer_json(keep=300):
    """The GLM-4 tokenizer.json cut to ids < keep, its 14 specials moved to keep.. (the tiny runs)."""
    t = _json(os.path.join(TOKENIZERS, "glm-4-hf", "tokenizer.json"))
    kept = {tok: i for tok, i in t["model"]["vocab"].items() if i < keep}
    t["model"]["vocab"] = kept
    t["model"]["merges"] = [m for m in t["model"]["merges"] if m[0] in kept and m[1] in kept and m[0] + m[1] in kept]
    for at in t["added_tokens"]:
        at["id"] += keep - GLM4_SPECIAL0
    return json.dumps(t, indent=2, ensure_ascii=False).encode("utf-8")


def _tiny_config(family, tc_rel, keep=300):
    tc = _json(os.path.join(TOKENIZERS, tc_rel))
    if "added_tokens_decoder" in tc:
        first = min(map(int, tc["added_tokens_decoder"]))
        tc["added_tokens_decoder"] = {str(int(k) - first + keep): v for k, v in tc["added_tokens_decoder"].items()}
    return tc


@pytest.mark.parametrize("family", ["chatglm3", "glm"])
def test_export_equals_the_converter_on_the_tiny_models(family, tmp_path):
    """The golden tiny checkpoints with their tokenizer cut to 300 ids (as the real converter runs were
    made): keys, order, values and GGUF value types equal the reference converter's; importing that
    GGUF gives back a tokenizer that encodes like the cut-down file."""
    case, rel, tc_rel, _ = CASES[family]
    data = _shrunk_sentencepiece(300) if family == "chatglm3" else _shrunk_tokenizer_json(300)
    tc = _tiny_config(family, tc_rel)
    config = _json(os.path.join(golden(case), "config.json"))  # 320 ids, specials moved into them
    src = _checkpoint(tmp_path, family, {os.path.basename(rel): data,
                                         "tokenizer_config.json": json.dumps(tc).encode()}, config)
    # the cut tokenizer's ids no longer hash to a known name: the converter runs were given the full
    # file's ("glm4", see test_pre_tokenizer_names_by_hash); to_gguf falls back to it by itself
    pre = None if family == "chatglm3" else "glm4"
    ref = gguf_reference.write_reference_gguf(src, tmp_path / "ref.gguf", "f32", tokenizer_pre=pre)
    keys = gt.to_gguf(family, os.path.basename(rel), data, tc, None, 320, config)
    ours = write_gguf(tmp_path / "ours.gguf", keys)
    assert _with_types(ours) == _with_types(ref)

    filename, rebuilt, config_out, _ = gt.from_gguf(gt.read_gguf_metadata(ref), family)
    info = {"type": families.get(family).TOKENIZER_KIND, "config": config_out}
    a = load_tokenizer(family, info, rebuilt)
    b = load_tokenizer(family, {"type": info["type"], "config": tc}, data)
    for text in ("the cat in the hat", "  tea, then sing\n\n", "re: on it"):
        assert a.encode(text) == b.encode(text)
    assert rebuilt == data


@pytest.mark.parametrize("family", ["chatglm2", "glm4"])
def test_converter_refuses_the_remote_code_gpt2_path(family, tmp_path):
    """The reason these two are written by the rule documented in glmcpu/gguf_tokenizer.py instead of
    being compared with a converter run: the converter of llama-cpp-python 0.3.36 stops on them."""
    _, rel, tc_rel, _ = CASES[family]
    config = _json(os.path.join(golden(CASES[family][0]), "config.json"))
    src = _checkpoint(tmp_path, family, {os.path.basename(rel): _bytes(rel), "tokenizer_config.json": _bytes(tc_rel)},
                      config)
    with pytest.raises((KeyError, NotImplementedError)):
        gguf_reference.write_reference_gguf(src, tmp_path / "ref.gguf", "f32")


def test_chatglm2_export_is_the_chatglm3_path_with_five_specials():
    k2, k3 = {k: v for k, v, _ in exported("chatglm2")}, {k: v for k, v, _ in exported("chatglm3")}
    assert [k for k, _, _ in exported("chatglm2")] == [k for k, _, _ in exported("chatglm3")]
    n = 64789
    for key in (gt.TOKENS, gt.SCORES, gt.TOKEN_TYPE):
        assert k2[key][:n] == k3[key][:n] and len(k2[key]) == 65024
    assert k2[gt.TOKENS][n:n + 6] == GLM_SPECIAL + ["[PAD64794]"]
    assert k3[gt.TOKENS][n:n + 10] == GLM_SPECIAL + GLM3_ROLES + ["[PAD64798]"]
    assert k2[gt.TOKEN_TYPE][n:] == [gt.CONTROL] * 5 + [gt.UNUSED] * (65024 - n - 5)
    assert set(k2[gt.SCORES][n:]) == {0.0}
    assert (k2[gt.MODEL], k2[gt.PRE], k2[gt.ADD_BOS]) == ("llama", "chatglm-spm", False)
    assert (k2[gt.ID_KEYS["eos"]], k2[gt.ID_KEYS["pad"]]) == (2, 0)


def test_glm4_export_follows_the_tiktoken_path():
    """Remote-code GLM-4: the GPT-2 byte form of the tiktoken ranks (as transformers' own conversion,
    the glm-4-hf tokenizer.json, spells them), the 14 specials, padding, and the converter's merges
    rule (ChatGLMModel.bpe of every multi-byte token at its rank), checked by properties here."""
    import base64
    import tiktoken
    keys = exported("glm4")
    kv = {k: v for k, v, _ in keys}
    assert [k for k, _, _ in keys] == [gt.ADD_BOS, gt.MODEL, gt.PRE, gt.TOKENS, gt.TOKEN_TYPE, gt.MERGES,
                                       gt.ID_KEYS["pad"], gt.ID_KEYS["eos"], gt.ID_KEYS["eot"], gt.ID_KEYS["unk"],
                                       gt.CHAT_TEMPLATE]
    hf_vocab = _json(os.path.join(TOKENIZERS, "glm-4-hf", "tokenizer.json"))["model"]["vocab"]
    tokens = kv[gt.TOKENS]
    assert tokens[:GLM4_SPECIAL0] == sorted(hf_vocab, key=hf_vocab.get)
    assert tokens[GLM4_SPECIAL0:GLM4_SPECIAL0 + 14] == GLM4_SPECIAL
    assert tokens[GLM4_SPECIAL0 + 14:] == [f"[PAD{i}]" for i in range(GLM4_SPECIAL0 + 14, 151552)]
    assert kv[gt.TOKEN_TYPE] == [gt.NORMAL] * GLM4_SPECIAL0 + [gt.CONTROL] * 14 + \
        [gt.UNUSED] * (151552 - GLM4_SPECIAL0 - 14)
    # merges: one per multi-byte token, in rank order; its parts spell the token and rank below it
    ranks = {}
    for line in _bytes(CASES["glm4"][1]).splitlines():
        t, r = line.split()
        ranks[base64.b64decode(t)] = int(r)
    by_text = {t: i for i, t in enumerate(tokens[:GLM4_SPECIAL0])}
    multi = [i for i in range(GLM4_SPECIAL0) if len(tokens[i]) > 1]
    merges = kv[gt.MERGES]
    assert len(merges) == len(multi) == GLM4_SPECIAL0 - 256
    parts = [m.split(" ") for m in merges]
    assert ["".join(p) for p in parts] == [tokens[i] for i in multi]
    assert all(by_text[p] < i for ps, i in zip(parts, multi) for p in ps)
    assert sum(len(p) == 2 for p in parts) == len(parts) - 1072 and max(map(len, parts)) == 7
    # the pre-tokenizer: llama.cpp's name for the hash of the official tokenizer's ids (with [gMASK] <sop>)
    enc = tiktoken.Encoding("glm4-ref", pat_str=GLM4_PATTERN, mergeable_ranks=ranks, special_tokens={})
    ids = [GLM4_SPECIAL0 + 2, GLM4_SPECIAL0 + 4] + enc.encode(gguf_reference.CHKTXT)
    assert gguf_reference.PRE_BY_HASH[gt.pre_hash(ids)] == kv[gt.PRE] == "chatglm-bpe"
    assert (kv[gt.ID_KEYS["eos"]], kv[gt.ID_KEYS["eot"]], kv[gt.ID_KEYS["unk"]], kv[gt.ID_KEYS["pad"]]) == \
        (151329, 151336, 151329, 151329)
    assert kv[gt.CHAT_TEMPLATE] == tokenizer_config("glm4")["chat_template"] and kv[gt.ADD_BOS] is False


def _special_vocab_dir(tmp, tokenizer_json, tc, config):
    d = tmp / f"sv{len(os.listdir(tmp))}"
    d.mkdir()
    if tokenizer_json is not None:
        (d / "tokenizer.json").write_text(json.dumps(tokenizer_json), encoding="utf-8")
    (d / "tokenizer_config.json").write_text(json.dumps(tc), encoding="utf-8")
    (d / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return d


def test_special_vocab_equals_the_converters(tmp_path):
    """Our in-memory port of gguf-py's SpecialVocab against gguf_reference's (the converter's vendored
    gguf-py; the PyPI gguf 0.19.0 build is an older revision of it) on the ChatGLM3 files, the GLM-4
    tokenizer.json (cut down: same structure), that tokenizer.json with transformers' GLM [gMASK] <sop>
    post-processor (bos and add_bos_token then come from it), and a config with add_*/dict entries."""
    tj = json.loads(_shrunk_tokenizer_json(300))
    prefixed = copy.deepcopy(tj)
    prefixed["post_processor"] = gt.glm_prefix_post_processor(302, 304)
    hf_tc = _tiny_config("glm", CASES["glm"][2])
    hf_config = {"eos_token_id": [300, 307, 309], "pad_token_id": 300, "vocab_size": 320}
    odd_tc = dict(hf_tc, add_bos_token=True, add_eos_token=False, bos_token={"content": "[gMASK]"},
                  chat_template=[{"name": "default", "template": "x"}, {"name": "tool use", "template": "y"}])
    cases = [(None, tokenizer_config("chatglm3"), model_config("chatglm3"), False, 65024),
             (tj, hf_tc, hf_config, True, None), (prefixed, hf_tc, hf_config, True, None),
             (tj, odd_tc, {"bos_token_id": 5, "eos_token_id": 301}, True, None)]
    seen = []
    for tokenizer_json, tc, config, merges, n_vocab in cases:
        ref = gguf_reference.SpecialVocab(_special_vocab_dir(tmp_path, tokenizer_json, tc, config),
                                          load_merges=merges, n_vocab=n_vocab)
        ours = gt.SpecialVocab(tokenizer_json, tc, config, load_merges=merges, n_vocab=n_vocab)
        assert (ours.merges, ours.special_token_ids, ours.add_special_token, ours.chat_template) == \
            (ref.merges, ref.special_token_ids, ref.add_special_token, ref.chat_template)
        seen.append((dict(ours.special_token_ids), dict(ours.add_special_token)))
    assert seen[0] == ({"eos": 2, "pad": 0}, {})
    assert seen[1] == ({"eos": 300, "pad": 300}, {"bos": False, "eos": False})
    assert seen[2][0]["bos"] == 302 and seen[2][1]["bos"] is True
    assert seen[3][0]["bos"] == 302 and seen[3][1] == {"bos": False, "eos": False}


def test_prefixing_post_processor_round_trip(tmp_path):
    """A tokenizer.json whose post-processor adds [gMASK] <sop>: exported with add_bos_token and bos
    [gMASK] (the pre-tokenizer name for it: test_pre_tokenizer_names_by_hash); imported back with that
    post-processor."""
    tj = json.loads(_shrunk_tokenizer_json(300))
    tj["post_processor"] = gt.glm_prefix_post_processor(302, 304)
    data = json.dumps(tj, indent=2, ensure_ascii=False).encode("utf-8")
    tc = _tiny_config("glm", CASES["glm"][2])
    keys = {k: v for k, v, _ in gt.to_gguf("glm", "tokenizer.json", data, tc, None, 320, {"pad_token_id": 300})}
    assert keys[gt.ADD_BOS] is True and keys[gt.ID_KEYS["bos"]] == 302
    _, rebuilt, config, _ = gt.from_gguf(keys, "glm")
    tok = load_tokenizer("glm", {"type": "tokenizers", "config": config}, rebuilt)
    assert tok.prefix_ids() == [302, 304] and tok.encode("in", add_special_tokens=True) == [302, 304] + tok.encode("in")
    assert json.loads(rebuilt)["post_processor"] == tj["post_processor"]


def test_pre_tokenizer_names_by_hash(gguf_dir):
    """The check-text hash of the release tokenizers: llama.cpp's own table names them."""
    assert gt.CHKTXT == gguf_reference.CHKTXT
    assert all(gguf_reference.PRE_BY_HASH[h] == name for h, name in gt.PRE_HASHES.items())
    tok, _ = rebuilt_tokenizer("glm", gguf_dir)
    assert gt.PRE_HASHES[gt.pre_hash(tok.encode(gt.CHKTXT, add_special_tokens=True))] == "glm4"
    assert {k: v for k, v, _ in exported("glm")}[gt.PRE] == "glm4"
    # with transformers' [gMASK] <sop> post-processor the same vocabulary hashes as glm-4-9b-chat's
    prefixed = [151331, 151333] + tok.encode(gt.CHKTXT)
    assert gt.PRE_HASHES[gt.pre_hash(prefixed)] == "chatglm-bpe"


# ---------------------------------------------------------------- GGUF reading

def test_read_gguf_metadata_equals_the_gguf_reader(tmp_path):
    path = tmp_path / "kinds.gguf"
    w = gguf.GGUFWriter(str(path), arch="chatglm")
    w.add_uint8("tokenizer.u8", 7)
    w.add_int16("tokenizer.i16", -3)
    w.add_uint32("tokenizer.u32", 4000000000)
    w.add_int64("tokenizer.i64", -(2 ** 40))
    w.add_float32("tokenizer.f32", -0.0)
    w.add_float64("tokenizer.f64", 0.1)
    w.add_bool("tokenizer.b", True)
    w.add_string("tokenizer.s", "é 的 \n")
    w.add_array("tokenizer.strings", ["a", "ĠĠ", "<|user|>"])
    w.add_array("tokenizer.ints", [1, -2, 3])
    w.add_array("tokenizer.floats", [-0.0, 1.5, -64906.0])
    w.add_array("tokenizer.bools", [True, False])
    w.add_string("other.key", "skipped")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    r = gguf.GGUFReader(str(path))
    expected = {k: f.contents() for k, f in r.fields.items() if k.startswith("tokenizer.")}
    got = gt.read_gguf_metadata(str(path))
    assert got == expected and list(got) == list(expected)
    assert str(got["tokenizer.floats"][0]) == "-0.0"
    assert gt.read_gguf_metadata(str(path), prefix="other.") == {"other.key": "skipped"}
    for bad in (b"", b"GGUF\x03\x00\x00\x00" + b"\x00" * 8 + b"\x05" + b"\x00" * 7, b"PK\x03\x04" + b"\x00" * 40):
        (tmp_path / "bad.gguf").write_bytes(bad)
        with pytest.raises(GlmcpuError, match="GGUF"):
            gt.read_gguf_metadata(str(tmp_path / "bad.gguf"))


# ---------------------------------------------------------------- damaged or foreign input

def _damaged(family, gguf_dir, **changes):
    f = dict(gguf_fields(family, gguf_dir))
    for key, value in changes.items():
        key = "tokenizer.ggml." + key
        if value is None:
            f.pop(key, None)
        else:
            f[key] = value
    return f


@pytest.mark.parametrize("family,changes,message", [
    ("chatglm3", {"tokens": None}, "tokenizer.ggml.tokens is missing"),
    ("chatglm3", {"model": None}, "tokenizer.ggml.model is missing"),
    ("chatglm3", {"scores": [0.0] * 10}, "tokenizer.ggml.scores has 10 entries but tokenizer.ggml.tokens has 65024"),
    ("chatglm3", {"scores": None}, "tokenizer.ggml.scores is missing"),
    ("glm4", {"token_type": [1, 1]}, "tokenizer.ggml.token_type has 2 entries"),
    ("chatglm3", {"model": "gpt2"}, "tokenizer.ggml.model is 'gpt2', but a chatglm3 model has a SentencePiece"),
    ("glm", {"model": "bert"}, "tokenizer.ggml.model is 'bert'"),
    ("glm", {"pre": "qwen2"}, "tokenizer.ggml.pre is 'qwen2'"),
    ("glm", {"merges": None}, "tokenizer.ggml.merges is missing"),
    ("glm", {"merges": ["a b c"]}, r"tokenizer.ggml.merges\[0\]"),
    ("chatglm3", {"pre": "llama-bpe"}, "tokenizer.ggml.pre is 'llama-bpe'"),
    ("glm4", {"eos_token_id": None, "tokens": ["!"] * 10, "token_type": [1] * 10}, "14 special tokens"),
])
def test_damaged_gguf_tokenizer_is_a_clear_error(family, changes, message, gguf_dir):
    with pytest.raises(GlmcpuError, match=message):
        gt.from_gguf(_damaged(family, gguf_dir, **changes), family)


def test_foreign_tokenizers_are_refused(gguf_dir):
    with pytest.raises(GlmcpuError, match=r"'<\|system\|>' follows chatglm2's special tokens"):
        gt.from_gguf(gguf_fields("chatglm3", gguf_dir), "chatglm2")  # a ChatGLM3 GGUF read as ChatGLM2
    with pytest.raises(GlmcpuError, match="special tokens"):
        gt.from_gguf(gguf_fields("chatglm2", gguf_dir), "chatglm3")
    tokens = list(gguf_fields("glm4", gguf_dir)[gt.TOKENS])
    tokens[5] = "a b"  # a space is not a byte-level character
    with pytest.raises(GlmcpuError, match="token 5 'a b' is not a byte-level BPE token"):
        gt.from_gguf(_damaged("glm4", gguf_dir, tokens=tokens), "glm4")
    for fam in ("chatglm1", "nope"):
        with pytest.raises(GlmcpuError, match="no tokenizer form for family"):
            gt.from_gguf(gguf_fields("glm4", gguf_dir), fam)
    with pytest.raises(GlmcpuError, match="must be a dict"):
        gt.from_gguf([("tokenizer.ggml.model", "llama")], "chatglm3")


def test_export_refuses_a_tokenizer_larger_than_the_model():
    with pytest.raises(GlmcpuError, match="only 320"):
        gt.to_gguf("chatglm3", "tokenizer.model", _bytes(CASES["chatglm3"][1]), None, None, 320)
    with pytest.raises(GlmcpuError, match="not a valid sentencepiece model"):
        gt.to_gguf("chatglm3", "tokenizer.model", b"not a model", None, None, 65024)
    with pytest.raises(GlmcpuError, match="no tokenizer form"):
        gt.to_gguf("chatglm1", "ice_text.model", b"", None, None, 130528)


def test_our_writer_is_read_back_by_the_gguf_reader(tmp_path):
    """convert/gguf_file.py's writer: every value type and a tensor, read by the gguf package."""
    from glmcpu.convert import gguf_file as GF
    w = GF.GGUFWriter("chatglm")
    for key, value, vtype in [("a.u8", 7, GF.UINT8), ("a.i16", -3, GF.INT16), ("a.u32", 4000000000, GF.UINT32),
                              ("a.i64", -(2 ** 40), GF.INT64), ("a.f32", 0.5, GF.FLOAT32), ("a.f64", 0.1, GF.FLOAT64),
                              ("a.b", True, GF.BOOL), ("a.s", "é 的 \n", GF.STRING),
                              ("a.strings", ["a", "ĠĠ", "<|user|>"], GF.ARRAY), ("a.ints", [1, -2, 3], GF.ARRAY),
                              ("a.floats", [-0.0, 1.5], GF.ARRAY), ("a.bools", [True, False], GF.ARRAY)]:
        w.add(key, value, vtype)
    x = np.arange(96, dtype=np.float32).reshape(3, 32)
    w.add_tensor("t", x.shape, 0)
    w.add_tensor("u", (5,), 1)
    path = str(tmp_path / "ours.gguf")
    w.write(path, [x, np.arange(5, dtype=np.float16)])
    r = gguf.GGUFReader(path)
    got = {k: f.contents() for k, f in r.fields.items() if k.startswith(("a.", "general."))}
    assert got == {"general.architecture": "chatglm", "a.u8": 7, "a.i16": -3, "a.u32": 4000000000,
                   "a.i64": -(2 ** 40), "a.f32": 0.5, "a.f64": 0.1, "a.b": True, "a.s": "é 的 \n",
                   "a.strings": ["a", "ĠĠ", "<|user|>"], "a.ints": [1, -2, 3], "a.floats": [-0.0, 1.5],
                   "a.bools": [True, False]}
    t, u = r.tensors
    assert t.name == "t" and list(t.shape) == [32, 3] and np.array_equal(t.data, x)
    assert u.name == "u" and np.array_equal(u.data, np.arange(5, dtype=np.float16))
    ours = GF.GGUFFile(path)
    assert [i.name for i in ours.tensors] == ["t", "u"]
    np.testing.assert_array_equal(ours.data(ours.tensors[0]).view(np.float32), x)
