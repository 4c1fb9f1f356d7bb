"""Write tests/data/toolcall_cases.json: tool-call conversations and the prompt ids THUDM's code
builds for them. Run from the repo root: python tests/data/make_toolcall_cases.py

The official code needs torch and transformers, which glmcpu never installs, so this script
re-implements its rules in the official code's own structure, independently of
glmcpu/toolcalls.py and glmcpu/chat.py (it imports neither). Only the tokenizers come from glmcpu
(their plain encode() is checked against the official ids by tests/test_tokenizer.py).
tests/test_toolcalls.py also checks the GLM-4 renderer here against a prompt with tools that
transformers itself rendered and tokenized (../shared/golden/tokenizer_hf.json).

ChatGLM3 (THUDM/chatglm3-6b tokenization_chatglm.py + THUDM/ChatGLM3):
  - openai_api_demo/utils.py process_chatglm_messages: with tools, a first system message
    {"role": "system", "content": "Answer the following ...tools:", "tools": tools}, and the
    conversation's first system message is skipped; tool results become "observation".
  - the tool specs in that message are the OpenAI functions' {name, description, parameters}
    dicts, the shape of tools_using_demo/README.md and PROMPT.md.
  - an assistant tool call is {"role": "assistant", "metadata": name, "content": "```python\\n" +
    unparse(tool_call(k=Constant(v)...)) + "\\n```"} as finetune_chatmodel_demo/preprocess_utils.py
    format_function_call writes it.
  - build_chat_input(query, history, role): for each history item build_single_message(role,
    metadata, content), a system item with "tools" getting "\\n" + json.dumps(tools, indent=4,
    ensure_ascii=False) appended; then the last message; then <|assistant|>; [gMASK] sop first.
GLM-4 (THUDM/glm-4-9b-chat, remote code):
  - basic_demo/glm_server.py process_messages (quirks included), then the chat_template of
    tokenizer_config.json rendered with jinja2 as transformers' apply_chat_template renders it
    (sandboxed, trim_blocks, lstrip_blocks, tojson = json.dumps keeping non-ASCII, unsorted),
    add_generation_prompt=True; the text is tokenized as PreTrainedTokenizer does: split at the
    special tokens, each piece in between encoded with the tiktoken BPE.
"""
import ast
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENIZERS = os.path.join(os.path.dirname(REPO), "shared", "tokenizers")
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "toolcall_cases.json")

WEATHER = {"type": "function", "function": {
    "name": "get_weather",
    "description": "查询指定城市的实时天气",
    "parameters": {"type": "object",
                   "properties": {"city": {"type": "string", "description": "城市名，例如：北京"},
                                  "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city"]}}}
FLIGHT = {"type": "function", "function": {
    "name": "book_flight",
    "description": "Book a flight between two airports",
    "parameters": {"type": "object",
                   "properties": {"route": {"type": "object", "properties": {"from": {"type": "string"},
                                                                             "to": {"type": "string"}}},
                                  "passengers": {"type": "array", "items": {"type": "object"}},
                                  "nonstop": {"type": "boolean"}},
                   "required": ["route"]}}}
TOOLS = [WEATHER, FLIGHT]


def call(cid, name, args):
    return {"id": cid, "type": "function",
            "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}}


Q = {"role": "user", "content": "北京今天天气怎么样？"}
CALL = {"role": "assistant", "content": None,
        "tool_calls": [call("call_w1", "get_weather", {"city": "北京", "unit": "celsius"})]}
RESULT = {"role": "tool", "tool_call_id": "call_w1", "content": '{"temperature": 22, "condition": "晴"}'}
ANSWER = {"role": "assistant", "content": "北京今天晴，气温 22 摄氏度。"}
FOLLOW = {"role": "user", "content": "那上海呢？"}
NESTED_ARGS = {"route": {"from": "PEK", "to": "SHA"},
               "passengers": [{"name": "李雷", "age": 30}, {"name": "Han Meimei", "age": -1.5}],
               "nonstop": True, "note": None, "tags": []}

CONVERSATIONS = [
    ("question", {"messages": [Q], "tools": TOOLS}),
    ("tool_result", {"messages": [Q, CALL, RESULT], "tools": TOOLS}),
    ("follow_up", {"messages": [Q, CALL, RESULT, ANSWER, FOLLOW], "tools": TOOLS}),
    ("system_nested_args", {"messages": [
        {"role": "system", "content": "You are a travel agent."},
        {"role": "user", "content": "Book PEK to SHA, nonstop, for 李雷 and Han Meimei."},
        {"role": "assistant", "content": None, "tool_calls": [call("call_f1", "book_flight", NESTED_ARGS)]},
        {"role": "tool", "tool_call_id": "call_f1", "content": "{\"ok\": true, \"pnr\": \"X1Y2Z3\"}"}],
        "tools": TOOLS}),
    ("two_calls", {"messages": [
        {"role": "user", "content": "Compare the weather in Beijing and Shanghai."},
        {"role": "assistant", "content": None, "tool_calls": [
            call("call_a", "get_weather", {"city": "Beijing"}), call("call_b", "get_weather", {"city": "上海"})]},
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny, 22"},
        {"role": "tool", "tool_call_id": "call_b", "content": "rain, 18"}],
        "tools": [WEATHER]}),
    ("history_without_tools", {"messages": [Q, CALL, RESULT, ANSWER, FOLLOW], "tools": None}),
]
GLM4_ONLY = [
    ("named_tool_choice", {"messages": [{"role": "user", "content": "订一张北京到上海的机票"}], "tools": TOOLS,
                           "tool_choice": {"type": "function", "function": {"name": "book_flight"}}}),
    ("tool_choice_none", {"messages": [Q], "tools": TOOLS, "tool_choice": "none"}),
]


# ---------------------------------------------------------------- ChatGLM3

def chatglm3_history(messages, tools):
    """The official history items (process_chatglm_messages + format_function_call)."""
    items, skip_system = [], False
    if tools:
        items.append({"role": "system",
                      "content": "Answer the following questions as best as you can. "
                                 "You have access to the following tools:",
                      "tools": [t["function"] for t in tools]})
        skip_system = True
    for m in messages:
        if m["role"] == "tool":
            items.append({"role": "observation", "content": m["content"]})
        elif m["role"] == "assistant" and m.get("tool_calls"):
            for c in m["tool_calls"]:
                params = json.loads(c["function"]["arguments"])
                node = ast.Call(func=ast.Name(id="tool_call"), args=[],
                                keywords=[ast.keyword(arg=k, value=ast.Constant(v)) for k, v in params.items()])
                items.append({"role": "assistant", "metadata": c["function"]["name"],
                              "content": "```python\n" + ast.unparse(node).strip() + "\n```"})
        elif m["role"] == "system" and skip_system:
            skip_system = False
        else:
            items.append({"role": m["role"], "content": m["content"]})
    return items


def chatglm3_ids(tok, messages, tools):
    def build_single_message(role, metadata, message):
        assert role in ["system", "user", "assistant", "observation"], role
        return [tok.token_id(f"<|{role}|>")] + tok.encode(f"{metadata}\n") + tok.encode(message)

    items = chatglm3_history(messages, tools)
    history, last = items[:-1], items[-1]
    ids, text = [tok.token_id("[gMASK]"), tok.token_id("sop")], "[gMASK]sop"
    for item in history:
        content = item["content"]
        if item["role"] == "system" and "tools" in item:
            content = content + "\n" + json.dumps(item["tools"], indent=4, ensure_ascii=False)
        ids += build_single_message(item["role"], item.get("metadata", ""), content)
        text += f"<|{item['role']}|>{item.get('metadata', '')}\n{content}"
    ids += build_single_message(last["role"], "", last["content"])
    text += f"<|{last['role']}|>\n{last['content']}"
    return ids + [tok.token_id("<|assistant|>")], text + "<|assistant|>"


# ---------------------------------------------------------------- GLM-4

def glm4_process_messages(messages, tools=None, tool_choice="none"):
    """glm_server.py process_messages, on plain dicts."""
    out, has_sys = [], False
    if tool_choice != "none":
        if isinstance(tool_choice, dict):
            name = tool_choice.get("function", {}).get("name")
            tools = [t for t in tools if t.get("function", {}).get("name") == name] if name else []
        if tools:
            out.append({"role": "system", "content": None, "tools": tools})
            has_sys = True
    if isinstance(tool_choice, dict) and tools:
        out.append({"role": "assistant", "metadata": tool_choice["function"]["name"], "content": ""})
    for m in messages:
        role, content = m["role"], m.get("content")
        if role == "tool":
            out.append({"role": "observation", "content": content, "function_call": True})
        elif role == "assistant":
            if m.get("tool_calls"):
                for c in m["tool_calls"]:
                    out.append({"role": "assistant", "metadata": c["function"]["name"],
                                "content": c["function"]["arguments"]})
            else:
                for response in content.split("\n"):
                    if "\n" in response:
                        metadata, sub = response.split("\n", maxsplit=1)
                    else:
                        metadata, sub = "", response
                    out.append({"role": role, "metadata": metadata, "content": sub.strip()})
        elif role == "system" and has_sys:
            has_sys = False
        else:
            out.append({"role": role, "content": content})
    if not tools or tool_choice == "none":
        for m in messages:
            if m["role"] == "system":
                out.insert(0, {"role": "system", "content": m["content"]})
                break
    return out


def render_template(template, messages):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = tojson
    return env.from_string(template).render(messages=messages, add_generation_prompt=True)


def tokenize_like_hf(tok, specials, text):
    """PreTrainedTokenizer.tokenize: the special tokens split out of the text (longest first),
    each piece between them encoded on its own."""
    ids, piece, i = [], "", 0
    while i < len(text):
        hit = next((s for s in specials if text.startswith(s, i)), None)
        if hit is None:
            piece += text[i]
            i += 1
            continue
        if piece:
            ids += tok.encode(piece)
            piece = ""
        ids.append(tok.token_id(hit))
        i += len(hit)
    if piece:
        ids += tok.encode(piece)
    return ids


def glm4_ids(tok, template, specials, messages, tools, tool_choice):
    # the official request's tool_choice defaults to None, which process_messages treats as "auto"
    text = render_template(template, glm4_process_messages(messages, tools, tool_choice))
    return tokenize_like_hf(tok, specials, text), text


# ---------------------------------------------------------------- main

def main():
    sys.path.insert(0, REPO)
    from glmcpu import families
    from glmcpu.tokenizer import GLM4_SPECIAL, load_tokenizer

    def tokenizer(family, rel):
        with open(os.path.join(TOKENIZERS, rel), "rb") as f:
            return load_tokenizer(family, {"type": families.get(family).TOKENIZER_KIND}, f.read())

    t3 = tokenizer("chatglm3", "chatglm2-chatglm3/tokenizer.model")
    t4 = tokenizer("glm4", "glm-4-9b-chat/tokenizer.model")
    with open(os.path.join(TOKENIZERS, "glm-4-9b-chat", "tokenizer_config.json"), encoding="utf-8") as f:
        template = json.load(f)["chat_template"]
    specials = sorted(GLM4_SPECIAL, key=len, reverse=True)

    cases = []
    for name, conv in CONVERSATIONS:
        ids, text = chatglm3_ids(t3, conv["messages"], conv["tools"])
        cases.append({"name": name, "family": "chatglm3", **conv, "text": text, "ids": ids})
    for name, conv in CONVERSATIONS + GLM4_ONLY:
        ids, text = glm4_ids(t4, template, specials, conv["messages"], conv["tools"], conv.get("tool_choice"))
        cases.append({"name": name, "family": "glm4", **conv, "text": text, "ids": ids})
    about = (" ".join(__doc__.split()) + " Deliberate gaps: the GLM-4 cases avoid two quirks of glm_server.py "
             "that glmcpu does not copy (assistant text of several lines split into one message per line; the "
             "first system message written twice when no tools are shown). 'text' is the prompt as text "
             "(special tokens by name); 'ids' are what the tests compare.")
    with open(OUT, "w", encoding="utf-8") as f:
        f.write('{"_about": ' + json.dumps(about, ensure_ascii=False) + ',\n "cases": [\n')
        f.write(",\n".join("  " + json.dumps(c, ensure_ascii=False) for c in cases))
        f.write("\n ]}\n")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
