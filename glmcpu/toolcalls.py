"""Tool calls in the ChatGLM3 and GLM-4 chat formats: OpenAI-style requests in, OpenAI
``tool_calls`` out. Pure functions, no server code.

  render_messages(family, messages, tools)  OpenAI messages + tools -> the family's own messages
                                            [{"role", "content", "metadata"}] for chat_prompt
  tools_for_prompt(tools, tool_choice)      the tools a prompt shows for a tool_choice
  parse_reply(family, text, tools)          a model reply -> {"content", "tool_calls"}
  tool_call_possible(family, text, tools)   can a reply that starts with ``text`` still be a call?

Forcing a call (tool_choice "required" / a named function) is glmcpu/constrain.py's grammar of
these same protocols.

The two protocols, as THUDM's code writes them (one message per line, "<|role|>metadata\\n" then
the content):

  ChatGLM3   <|system|>
             Answer the following questions as best as you can. You have access to the following tools:
             [ {"name": ..., "description": ..., "parameters": ...}, ... ]    (json.dumps, indent 4)
             <|user|>
             What's the weather in Beijing?
             <|assistant|>get_weather
             ```python
             tool_call(city='北京', unit='c')
             ```
             <|observation|>
             {"temperature": 22}

  GLM-4      <|system|>
             你是一个名为 ChatGLM 的人工智能助手。... \\n\\n# 可用工具
             ## get_weather

             {"name": ..., "description": ..., "parameters": ...}             (json.dumps, indent 4)
             在调用上述函数时，请使用 Json 格式表示调用的参数。
             <|user|>
             ...
             <|assistant|>get_weather
             {"city": "北京"}
             <|observation|>
             ...

A tool call's function name is the metadata of its <|assistant|> line; a tool result is an
<|observation|> message. Model output is never evaluated: ChatGLM3's ``tool_call(k=v)`` is read
with ``ast`` and only literal nodes are accepted.
"""
import ast
import json
import math
import re
import secrets
import string

from .errors import GlmcpuError

TOOL_FAMILIES = ("chatglm3", "glm4")

# ChatGLM3: the system message text of a tool-using chat. From THUDM/ChatGLM3
# openai_api_demo/utils.py (process_chatglm_messages) and PROMPT.md; the tools JSON follows it as
# chatglm3-6b's tokenization_chatglm.py build_chat_input appends it:
# content + "\n" + json.dumps(tools, indent=4, ensure_ascii=False).
CHATGLM3_TOOLS_PROMPT = ("Answer the following questions as best as you can. "
                         "You have access to the following tools:")

# GLM-4: the tools block of glm-4-9b-chat's tokenizer_config.json chat template, as transformers
# renders it (trim_blocks drops the newline after "{% if tool['type'] == 'function' %}", so each
# function starts with a single "\n## "; tojson is json.dumps(indent=4, ensure_ascii=False)).
GLM4_TOOLS_HEADER = ("你是一个名为 ChatGLM 的人工智能助手。你是基于智谱AI训练的语言模型 GLM-4 模型开发的，"
                     "你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n# 可用工具")
GLM4_FUNCTION_NOTE = "在调用上述函数时，请使用 Json 格式表示调用的参数。"

FENCE_OPEN = re.compile(r"^```(python)?$")
ID_CHARS = string.ascii_letters + string.digits
TOOL_SHAPE = '{"type": "function", "function": {"name": ..., "description": ..., "parameters": {...}}}'


def check_family(family):
    if family not in TOOL_FAMILIES:
        raise GlmcpuError(f"the {family} chat format has no tool calls; use chatglm3, glm4 or a model "
                          f"with a chat template")


def check_tools(tools):
    """The function specs of OpenAI ``tools`` ([] for None), checked."""
    if tools is None:
        return []
    if not isinstance(tools, (list, tuple)):
        raise GlmcpuError(f"tools must be a list of {TOOL_SHAPE}")
    functions, names = [], set()
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or not isinstance(t.get("function"), dict):
            raise GlmcpuError(f"tools[{i}] must be {TOOL_SHAPE}, got {_short(t)}")
        if t.get("type", "function") != "function":
            raise GlmcpuError(f"tools[{i}] has type {t.get('type')!r}: only \"function\" tools are supported")
        f = t["function"]
        name = f.get("name")
        if not _good_name(name):
            raise GlmcpuError(f"tools[{i}].function.name must be a non-empty one-line string without "
                              f"surrounding spaces, got {name!r}")
        if name in names:
            raise GlmcpuError(f"tools[{i}]: two tools are called {name!r}; give each tool its own name")
        if "parameters" in f and not isinstance(f["parameters"], dict):
            raise GlmcpuError(f"tools[{i}].function.parameters must be a JSON schema object")
        if "description" in f and not isinstance(f["description"], str):
            raise GlmcpuError(f"tools[{i}].function.description must be a string")
        try:
            json.dumps(f, allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            raise GlmcpuError(f"tools[{i}].function must be plain JSON data (dicts, lists, strings, "
                              f"finite numbers, booleans, null)") from None
        names.add(name)
        functions.append(f)
    return functions


def _good_name(name):
    return isinstance(name, str) and bool(name) and name == name.strip() and "\n" not in name


def tools_for_prompt(tools, tool_choice=None):
    """The tools a prompt shows for ``tool_choice``, as GLM-4's basic_demo/glm_server.py
    (process_messages, filter_tools) picks them: "none" shows none, a named function shows only
    that one, "auto" / "required" / None show all. With "required" or a named function the server
    also forces the reply to be a call of one of them (glmcpu/constrain.py: the grammar of exactly
    what parse_reply reads)."""
    functions = check_tools(tools)
    if tool_choice in (None, "auto", "required"):
        return list(tools or [])
    if tool_choice == "none":
        return []
    if isinstance(tool_choice, dict) and tool_choice.get("type", "function") == "function" \
            and isinstance(tool_choice.get("function"), dict):
        name = tool_choice["function"].get("name")
        picked = [t for t, f in zip(tools or [], functions) if f["name"] == name]
        if not picked:
            raise GlmcpuError(f"tool_choice names the function {name!r}, which is not in tools "
                              f"({', '.join(f['name'] for f in functions) or 'none given'})")
        return picked
    raise GlmcpuError(f"tool_choice must be \"none\", \"auto\", \"required\" or "
                      f"{{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, got {_short(tool_choice)}")


# ---------------------------------------------------------------- rendering

def render_messages(family, messages, tools=None):
    """OpenAI-style ``messages`` (roles system / user / assistant with optional ``tool_calls`` /
    tool; content a string or a list of text parts) and ``tools`` -> the family's own messages
    [{"role": "system" | "user" | "assistant" | "observation", "content": str, "metadata": str}],
    as the official code builds them:

    - with tools, a first system message lists them, and it takes the place of the conversation's
      first system message (ChatGLM3 openai_api_demo/utils.py process_chatglm_messages and GLM-4
      basic_demo/glm_server.py process_messages both skip it);
    - each tool call is its own assistant message whose metadata is the function name: ChatGLM3
      writes it as ```python tool_call(k=v, ...)``` (format_function_call of the ChatGLM3 repo's
      finetune_chatmodel_demo/preprocess_utils.py, removed in commit 0ffbe4c: the arguments as
      Python literals, repr), GLM-4 as the arguments JSON
      string itself (glm_server.py process_messages);
    - a tool result is an observation message;
    - GLM-4's chat template writes no message whose content is empty.

    Assistant text that comes with tool calls is kept as an assistant message before them (the
    form of ChatGLM3's PROMPT.md; GLM-4's demo server would drop it)."""
    check_family(family)
    functions = check_tools(tools)
    out = []
    if functions:
        out.append(_message("system", _tools_system(family, functions)))
    skip_system = bool(functions)
    for i, m in enumerate(_check_messages(messages)):
        role, text = m["role"], _text(m, i)
        if role == "system" and skip_system:
            skip_system = False
        elif role in ("tool", "function", "observation"):
            out.append(_message("observation", text))
        elif role == "assistant" and m.get("tool_calls"):
            if text:
                out.append(_message("assistant", text))
            for name, args, raw in _check_calls(m["tool_calls"], i):
                out.append(_message("assistant", _call_content(family, args, raw), metadata=name))
        else:
            out.append(_message(role, text, m.get("metadata") or ""))
    if family == "glm4":
        out = [m for m in out if m["content"]]
    return out


def _message(role, content, metadata=""):
    return {"role": role, "content": content, "metadata": metadata}


def _tools_system(family, functions):
    if family == "chatglm3":
        return CHATGLM3_TOOLS_PROMPT + "\n" + json.dumps(functions, indent=4, ensure_ascii=False)
    blocks = [f"\n## {f['name']}\n\n{json.dumps(f, indent=4, ensure_ascii=False)}\n{GLM4_FUNCTION_NOTE}"
              for f in functions]
    return GLM4_TOOLS_HEADER + "".join(blocks)


def _call_content(family, args, raw):
    if family == "glm4":
        return raw
    # ChatGLM3: the official fine-tuning format (ast.unparse of tool_call(k=Constant(v))).
    return "```python\ntool_call(" + ", ".join(f"{k}={_py_literal(v)}" for k, v in args.items()) + ")\n```"


def _py_literal(v):
    """Python source of a JSON value, as ast.unparse writes a Constant holding it (repr)."""
    if isinstance(v, float) and not math.isfinite(v):
        raise GlmcpuError("tool call arguments must be finite numbers (no NaN or Infinity)")
    return repr(v)


def _check_messages(messages):
    if not isinstance(messages, (list, tuple)) or not messages:
        raise GlmcpuError("messages must be a non-empty list of {'role', 'content'} dicts")
    roles = ("system", "user", "assistant", "tool", "function", "observation")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in roles:
            raise GlmcpuError(f"messages[{i}] must be a dict with a role of {'/'.join(roles[:4])}, "
                              f"got {_short(m)}")
        if not isinstance(m.get("metadata") or "", str) or "\n" in (m.get("metadata") or ""):
            raise GlmcpuError(f"messages[{i}].metadata must be a one-line string, got {_short(m['metadata'])}")
    return messages


def _text(m, i):
    """A message's content as one string: text parts joined with "\\n" (as vLLM joins them)."""
    content = m.get("content")
    if isinstance(content, str):
        return content
    if content is None and m["role"] == "assistant" and m.get("tool_calls"):
        return ""
    if isinstance(content, (list, tuple)):
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise GlmcpuError(f"messages[{i}].content: only text parts {{'type': 'text', 'text': ...}} "
                                  f"are supported, got {_short(part)}")
            texts.append(part["text"])
        return "\n".join(texts)
    raise GlmcpuError(f"messages[{i}] ({m['role']}) needs a content string or a list of text parts, "
                      f"got {_short(content)}")


def _check_calls(calls, i):
    """[(name, arguments dict, arguments JSON string as given)] of an assistant's tool_calls."""
    if not isinstance(calls, (list, tuple)):
        raise GlmcpuError(f"messages[{i}].tool_calls must be a list of "
                          f"{{'type': 'function', 'function': {{'name', 'arguments'}}}}")
    out = []
    for j, c in enumerate(calls):
        where = f"messages[{i}].tool_calls[{j}]"
        f = c.get("function") if isinstance(c, dict) else None
        if not isinstance(f, dict) or c.get("type", "function") != "function":
            raise GlmcpuError(f"{where} must be {{'type': 'function', 'function': {{'name', 'arguments'}}}}, "
                              f"got {_short(c)}")
        name, raw = f.get("name"), f.get("arguments", "{}")
        if not _good_name(name):
            raise GlmcpuError(f"{where}.function.name must be a non-empty one-line string without "
                              f"surrounding spaces, got {name!r}")
        if isinstance(raw, dict):
            raw = json.dumps(raw, ensure_ascii=False)
        try:
            args = json.loads(raw, parse_constant=_no_constant) if isinstance(raw, str) else None
        except (ValueError, RecursionError):
            args = None
        if not isinstance(args, dict):
            raise GlmcpuError(f"{where}.function.arguments must be a JSON object string such as "
                              f"'{{\"city\": \"北京\"}}', got {_short(raw)}")
        out.append((name, args, raw))
    return out


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


def _short(x, n=80):
    s = repr(x)
    return s if len(s) <= n else s[:n] + "..."


# ---------------------------------------------------------------- parsing

def new_call_id():
    """An OpenAI-style tool call id: "call_" and 24 random letters and digits."""
    return "call_" + "".join(secrets.choice(ID_CHARS) for _ in range(24))


def parse_reply(family, text, tools):
    """A model reply (the text generated after <|assistant|>, up to the stop token, special tokens
    kept as text) -> {"content": str | None, "tool_calls": [OpenAI tool call] | None}.

    The reply is read as the official code reads it: a metadata line (the function name) then
    the call, segments split at "<|assistant|>" (ChatGLM3's chat process_response). A call counts
    only if its name is one of ``tools`` and its arguments parse (ChatGLM3: a ```python fence
    around tool_call(k=literal, ...); GLM-4: "name\\n{json object}", glm_server.py
    process_response); anything else is plain content, never an exception. Arguments come back
    as json.dumps(..., ensure_ascii=False), as both official servers return them."""
    check_family(family)
    if not isinstance(text, str):
        raise GlmcpuError(f"a model reply must be a str, got {type(text).__name__}")
    names = {f["name"] for f in check_tools(tools)}
    plain = {"content": text.strip(), "tool_calls": None}
    if not names:
        return plain
    read = _read_python_call if family == "chatglm3" else _read_json_call
    contents, calls = [], []
    for segment in text.split("<|assistant|>"):
        # ChatGLM3 (modeling_chatglm.py process_response): metadata = the text before the first
        # "\n"; GLM-4 (glm_server.py process_response): the first line of the stripped reply.
        head, sep, body = (segment.strip() if family == "glm4" else segment).partition("\n")
        name = head.strip()
        if name not in names:
            contents.append(segment.strip())
            continue
        args = read(body) if sep else None
        if args is None:  # a tool's name, then no valid call: malformed, so all of it is text
            return plain
        calls.append({"id": new_call_id(), "type": "function",
                      "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}})
    if not calls:
        return plain
    content = "\n".join(c for c in contents if c)
    return {"content": content or None, "tool_calls": calls}


def _read_json_call(body):
    """GLM-4: the arguments line(s) after the name, a JSON object starting the line -> dict or None."""
    if not body.startswith("{"):
        return None
    try:
        args = json.loads(body.strip(), parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return None
    return args if isinstance(args, dict) else None


def _read_python_call(body):
    """ChatGLM3: ```python\\ntool_call(k=v, ...)\\n``` -> {k: v} or None. Only literal nodes."""
    lines = body.strip().split("\n")
    if len(lines) < 3 or not FENCE_OPEN.match(lines[0].strip()) or lines[-1].strip() != "```":
        return None
    try:
        tree = ast.parse("\n".join(lines[1:-1]).strip(), mode="eval")
        call = tree.body
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "tool_call"
                and not call.args):
            return None
        args = {}
        for kw in call.keywords:
            if kw.arg is None or kw.arg in args:  # **kwargs or a repeated name
                return None
            args[kw.arg] = _literal(kw.value)
        return args
    except (SyntaxError, ValueError, RecursionError, MemoryError, _NotLiteral):
        return None


class _NotLiteral(Exception):
    pass


def _literal(node):
    """The JSON value of a literal-only expression node: str, int, float, bool, None, lists,
    tuples (-> lists), dicts with string keys, unary minus/plus on numbers; else _NotLiteral."""
    if isinstance(node, ast.Constant):
        v = node.value
        if v is None or isinstance(v, (str, bool, int)):
            return v
        if isinstance(v, float) and math.isfinite(v):
            return v
        raise _NotLiteral
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)) \
            and isinstance(node.operand, ast.Constant) and type(node.operand.value) in (int, float):
        v = node.operand.value
        if isinstance(v, float) and not math.isfinite(v):
            raise _NotLiteral
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        out = {}
        for k, v in zip(node.keys, node.values):
            if not (isinstance(k, ast.Constant) and isinstance(k.value, str)):  # None key: {**x}
                raise _NotLiteral
            out[k.value] = _literal(v)
        return out
    raise _NotLiteral


def tool_call_possible(family, text, tools):
    """Can a reply that so far reads ``text`` still turn out to be a tool call? False once its
    last segment's first line is no tool name (or the line after the name cannot start a call),
    so a streaming server may send the text as content from then on."""
    check_family(family)
    names = {f["name"] for f in check_tools(tools)}
    if not names:
        return False
    segment = text.split("<|assistant|>")[-1]
    if family == "glm4":
        segment = segment.lstrip()
    head, sep, body = segment.partition("\n")
    if not sep:  # the name line is still being written
        return any(n.startswith(head.strip()) for n in names)
    if head.strip() not in names:
        return False
    if family == "chatglm3":
        start = body.lstrip()
        return start.startswith("```") or "```".startswith(start)
    return body == "" or body.startswith("{")
