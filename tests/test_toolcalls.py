"""Tool calls (glmcpu/toolcalls.py): prompts equal the ids of the official rules in
tests/data/toolcall_cases.json (made by tests/data/make_toolcall_cases.py, an independent
re-implementation, itself checked here against transformers' own rendering in the golden data);
official-format replies parse to the right tool_calls or plain content; bad input is one
GlmcpuError."""
import importlib.util
import json
import keyword
import os
import re

import pytest
from hypothesis import given, settings, strategies as st

from glmcpu import families
from glmcpu.chat import chat_prompt
from glmcpu.errors import GlmcpuError
from glmcpu.tokenizer import load_tokenizer
from glmcpu.toolcalls import (parse_reply, render_messages, tool_call_possible, tools_for_prompt)
from helpers import GOLDEN, TOKENIZERS

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
CASES = json.load(open(os.path.join(DATA, "toolcall_cases.json"), encoding="utf-8"))["cases"]
TOKENIZER_FILES = {"chatglm3": "chatglm2-chatglm3/tokenizer.model", "glm4": "glm-4-9b-chat/tokenizer.model",
                   "chatglm2": "chatglm2-chatglm3/tokenizer.model"}
_toks = {}


def tok(family):
    if family not in _toks:
        with open(os.path.join(TOKENIZERS, TOKENIZER_FILES[family]), "rb") as f:
            _toks[family] = load_tokenizer(family, {"type": families.get(family).TOKENIZER_KIND}, f.read())
    return _toks[family]


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "查询天气",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
FLIGHT = {"type": "function", "function": {"name": "book_flight", "parameters": {"type": "object"}}}
TOOLS = [WEATHER, FLIGHT]
CALL_ID = re.compile(r"^call_[A-Za-z0-9]{24}$")


def _case_id(c):
    return f"{c['family']}-{c['name']}"


# ---------------------------------------------------------------- prompts vs the official rules

@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_rendered_prompt_equals_official_ids(case):
    shown = tools_for_prompt(case["tools"], case.get("tool_choice"))
    messages = render_messages(case["family"], case["messages"], shown)
    assert chat_prompt(tok(case["family"]), messages) == case["ids"]


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_chat_prompt_takes_openai_messages(case):
    """What the server does: chat_prompt with the OpenAI messages and the tools to show."""
    shown = tools_for_prompt(case["tools"], case.get("tool_choice"))
    assert chat_prompt(tok(case["family"]), case["messages"], tools=shown) == case["ids"]


def _generator():
    path = os.path.join(DATA, "make_toolcall_cases.py")
    spec = importlib.util.spec_from_file_location("make_toolcall_cases", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _golden_hf_tools_case():
    gold = json.load(open(os.path.join(GOLDEN, "tokenizer_hf.json"), encoding="utf-8"))["glm4-hf"]["chat"]
    [case] = [c for c in gold if any("tools" in m for m in c["messages"])]
    return case


def test_case_generator_renders_glm4_as_transformers_does():
    """The reference renderer of make_toolcall_cases.py reproduces a prompt with tools that
    transformers rendered from the same glm-4-9b-chat template (text and ids)."""
    gen, case = _generator(), _golden_hf_tools_case()
    with open(os.path.join(TOKENIZERS, "glm-4-9b-chat", "tokenizer_config.json"), encoding="utf-8") as f:
        template = json.load(f)["chat_template"]
    specials = sorted(tok("glm4").special, key=len, reverse=True)
    text = gen.render_template(template, case["messages"])
    assert text == case["text"]
    assert gen.tokenize_like_hf(tok("glm4"), specials, text) == case["ids"]


def test_glm4_tools_block_equals_transformers_rendering():
    """Our GLM-4 tools system message, with the golden case's own system text after it, gives the
    ids transformers produced for that template with tools."""
    case = _golden_hf_tools_case()
    system, user = case["messages"]
    ours = render_messages("glm4", [user], system["tools"])
    assert ours[0]["role"] == "system" and "# 可用工具\n## get_weather\n\n{\n    \"name\"" in ours[0]["content"]
    messages = [ours[0], {"role": "system", "content": system["content"]}, ours[1]]
    assert chat_prompt(tok("glm4"), messages) == case["ids"]


# ---------------------------------------------------------------- rendering rules

def test_chatglm3_rendering():
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "北京？"},
            {"role": "assistant", "content": "好的，我查一下。", "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather",
                              "arguments": '{"city": "北京", "days": [1, 2.5], "x": null, "ok": true}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "晴"}]
    out = render_messages("chatglm3", msgs, TOOLS)
    assert [(m["role"], m["metadata"]) for m in out] == [
        ("system", ""), ("user", ""), ("assistant", ""), ("assistant", "get_weather"), ("observation", "")]
    assert out[0]["content"] == ("Answer the following questions as best as you can. You have access to the "
                                 "following tools:\n" + json.dumps([WEATHER["function"], FLIGHT["function"]],
                                                                  indent=4, ensure_ascii=False))
    assert out[2]["content"] == "好的，我查一下。"
    assert out[3]["content"] == "```python\ntool_call(city='北京', days=[1, 2.5], x=None, ok=True)\n```"
    assert out[4]["content"] == "晴"


def test_system_message_kept_without_tools_and_text_parts_joined():
    msgs = [{"role": "system", "content": [{"type": "text", "text": "be"}, {"type": "text", "text": "brief"}]},
            {"role": "user", "content": [{"type": "text", "text": "你好"}]}]
    for family in ("chatglm3", "glm4"):
        out = render_messages(family, msgs, None)
        assert [(m["role"], m["content"]) for m in out] == [("system", "be\nbrief"), ("user", "你好")]
        assert chat_prompt(tok(family), msgs) == chat_prompt(tok(family), [
            {"role": "system", "content": "be\nbrief"}, {"role": "user", "content": "你好"}])


def test_glm4_call_keeps_the_arguments_string_and_drops_empty_messages():
    raw = '{"city":"北京"}'
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": raw}}]},
        {"role": "tool", "content": ""}, {"role": "user", "content": "again"}]
    out = render_messages("glm4", msgs, [WEATHER])
    assert [(m["role"], m["metadata"], m["content"]) for m in out[1:]] == [
        ("user", "", "q"), ("assistant", "get_weather", raw), ("user", "", "again")]
    # ChatGLM3's build_single_message writes every message, even an empty one
    assert [m["role"] for m in render_messages("chatglm3", msgs, [WEATHER])] == [
        "system", "user", "assistant", "observation", "user"]


def test_tools_for_prompt():
    assert tools_for_prompt(TOOLS, None) == TOOLS
    assert tools_for_prompt(TOOLS, "auto") == TOOLS
    assert tools_for_prompt(TOOLS, "required") == TOOLS
    assert tools_for_prompt(TOOLS, "none") == []
    assert tools_for_prompt(TOOLS, {"type": "function", "function": {"name": "book_flight"}}) == [FLIGHT]
    assert tools_for_prompt(None, "auto") == []


@pytest.mark.parametrize("family", ["chatglm1", "chatglm2"])
def test_families_without_tools_refuse(family):
    msg = f"the {family} chat format has no tool calls; use chatglm3, glm4 or a model with a chat template"
    with pytest.raises(GlmcpuError) as e:
        render_messages(family, [{"role": "user", "content": "hi"}], TOOLS)
    assert str(e.value) == msg
    with pytest.raises(GlmcpuError) as e:
        parse_reply(family, "get_weather\n{}", TOOLS)
    assert str(e.value) == msg


def test_chatglm2_chat_prompt_refuses_tools():
    with pytest.raises(GlmcpuError, match="the chatglm2 chat format has no tool calls"):
        chat_prompt(tok("chatglm2"), [{"role": "user", "content": "hi"}], tools=TOOLS)


def _user(text="q"):
    return [{"role": "user", "content": text}]


def _with_call(function):
    return [{"role": "user", "content": "q"},
            {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": function}]},
            {"role": "tool", "content": "r"}]


BAD_RENDER = [
    ("tools", _user(), {"type": "function"}, "tools must be a list"),
    ("no function", _user(), [{"type": "function", "name": "x"}], r"tools\[0\] must be"),
    ("retrieval", _user(), [{"type": "retrieval", "function": {"name": "x"}}], "only \"function\" tools"),
    ("empty name", _user(), [{"type": "function", "function": {"name": ""}}], "name must be a non-empty"),
    ("newline name", _user(), [{"type": "function", "function": {"name": "a\nb"}}], "one-line"),
    ("same names", _user(), [WEATHER, WEATHER], "two tools are called 'get_weather'"),
    ("parameters", _user(), [{"type": "function", "function": {"name": "x", "parameters": "city"}}], "JSON schema"),
    ("not json", _user(), [{"type": "function", "function": {"name": "x", "parameters": {"a": {1, 2}}}}],
     "plain JSON data"),
    ("messages", [], TOOLS, "non-empty list"),
    ("role", [{"role": "bot", "content": "x"}], TOOLS, r"messages\[0\] must be a dict with a role"),
    ("content", [{"role": "user", "content": 3}], TOOLS, r"messages\[0\] \(user\) needs a content string"),
    ("image", [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], TOOLS,
     "only text parts"),
    ("args", _with_call({"name": "get_weather", "arguments": "city=北京"}), TOOLS, "JSON object string"),
    ("args array", _with_call({"name": "get_weather", "arguments": "[1]"}), TOOLS, "JSON object string"),
    ("args nan", _with_call({"name": "get_weather", "arguments": '{"x": NaN}'}), TOOLS, "JSON object string"),
    ("call name", _with_call({"arguments": "{}"}), TOOLS, r"tool_calls\[0\].function.name"),
    ("metadata", [{"role": "user", "content": "x", "metadata": 3}], TOOLS, r"messages\[0\].metadata"),
    ("calls", [{"role": "assistant", "content": None, "tool_calls": "get_weather"}, *_user()], TOOLS,
     "tool_calls must be a list"),
]


@pytest.mark.parametrize("family", ["chatglm3", "glm4"])
@pytest.mark.parametrize("name,messages,tools,match", BAD_RENDER, ids=[b[0] for b in BAD_RENDER])
def test_bad_render_input_is_one_clear_error(family, name, messages, tools, match):
    with pytest.raises(GlmcpuError, match=match) as e:
        render_messages(family, messages, tools)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("choice,match", [({"type": "function", "function": {"name": "nope"}}, "not in tools"),
                                          ("sometimes", "tool_choice must be"), (3, "tool_choice must be")])
def test_bad_tool_choice(choice, match):
    with pytest.raises(GlmcpuError, match=match):
        tools_for_prompt(TOOLS, choice)


# ---------------------------------------------------------------- parsing official-format replies

def _one_call(result):
    assert result["tool_calls"] is not None and len(result["tool_calls"]) == 1, result
    call = result["tool_calls"][0]
    assert CALL_ID.match(call["id"]) and call["type"] == "function"
    return call["function"]["name"], call["function"]["arguments"]


CALLS = [  # (family, reply, name, arguments JSON string as the official servers return it)
    ("chatglm3", "get_weather\n```python\ntool_call(city='北京')\n```", "get_weather", '{"city": "北京"}'),
    ("chatglm3", "get_weather\n```python\ntool_call(city=\"上海市浦东新区\", note='明天\\n有雨')\n```\n",
     "get_weather", '{"city": "上海市浦东新区", "note": "明天\\n有雨"}'),
    ("chatglm3", "book_flight\n```python\ntool_call(route={'from': 'PEK', 'to': 'SHA'}, passengers=[{'name': '李雷', "
     "'age': 30}, ('x', -1.5, +2)], nonstop=True, note=None)\n```", "book_flight",
     '{"route": {"from": "PEK", "to": "SHA"}, "passengers": [{"name": "李雷", "age": 30}, ["x", -1.5, 2]], '
     '"nonstop": true, "note": null}'),
    ("chatglm3", " get_weather \n```\ntool_call()\n```", "get_weather", "{}"),
    ("glm4", "get_weather\n{\"city\": \"北京\"}", "get_weather", '{"city": "北京"}'),
    ("glm4", "\nget_weather\n{\"city\": \"\\u5317\\u4eac\", \"note\": \"多云转晴\"}\n", "get_weather",
     '{"city": "北京", "note": "多云转晴"}'),
    ("glm4", 'book_flight\n{"route": {"from": "PEK", "to": "SHA"},\n "passengers": [{"name": "李雷", "age": 30}],'
     ' "nonstop": false, "note": null, "n": -1.5e3}', "book_flight",
     '{"route": {"from": "PEK", "to": "SHA"}, "passengers": [{"name": "李雷", "age": 30}], "nonstop": false, '
     '"note": null, "n": -1500.0}'),
]


@pytest.mark.parametrize("family,reply,name,arguments", CALLS)
def test_parse_one_call(family, reply, name, arguments):
    result = parse_reply(family, reply, TOOLS)
    assert result["content"] is None
    assert _one_call(result) == (name, arguments)


@pytest.mark.parametrize("family,reply,content", [
    ("chatglm3", "\n你好，我是 ChatGLM3。", "你好，我是 ChatGLM3。"),
    ("chatglm3", "\n```python\nprint(1)\n```", "```python\nprint(1)\n```"),
    ("glm4", "\n北京今天晴。\n{\"不是\": \"调用\"}", "北京今天晴。\n{\"不是\": \"调用\"}"),
    ("glm4", "你好", "你好"),
])
def test_parse_plain_text(family, reply, content):
    assert parse_reply(family, reply, TOOLS) == {"content": content, "tool_calls": None}


MALFORMED = {
    "chatglm3": [
        "get_weather\n```python\ntool_call(city='北京')",                        # cut off: no closing fence
        "get_weather\n```python\ntool_call(city='北京'\n```",                    # syntax error
        "get_weather\ntool_call(city='北京')",                                   # no fence
        "get_weather\n```python\ntool_call(city=__import__('os').getcwd())\n```",  # a call, not a literal
        "get_weather\n```python\ntool_call(city=city)\n```",                     # a name
        "get_weather\n```python\ntool_call('北京')\n```",                        # positional
        "get_weather\n```python\ntool_call(**{'city': '北京'})\n```",            # **kwargs
        "get_weather\n```python\ntool_call(city=f'{1}')\n```",                   # f-string
        "get_weather\n```python\ntool_call(city={'a', 'b'})\n```",               # set
        "get_weather\n```python\ntool_call(n=1 + 2)\n```",                       # arithmetic
        "get_weather\n```python\ntool_call(n=1j)\n```",                          # complex
        "get_weather\n```python\ntool_call(n=b'x')\n```",                        # bytes
        "get_weather\n```python\ntool_call(n=1e999)\n```",                       # inf
        "get_weather\n```python\ntool_call(n={1: 2})\n```",                      # non-string key
        "get_weather\n```python\ntool_call(n=lambda: 0)\n```",
        "get_weather\n```python\nget_weather(city='北京')\n```",                 # not tool_call
        "get_weather\n```python\ntool_call(city='北京'); tool_call(city='x')\n```",
        "get_weather\n```python\ntool_call(n=" + "[" * 5000 + "]" * 5000 + ")\n```",  # too deep
        "get_weather",
        "unknown_tool\n```python\ntool_call(city='北京')\n```",                  # not one of the tools
    ],
    "glm4": [
        "get_weather\n{\"city\": \"北京\"",                                      # cut off
        "get_weather\n{'city': '北京'}",                                         # not JSON
        "get_weather\n{\"city\": \"北京\"} trailing",
        "get_weather\n{\"n\": NaN}",
        "get_weather\n[\"北京\"]",
        "get_weather\n \"city\"",
        "get_weather",
        "get_weather\n{\"n\": " + "[" * 100000 + "]" * 100000 + "}",            # too deep
        "unknown_tool\n{\"city\": \"北京\"}",
        "\n{\"city\": \"北京\"}",
    ],
}


@pytest.mark.parametrize("family,reply", [(f, r) for f, rs in MALFORMED.items() for r in rs])
def test_malformed_call_is_plain_content(family, reply):
    assert parse_reply(family, reply, TOOLS) == {"content": reply.strip(), "tool_calls": None}


@pytest.mark.parametrize("family,reply", [
    ("chatglm3", "get_weather\n```python\ntool_call(city='北京')\n```"), ("glm4", "get_weather\n{\"city\": \"北京\"}")])
def test_no_tools_means_plain_content(family, reply):
    assert parse_reply(family, reply, None) == {"content": reply, "tool_calls": None}
    assert parse_reply(family, reply, []) == {"content": reply, "tool_calls": None}


def test_chatglm3_text_then_calls():
    """ChatGLM3 may answer, then open a new <|assistant|> turn with a call (PROMPT.md)."""
    reply = ("\n好的，我来查两个城市。<|assistant|>get_weather\n```python\ntool_call(city='北京')\n```"
             "<|assistant|>get_weather\n```python\ntool_call(city='上海')\n```")
    result = parse_reply("chatglm3", reply, TOOLS)
    assert result["content"] == "好的，我来查两个城市。"
    assert [json.loads(c["function"]["arguments"]) for c in result["tool_calls"]] == [{"city": "北京"}, {"city": "上海"}]
    assert len({c["id"] for c in result["tool_calls"]}) == 2


def test_parse_refuses_a_non_string_reply():
    with pytest.raises(GlmcpuError, match="must be a str"):
        parse_reply("glm4", None, TOOLS)


# ---------------------------------------------------------------- rendering and parsing agree

IDENT = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True).filter(lambda s: not keyword.iskeyword(s))
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**20, 10**20) | TEXT
                    | st.floats(allow_nan=False, allow_infinity=False),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                    max_leaves=8)


@settings(max_examples=60, deadline=None)
@given(family=st.sampled_from(["chatglm3", "glm4"]), args=st.dictionaries(IDENT, JSON, max_size=4))
def test_a_rendered_call_parses_back(family, args):
    """The assistant message we render for a call is a reply the parser reads back unchanged."""
    msgs = _with_call({"name": "book_flight", "arguments": json.dumps(args, ensure_ascii=False)})
    [call] = [m for m in render_messages(family, msgs, TOOLS) if m["metadata"]]
    reply = call["metadata"] + "\n" + call["content"]
    name, arguments = _one_call(parse_reply(family, reply, TOOLS))
    assert name == "book_flight" and json.loads(arguments) == args
    for i in range(len(reply) + 1):
        assert tool_call_possible(family, reply[:i], TOOLS), reply[:i]


@pytest.mark.parametrize("family,text,possible", [
    ("glm4", "", True), ("glm4", "\n", True), ("glm4", "get_", True), ("glm4", "get_weather\n", True),
    ("glm4", "get_weather\n{\"ci", True), ("glm4", "你好", False), ("glm4", "\n你好", False),
    ("glm4", "get_weather\nok", False), ("glm4", "get_weathers", False),
    ("chatglm3", "", True), ("chatglm3", "get_weather\n``", True), ("chatglm3", "\n", False),
    ("chatglm3", "\n你好", False), ("chatglm3", "get_weather\nhello", False),
    ("chatglm3", "\n好的。<|assistant|>book", True), ("chatglm3", "interpreter\n```python", False),
])
def test_tool_call_possible(family, text, possible):
    assert tool_call_possible(family, text, TOOLS) is possible
    assert tool_call_possible(family, text, None) is False
