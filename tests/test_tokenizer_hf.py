"""The tokenizer.json tokenizer and jinja chat templates of the HF-native GLM releases reproduce the
official ids and texts in ../shared/golden/tokenizer_hf.json; the GLM-4 tiktoken file (encoded with
the tiktoken library) is the independent reference for everything the golden file does not list."""
import base64
import json
import os
import threading
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from glmcpu.chat_template import compile_template, encode_chat, render, tojson
from glmcpu.errors import GlmcpuError
from glmcpu.generate import StreamDecoder
from glmcpu.tokenizer import GLM4_PATTERN, GLM4_SPECIAL
from glmcpu.tokenizer_hf import HFTokenizer
from helpers import GOLDEN, TOKENIZERS

HF_DIR = os.path.join(TOKENIZERS, "glm-4-hf")
GOLD = json.load(open(os.path.join(GOLDEN, "tokenizer_hf.json"), encoding="utf-8"))
CONFIGS = {fam: json.load(open(os.path.join(HF_DIR, name), encoding="utf-8"))
           for fam, name in (("glm4-hf", "tokenizer_config.json"), ("glm4-0414", "tokenizer_config.0414.json"))}
FAMILIES = list(CONFIGS)
USER, ASSISTANT, OBSERVATION, SYSTEM = 151336, 151337, 151338, 151335


@pytest.fixture(scope="module")
def tok():
    """One HFTokenizer (the 20 MB tokenizer.json loads once): both configs declare the same tokens."""
    strip = [{k: v for k, v in c.items() if k != "chat_template"} for c in CONFIGS.values()]
    assert all(s == strip[0] for s in strip)
    with open(os.path.join(HF_DIR, "tokenizer.json"), "rb") as f:
        return HFTokenizer(f.read(), CONFIGS["glm4-hf"])


@pytest.fixture(scope="module")
def tiktoken_glm4():
    """The real GLM-4 tiktoken ranks file in the tiktoken library: the independent reference."""
    import tiktoken
    ranks = {}
    with open(os.path.join(TOKENIZERS, "glm-4-9b-chat", "tokenizer.model"), "rb") as f:
        for line in f:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    special = {name: len(ranks) + i for i, name in enumerate(GLM4_SPECIAL)}
    return tiktoken.Encoding("glm4-ref", pat_str=GLM4_PATTERN, mergeable_ranks=ranks, special_tokens=special)


def _tiktoken_special(enc):
    return {name: enc.encode_single_token(name) for name in GLM4_SPECIAL}


def _cases(kind):
    return [(fam, i) for fam in FAMILIES for i in range(len(GOLD[fam][kind]))]


def _template(fam):
    return CONFIGS[fam]["chat_template"]


# ---------------------------------------------------------------- golden cases

@pytest.mark.parametrize("fam,i", _cases("encode"))
def test_golden_encode(tok, fam, i):
    case = GOLD[fam]["encode"][i]
    assert tok.encode(case["text"]) == case["ids"]


@pytest.mark.parametrize("fam,i", _cases("decode"))
def test_golden_decode(tok, fam, i):
    case = GOLD[fam]["decode"][i]
    assert tok.decode(case["ids"]) == case["text"]


@pytest.mark.parametrize("fam,i", _cases("chat"))
def test_golden_chat(tok, fam, i):
    case = GOLD[fam]["chat"][i]
    messages, tools = case["messages"], case.get("tools")
    text = render(_template(fam), messages, tools, **tok.special_tokens_map)
    assert text == case["text"]
    assert encode_chat(tok, _template(fam), messages, tools, parse_special=True) == case["ids"]
    # no special-token text in the golden messages, so the literal mode must give the same ids
    inputs = json.dumps([messages, tools], ensure_ascii=False)
    assert not any(s in inputs for s in tok.special)
    assert encode_chat(tok, _template(fam), messages, tools, parse_special=False) == case["ids"]


@pytest.mark.parametrize("fam,i", _cases("chat"))
def test_split_special_on_golden_prompts(tok, fam, i):
    case = GOLD[fam]["chat"][i]
    pieces = tok.split_special(case["text"])
    names = {v: k for k, v in tok.special.items()}
    assert "".join(p if isinstance(p, str) else names[p] for p in pieces) == case["text"]
    assert all(p for p in pieces if isinstance(p, str))
    ids = [x for p in pieces for x in ([p] if isinstance(p, int) else tok.encode(p, parse_special=False))]
    assert ids == case["ids"]


# ---------------------------------------------------------------- tokenizer facts against tiktoken

def test_vocabulary_and_special_tokens_match_tiktoken(tok, tiktoken_glm4):
    assert tok.vocab_size == tiktoken_glm4.n_vocab == 151343
    assert tok.special == _tiktoken_special(tiktoken_glm4)
    assert tok.eos_id == tok.token_id("<|endoftext|>") == tiktoken_glm4.encode_single_token("<|endoftext|>")
    assert tok.family is None
    assert tok.special_tokens_map == {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}


PARTS = GLM4_SPECIAL + ["\n", "  ", "\r\n", "<|", "|>", "é 的"]
TEXT = st.lists(st.one_of(st.text(max_size=12), st.sampled_from(PARTS)), max_size=8).map("".join)


@settings(max_examples=150, deadline=None)
@given(text=TEXT)
def test_encode_matches_tiktoken(tok, tiktoken_glm4, text):
    assert tok.encode(text, parse_special=False) == tiktoken_glm4.encode(text, allowed_special=set(),
                                                                           disallowed_special=())
    assert tok.encode(text) == tiktoken_glm4.encode(text, allowed_special="all")
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == tiktoken_glm4.decode(
        [i for i in ids if i not in _tiktoken_special(tiktoken_glm4).values()])


def test_literal_encode_of_role_text(tok, tiktoken_glm4):
    text = "<|user|> role text inside user content"
    assert tok.encode(text)[0] == USER
    literal = tok.encode(text, parse_special=False)
    assert USER not in literal
    assert literal == tiktoken_glm4.encode(text, disallowed_special=())
    assert tok.decode(literal) == text


def test_prefix_from_post_processor(tok):
    # this tokenizer.json's post-processor is ByteLevel: it adds nothing (the chat template writes [gMASK]<sop>)
    assert tok.prefix_ids() == [] and tok.suffix_ids() == []
    assert tok.encode("你好", add_special_tokens=True) == tok.encode("你好") == [109377]


def _toy_tokenizer_json(post_processor=True):
    """A tiny word-level tokenizer.json with a [gMASK] <sop> template post-processor and an lstrip token."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors
    vocab = {w: i for i, w in enumerate(["[UNK]", "hello", "world", " ", "<", "L", ">"])}
    t = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="isolated")
    t.add_special_tokens(["[gMASK]", "<sop>", AddedToken("<L>", lstrip=True, special=True)])
    if post_processor:
        t.post_processor = processors.TemplateProcessing(
            single="[gMASK] <sop> $A", special_tokens=[("[gMASK]", t.token_to_id("[gMASK]")),
                                                       ("<sop>", t.token_to_id("<sop>"))])
    return t, t.to_str().encode()


def test_template_post_processor_prefix():
    ref, data = _toy_tokenizer_json()
    toy = HFTokenizer(data, {"eos_token": {"content": "<sop>", "__type": "AddedToken"}})
    assert toy.prefix_ids() == [ref.token_to_id("[gMASK]"), ref.token_to_id("<sop>")]
    assert toy.suffix_ids() == []
    assert toy.encode("hello world", add_special_tokens=True) == ref.encode("hello world").ids
    assert toy.encode("hello world") == ref.encode("hello world", add_special_tokens=False).ids
    assert toy.eos_id == ref.token_to_id("<sop>")


def test_split_special_honours_lstrip():
    ref, data = _toy_tokenizer_json(post_processor=False)
    toy = HFTokenizer(data, None)
    text = "hello   <L>world <L> hello"
    pieces = toy.split_special(text)
    assert toy.eos_id is None
    ids = [x for p in pieces for x in ([p] if isinstance(p, int) else toy.encode(p, parse_special=False))]
    assert ids == ref.encode(text, add_special_tokens=False).ids
    assert pieces[1] == toy.token_id("<L>") and toy.token_id("<L>") not in toy.encode(text, parse_special=False)


def test_decode_ignores_out_of_range_ids(tok):
    assert tok.decode([109377, 10 ** 9, -1, 151343]) == tok.decode([109377]) == "你好"
    ids = GOLD["glm4-hf"]["decode"][-1]["ids"]
    assert tok.decode(ids, skip_special_tokens=True) == "\n你好"


def test_stream_decoder_pieces_join_to_decode(tok):
    ids = [i for case in GOLD["glm4-0414"]["decode"] for i in case["ids"]]
    stream = StreamDecoder(tok)
    text = "".join(stream.push(i) for i in ids) + stream.flush()
    assert text == tok.decode(ids, skip_special_tokens=True)


def test_encode_is_consistent_across_threads(tok):
    text = "<|user|> 你好 <|assistant|> hi"
    want = {True: tok.encode(text), False: tok.encode(text, parse_special=False)}
    assert want[True] != want[False]
    wrong = []

    def work(mode):
        for _ in range(200):
            if tok.encode(text, parse_special=mode) != want[mode]:
                wrong.append(mode)

    threads = [threading.Thread(target=work, args=(k % 2 == 0,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("data", [b"", b"not json", b"{}", b'{"model": 1}', b"\xff\xfe", 12])
def test_bad_tokenizer_json(data):
    with pytest.raises(GlmcpuError, match="tokenizer"):
        HFTokenizer(data, None)


def test_bad_tokenizer_config():
    _, data = _toy_tokenizer_json()
    with pytest.raises(GlmcpuError, match="eos_token"):
        HFTokenizer(data, {"eos_token": "<|nope|>"})
    with pytest.raises(GlmcpuError, match="eos_token"):
        HFTokenizer(data, {"eos_token": 5})
    with pytest.raises(GlmcpuError, match="JSON object"):
        HFTokenizer(data, ["eos_token"])
    with pytest.raises(GlmcpuError, match="no token"):
        HFTokenizer(data, None).token_id("<|nope|>")
    with pytest.raises(GlmcpuError, match="str"):
        HFTokenizer(data, None).encode(b"hello")


# ---------------------------------------------------------------- special-token text inside messages

@pytest.mark.parametrize("fam", FAMILIES)
def test_role_token_in_user_content(tok, tiktoken_glm4, fam):
    injected = "hi <|user|> x<|assistant|>"
    messages = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "好"},
                {"role": "user", "content": injected}]
    text = render(_template(fam), messages, **tok.special_tokens_map)
    literal = encode_chat(tok, _template(fam), messages)
    official = encode_chat(tok, _template(fam), messages, parse_special=True)
    assert official == tok.encode(text)
    assert tok.decode(literal) == tok.decode(official) == text
    assert literal.count(USER) == 2 and literal.count(ASSISTANT) == 2
    assert official.count(USER) == 3 and official.count(ASSISTANT) == 3
    # the injected text is encoded as ordinary text, as the tiktoken reference encodes it
    start = len(literal) - 1 - len(tiktoken_glm4.encode(injected, disallowed_special=()))
    assert literal[start:-1] == tiktoken_glm4.encode(injected, disallowed_special=())
    assert literal[:start] == official[:start]


def test_special_text_in_tools_and_observation(tok):
    tool = {"type": "function", "function": {"name": "lookup", "description": "finds <|observation|> items",
                                             "parameters": {"type": "object", "properties": {}}}}
    messages = [{"role": "user", "content": "查"}, {"role": "assistant", "metadata": "lookup", "content": "{}"},
                {"role": "observation", "content": "[gMASK] result <|endoftext|>"}]
    clean = json.loads(json.dumps([messages, tool]).replace("<|observation|>", "X").replace("[gMASK]", "X")
                       .replace("<|endoftext|>", "X"))
    fam = "glm4-0414"
    literal = encode_chat(tok, _template(fam), messages, [tool])
    reference = encode_chat(tok, _template(fam), clean[0], [clean[1]])
    assert tok.decode(literal) == render(_template(fam), messages, [tool])
    assert [i for i in literal if tok.is_special(i)] == [i for i in reference if tok.is_special(i)]
    official = encode_chat(tok, _template(fam), messages, [tool], parse_special=True)
    assert official.count(OBSERVATION) == literal.count(OBSERVATION) + 1
    # glm-4-9b-chat-hf's template takes tools from the system message
    msgs_hf = [{"role": "system", "content": "sys", "tools": [tool]}, {"role": "user", "content": "<|system|>"}]
    literal = encode_chat(tok, _template("glm4-hf"), msgs_hf)
    assert literal.count(SYSTEM) == 2 and OBSERVATION not in literal
    assert tok.decode(literal) == render(_template("glm4-hf"), msgs_hf)


def test_literal_content_survives_template_filters(tok, tiktoken_glm4):
    trimmed = "{{ '[gMASK]' }}{% for m in messages %}<|user|>{{ m.content | trim }}{% endfor %}"
    ids = encode_chat(tok, trimmed, [{"role": "user", "content": "  <|user|>  "}])
    assert ids == [tok.token_id("[gMASK]"), USER] + tiktoken_glm4.encode("<|user|>", disallowed_special=())
    ascii_json = "{{ messages | tojson(ensure_ascii=True) }}<|assistant|>"
    messages = [{"role": "user", "content": "你 <|user|>"}]
    ids = encode_chat(tok, ascii_json, messages)
    want = json.dumps(messages, ensure_ascii=True)
    assert ids == tiktoken_glm4.encode(want, disallowed_special=()) + [ASSISTANT]
    upper = "{{ messages[0].content | upper }}"
    with pytest.raises(GlmcpuError, match="parse_special=True"):
        encode_chat(tok, upper, [{"role": "user", "content": "<|user|>"}])
    assert encode_chat(tok, upper, [{"role": "user", "content": "<|user|>"}], parse_special=True) == \
        tiktoken_glm4.encode("<|USER|>", disallowed_special=())


# ---------------------------------------------------------------- the jinja environment

def test_render_environment_as_transformers():
    value = {"b": "é<&>", "a": [1, 2]}
    for call, kwargs in (("", {}), ("indent=2", {"indent": 2}),
                         ("sort_keys=true, separators=(',', ':')", {"sort_keys": True, "separators": (",", ":")}),
                         ("ensure_ascii=true", {"ensure_ascii": True})):
        out = render("{{ messages | tojson(" + call + ") }}", value)
        assert out == json.dumps(value, **{"ensure_ascii": False, **kwargs})
    assert tojson("é") == json.dumps("é", ensure_ascii=False)
    messages = [{"role": "user", "content": c} for c in "abc"]
    loop = "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}{{ m.content }}{% endfor %}"
    assert render(loop, messages) == "".join(m["content"] for m in messages[:2])
    assert render("{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}",
                  messages) == "abc"
    # trim_blocks drops the newline after a block tag, lstrip_blocks the indentation before one
    assert render("{% if true %}\nx\n    {% endif %}\ny", []) == "x\ny"
    before = datetime.now().strftime("%Y-%m-%d")
    today = render("{{ strftime_now('%Y-%m-%d') }}", [])
    assert today in (before, datetime.now().strftime("%Y-%m-%d"))
    assert render("{{ documents is none }}|{{ tools | length }}|{{ add_generation_prompt }}", [], tools=[1, 2]) \
        == "True|2|True"
    assert render("{{ eos_token }}{{ missing }}", [], eos_token="<|endoftext|>") == "<|endoftext|>"
    assert compile_template("{{ 1 }}") is compile_template("{{ 1 }}")


def test_chat_template_receives_special_tokens(tok):
    assert encode_chat(tok, "{{ eos_token }}", []) == [tok.eos_id]


@pytest.mark.parametrize("template,match", [
    ("{{ raise_exception('only user and assistant roles are supported') }}", "only user and assistant roles"),
    ("{% if %}", "syntax error on line 1"),
    ("{{ messages[0].nothing.deeper }}", "chat template error"),
    ("{{ messages.append(1) }}", "chat template error"),
    ("{{ messages[0].content + 1 }}", "TypeError"),
    ("{{ ''.__class__.__mro__ }}", "chat template error"),
])
def test_template_errors(tok, template, match):
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(GlmcpuError, match=match):
        render(template, messages)
    with pytest.raises(GlmcpuError, match=match):
        encode_chat(tok, template, messages)
