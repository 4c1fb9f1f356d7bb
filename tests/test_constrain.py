"""Constrained decoding (glmcpu/constrain.py): the exact token bytes of every tokenizer family, the
grammars (random walks through them always give replies json.loads / jsonschema / the tool-call
parser accept), and constrained generation on the demo model (valid replies, exactness, the cached
tokenizer table, the clear error without llguidance)."""
import base64
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

import glmcpu
from glmcpu import families, toolcalls
from glmcpu.errors import GlmcpuError
from glmcpu.generate import Sampler, SamplingParams
from glmcpu.requests import GenerationRequest, run
from glmcpu.tokenizer import load_tokenizer
from glmcpu.tokenizer_hf import HFTokenizer
from helpers import GOLDEN, TOKENIZERS

llg = pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")
from glmcpu import constrain as C  # noqa: E402

GOLD = json.load(open(os.path.join(GOLDEN, "tokenizer.json"), encoding="utf-8"))
GOLD_HF = json.load(open(os.path.join(GOLDEN, "tokenizer_hf.json"), encoding="utf-8"))
TOKENIZER_FILES = {
    "chatglm3": "chatglm2-chatglm3/tokenizer.model",
    "chatglm2": "chatglm2-chatglm3/tokenizer.model",
    "chatglm1": "chatglm-6b/ice_text.model",
    "glm4": "glm-4-9b-chat/tokenizer.model",
}
_toks = {}


def tok(family):
    if family not in _toks:
        if family == "hf":
            d = os.path.join(TOKENIZERS, "glm-4-hf")
            with open(os.path.join(d, "tokenizer.json"), "rb") as f:
                _toks[family] = HFTokenizer(f.read(), json.load(open(os.path.join(d, "tokenizer_config.json"))))
        else:
            with open(os.path.join(TOKENIZERS, TOKENIZER_FILES[family]), "rb") as f:
                _toks[family] = load_tokenizer(family, {"type": families.get(family).TOKENIZER_KIND}, f.read())
    return _toks[family]


# ---------------------------------------------------------------- token bytes

def _encode_cases():
    return [(fam, i) for fam in TOKENIZER_FILES for i in range(len(GOLD[fam]["encode"]))] + \
        [("hf", (fam, i)) for fam in ("glm4-hf", "glm4-0414") for i in range(len(GOLD_HF[fam]["encode"]))]


@pytest.mark.parametrize("family,case", _encode_cases())
def test_token_bytes_join_to_the_golden_text(family, case):
    """The official ids of every golden encode case: their token bytes joined are the UTF-8 text
    (sentencepiece: after the dummy-prefix space its decode drops). ChatGLM-6B's tokenizer
    normalizes full-width punctuation (NFKC); there the text is what its official decode gives."""
    e = GOLD_HF[case[0]]["encode"][case[1]] if family == "hf" else GOLD[family]["encode"][case]
    t = tok(family)
    text = e["text"]
    if family == "chatglm1":
        decoded = [d["text"] for d in GOLD[family]["decode"] if d["ids"] == e["ids"]]
        text = decoded[0] if decoded else t.decode(e["ids"])
    want = (" " if t.strips_leading_space else "") + text
    assert b"".join(t.token_bytes(i) for i in e["ids"]) == want.encode("utf-8")


def test_hf_byte_level_bytes_equal_the_tiktoken_ranks():
    """glm-4-9b-chat-hf's tokenizer.json holds GLM-4's tiktoken ranks: the byte-to-unicode mapping
    must give back every rank's bytes (the tiktoken file, read here independently)."""
    ranks = {}
    with open(os.path.join(TOKENIZERS, "glm-4-9b-chat", "tokenizer.model"), "rb") as f:
        for line in f:
            if line.strip():
                b64, rank = line.split()
                ranks[int(rank)] = base64.b64decode(b64)
    hf, tk = tok("hf"), tok("glm4")
    got = hf.vocab_bytes()
    assert len(got) == hf.vocab_size == tk.vocab_size == len(ranks) + 14
    assert got[:len(ranks)] == [ranks[i] for i in range(len(ranks))]
    assert tk.vocab_bytes()[:len(ranks)] == got[:len(ranks)]
    for name, i in tk.special.items():
        assert got[i] == tk.token_bytes(i) == name.encode() and i in hf.special_token_ids()
        assert i in tk.special_token_ids()


@pytest.mark.parametrize("family", ["chatglm3", "chatglm1"])
def test_sentencepiece_piece_bytes_against_its_decoder(family):
    """Every 13th ordinary piece decoded after "a" (so no dummy prefix is dropped) by the
    tokenizer's own decode adds exactly its token bytes; byte pieces <0xNN> are that byte."""
    t = tok(family)
    sp, a, special = t.sp, t.sp.piece_to_id("a"), t.special_token_ids()
    for i in range(3, sp.vocab_size(), 13):
        if sp.is_control(i) or sp.is_unknown(i) or i in special:
            continue
        if sp.is_byte(i):
            assert t.token_bytes(i) == bytes([int(sp.id_to_piece(i)[3:5], 16)])
        else:
            assert t.decode([a, i]) == "a" + t.token_bytes(i).decode("utf-8"), (i, sp.id_to_piece(i))


def test_special_tokens_are_marked_and_named():
    t3 = tok("chatglm3")
    for name in ("<|user|>", "<|assistant|>", "<|observation|>", "[gMASK]", "sop"):
        i = t3.token_id(name)
        assert t3.token_bytes(i) == name.encode() and i in t3.special_token_ids()
    assert {0, 1, 2} <= t3.special_token_ids()  # <unk> <s> </s>: names, never text
    assert t3.token_bytes(2) == b"</s>"
    t1 = tok("chatglm1")
    assert t1.eos_id in t1.special_token_ids() and t1.token_bytes(t1.sp.piece_to_id("<n>")) == b"\n"
    assert t1.token_bytes(t1.sp.piece_to_id("<|blank_4|>")) == b"    "
    assert t1.token_bytes(t1.sp.piece_to_id("<|tab|>")) == b"\t"
    with pytest.raises(GlmcpuError, match="out of range"):
        t3.token_bytes(t3.vocab_size)


def test_token_bytes_need_a_byte_level_tokenizer_json():
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers.models import WordLevel
    tk = tokenizers.Tokenizer(WordLevel({"hello": 0, "[UNK]": 1}, unk_token="[UNK]"))
    t = HFTokenizer(tk.to_str().encode())
    with pytest.raises(GlmcpuError, match="byte-level"):
        t.token_bytes(0)


# ---------------------------------------------------------------- grammars, walked at random

class _Byte:
    """The grammar builder's view of a tokenizer: only whether a dummy-prefix space may lead."""

    def __init__(self, lead):
        self.strips_leading_space = lead


BYTES = llg.LLTokenizer("byte")  # one token per byte: walks cover every way a reply can be spelt


def _walk(grammar, rng, limit=300):
    """A random reply the grammar accepts (a byte at a time, ending when allowed at random), or None."""
    m = llg.LLMatcher(BYTES, grammar, log_level=0)
    assert not m.is_error(), m.get_error()
    out = bytearray()
    while not m.is_stopped():
        if m.is_accepting() and rng.random() < 0.3:
            break
        bits = np.unpackbits(np.frombuffer(m.compute_bitmask(), np.uint8), bitorder="little")[:256]
        allowed = np.flatnonzero(bits)
        ascii_ = allowed[allowed < 128]  # mostly ASCII, so strings end now and then
        b = int(rng.choice(ascii_ if len(ascii_) and rng.random() < 0.9 else allowed))
        assert m.consume_token(b)
        out.append(b)
        if len(out) > limit:
            return None
    return out.decode("utf-8")


SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 6}, "n": {"type": "integer", "minimum": -3, "maximum": 40},
    "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}, "ok": {"type": "boolean"}},
    "required": ["name", "n"], "additionalProperties": False}
WEATHER = {"name": "get_weather", "parameters": {"type": "object", "properties": {
    "city": {"type": "string"}, "unit": {"enum": ["c", "f"]}, "days": {"type": "integer"},
    "hourly": {"type": "boolean"}, "x": {}, "hours": {"type": "array", "items": {"type": "integer"}},
    "opt": {"type": ["string", "null"]}}, "required": ["city"]}}
NOARGS = {"name": "now"}
TOOLS = [{"type": "function", "function": f} for f in (WEATHER, NOARGS)]


@pytest.mark.parametrize("lead", [False, True])
def test_json_grammar_walks_are_valid_json(lead):
    rng = random.Random(1)
    for schema in ({"type": "object"}, SCHEMA):
        g = C.grammar(_Byte(lead), json_schema=schema)
        done = [r for r in (_walk(g, rng) for _ in range(40)) if r is not None]
        assert len(done) >= 15
        for reply in done:
            value = json.loads(reply)
            jsonschema.validate(value, schema)


@pytest.mark.parametrize("family", ["chatglm3", "glm4"])
def test_tool_call_grammar_walks_parse_into_calls(family):
    """Every reply a forced-call grammar allows is read by toolcalls.parse_reply as a call of an
    offered function; GLM-4's arguments follow the parameters schema, ChatGLM3's keys are the
    declared properties (the required one present) with values of the declared types."""
    rng = random.Random(2)
    g = C.grammar(_Byte(family == "chatglm3"), family=family, functions=[WEATHER, NOARGS])
    done = [r for r in (_walk(g, rng) for _ in range(60)) if r is not None]
    assert len(done) >= 20 and {r.split("\n")[0].strip() for r in done} == {"get_weather", "now"}
    for reply in done:
        parsed = toolcalls.parse_reply(family, reply, TOOLS)
        assert parsed["tool_calls"] and len(parsed["tool_calls"]) == 1 and parsed["content"] is None, reply
        call = parsed["tool_calls"][0]["function"]
        args = json.loads(call["arguments"])
        if call["name"] == "now":
            assert family == "chatglm3" and args == {} or family == "glm4" and isinstance(args, dict)
            continue
        jsonschema.validate(args, WEATHER["parameters"])


def test_chatglm3_keyword_names_must_be_identifiers():
    f = {"name": "f", "parameters": {"type": "object", "properties": {"a-b": {"type": "string"}, "c": {}},
                                     "required": ["a-b"]}}
    with pytest.raises(GlmcpuError, match="'a-b' is not a Python identifier"):
        C.grammar(_Byte(True), family="chatglm3", functions=[f])
    f["parameters"]["required"] = ["c"]  # an optional odd name is left out; the call still works
    rng = random.Random(3)
    g = C.grammar(_Byte(True), family="chatglm3", functions=[f])
    for reply in filter(None, (_walk(g, rng) for _ in range(10))):
        assert set(json.loads(toolcalls.parse_reply("chatglm3", reply, [{"function": f}])["tool_calls"][0]
                              ["function"]["arguments"])) == {"c"}


@pytest.mark.parametrize("schema,match", [
    ({"type": "foo"}, "Invalid type"), ({"not": {}}, "Unimplemented"), ({"properties": 5}, "properties"),
    ({"type": "string", "pattern": "(?=a)"}, "look-around"), ({"$ref": "https://example.com/s.json"}, "example.com"),
    ({"type": "integer", "minimum": 5, "maximum": 1}, "Unsatisfiable"), ([1], "object"),
])
def test_check_schema_refuses_with_the_reason(schema, match):
    with pytest.raises(GlmcpuError, match=match):
        C.check_schema(schema)


# ---------------------------------------------------------------- generation on the demo model

@pytest.fixture(scope="module")
def demo():
    return glmcpu.load(glmcpu.demo_model_path(), n_ctx=256, threads=1)  # a tiny model: one thread is fastest


POEM = [{"role": "user", "content": "床前明月光"}]
POEM_SCHEMA = {"type": "object", "properties": {"poem": {"type": "string", "maxLength": 10},
                                                "n": {"type": "integer", "minimum": 0, "maximum": 99}},
               "required": ["poem", "n"], "additionalProperties": False}


def _generate(model, constraint=None, messages=POEM, **sampling):
    req = GenerationRequest(model.chat_prompt(messages), SamplingParams(**sampling), constraint=constraint)
    text = "".join(run(model, req))
    return text, req.result


def _free_text(tok, forbid=""):
    """A grammar for any text without the characters ``forbid`` (the dummy-prefix space allowed)."""
    cls = "".join("\\u%04x" % ord(c) for c in "{}" + forbid)
    lead = '" "? ' if tok.strips_leading_space else ""
    return json.dumps({"grammars": [{"lark_grammar": '%llguidance {"no_forcing": true}\n'
                                                     f"start: {lead}/[^{cls}]*/"}]})


def test_greedy_reply_that_fits_is_unchanged_and_the_mask_binds(demo):
    want, plain = _generate(demo, temperature=0, max_new_tokens=40)
    assert want and "{" not in want and "。" in want
    got, res = _generate(demo, C.Constraint(demo, _free_text(demo.tokenizer)), temperature=0, max_new_tokens=40)
    assert (got, res.completion_tokens, res.finish_reason) == (want, plain.completion_tokens, plain.finish_reason)
    other, _ = _generate(demo, C.Constraint(demo, _free_text(demo.tokenizer, "。")), temperature=0, max_new_tokens=40)
    assert "。" not in other and other != want
    for seed in range(3):  # sampled too: a masked token is never drawn
        text, _ = _generate(demo, C.Constraint(demo, _free_text(demo.tokenizer, "。，")), temperature=1.2,
                            top_p=0.95, seed=seed, max_new_tokens=30)
        assert not set(text) & set("。，")


def test_sampler_never_draws_a_masked_token():
    rng = np.random.default_rng(0)
    for trial in range(200):
        logits = rng.normal(0, 3, 500).astype(np.float32)
        allowed = rng.random(500) < 0.02
        allowed[rng.integers(500)] = True
        masked = np.where(allowed, logits, np.float32(-np.inf))
        t, p = [(0.0, 1.0), (0.7, 0.9), (1.5, 1.0), (1.0, 0.3)][trial % 4]
        nxt = Sampler(SamplingParams(temperature=t, top_p=p, seed=trial))(masked, [])
        assert allowed[nxt]


@pytest.mark.parametrize("schema", [{"type": "object"}, POEM_SCHEMA])
def test_json_replies_are_valid_on_several_seeds(demo, schema):
    schema_ok = 0
    for seed in range(4):
        text, res = _generate(demo, C.Constraint(demo, C.grammar(demo.tokenizer, json_schema=schema)),
                              temperature=1.0, top_p=0.95, seed=seed, max_new_tokens=160)
        if res.finish_reason == "length":  # free strings may run on in a poem model; bounded ones end
            assert schema is not POEM_SCHEMA, text
            continue
        assert res.finish_reason == "stop"
        jsonschema.validate(json.loads(text), schema)
        schema_ok += 1
    assert schema_ok >= (4 if schema is POEM_SCHEMA else 0)


def test_complete_grammar_ends_the_reply_with_stop(demo):
    g = C.grammar(demo.tokenizer, json_schema={"enum": ["yes", "no"]})
    text, res = _generate(demo, C.Constraint(demo, g), temperature=0, max_new_tokens=50)
    assert json.loads(text) in ("yes", "no") and res.finish_reason == "stop" and res.completion_tokens < 30


def test_tokenizer_table_is_built_once(demo):
    a = C.Constraint(demo, C.grammar(demo.tokenizer, json_schema={"type": "object"}))
    b = C.Constraint(demo, C.grammar(demo.tokenizer, json_schema=POEM_SCHEMA))
    eos = demo.tokenizer.eos_id
    assert C.lltokenizer(demo.tokenizer, demo.vocab_size, eos) is C.lltokenizer(demo.tokenizer, demo.vocab_size, eos)
    assert a.matcher is not b.matcher and a.n_vocab == demo.vocab_size
    ok = a.allowed()
    assert ok.dtype == bool and ok.shape == (demo.vocab_size,)
    assert not ok[demo.tokenizer.vocab_size:].any()  # the padded logits are never allowed
    assert not ok[[demo.tokenizer.token_id(n) for n in ("<|user|>", "<|observation|>")]].any()


def test_missing_llguidance_is_a_clear_error_only_when_asked(demo, monkeypatch):
    monkeypatch.setitem(sys.modules, "llguidance", None)  # import llguidance now fails
    with pytest.raises(GlmcpuError, match=r'pip install "glmcpu\[server\]"'):
        C.Constraint(demo, "{}")
    with pytest.raises(GlmcpuError, match=r'pip install "glmcpu\[server\]"'):
        C.check_schema({"type": "object"})
    text, res = _generate(demo, temperature=0, max_new_tokens=5)  # plain generation needs none
    assert res.completion_tokens >= 1


def test_importing_glmcpu_and_its_server_does_not_import_llguidance():
    code = "import sys, glmcpu, glmcpu.requests, glmcpu.server, glmcpu.constrain; print('llguidance' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
