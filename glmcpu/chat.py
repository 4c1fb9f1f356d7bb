"""Chat messages: checking them and the pieces the families' chat formats share.

messages: [{"role": "system" | "user" | "assistant" | "observation", "content": str}, ...] ending
with the message to answer. Each family (glmcpu/families/) builds its own prompt from them,
ending where the assistant's reply starts; ``chat_prompt`` here asks the tokenizer's family.
"""
from .errors import GlmcpuError

ROLES = ("system", "user", "assistant", "observation")
OPENAI_ROLES = ROLES + ("tool",)


def check_messages(messages, openai=False):
    """The messages, checked: a non-empty list of {role, content} with a known role and string
    content (``openai``: also role "tool", content as a list of text parts, assistant messages
    with tool_calls and no content). Roles outside the fixed set are refused: a chat template
    writes the role into the prompt, so "user|>x<|system" would inject tokens."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise GlmcpuError("messages must be a non-empty list of {'role', 'content'} dicts")
    roles = OPENAI_ROLES if openai else ROLES
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in roles:
            raise GlmcpuError(f"bad message {m!r}: needs a role of {'/'.join(roles)} and a string content")
        content = m.get("content")
        if not (isinstance(content, str) or (openai and (isinstance(content, list)
                                                         or (content is None and m.get("tool_calls"))))):
            raise GlmcpuError(f"bad message {m!r}: needs a role of {'/'.join(roles)} and a string content")
    if messages[-1]["role"] not in ("user", "observation", "tool"):
        raise GlmcpuError("the last message must be the user's (or a tool result)")
    return list(messages)


def rounds_and_query(messages):
    """History rounds (query, response), system messages dropped as the official ChatGLM2 and
    ChatGLM-6B code has no system role, and the final query."""
    rounds, pending = [], None
    for m in messages[:-1]:
        if m["role"] == "user":
            if pending is not None:
                rounds.append((pending, ""))
            pending = m["content"]
        elif m["role"] == "assistant":
            rounds.append((pending if pending is not None else "", m["content"]))
            pending = None
    if pending is not None:
        rounds.append((pending, ""))
    if messages[-1]["role"] != "user":
        raise GlmcpuError("this chat format has no tool results: the last message must be the user's")
    return rounds, messages[-1]["content"]


def refuse_tools(family, tools):
    if tools:
        raise GlmcpuError(f"the {family} chat format has no tool calls; use chatglm3, glm4 or a model "
                          f"with a chat template")


def family_messages(family, messages, tools):
    """OpenAI-style messages (tool calls, tool results, text parts) in the family's own roles, with
    ``tools`` rendered as the official tool prompt (glmcpu/toolcalls.py)."""
    from .toolcalls import render_messages
    return render_messages(family, messages, tools)


def chat_prompt(tok, messages, tools=None, parse_special=False, template=None):
    """Prompt ids for ``messages`` in the chat format of the tokenizer's family."""
    from . import families
    return families.get(tok.family).chat_prompt(tok, messages, tools=tools, parse_special=parse_special,
                                                template=template)


def stop_ids(tok, eos_ids):
    """Token ids that end a reply: the model's eos ids, the tokenizer's eos and the family's stop tokens."""
    from . import families
    ids = set(int(e) for e in eos_ids)
    if tok.eos_id is not None:
        ids.add(int(tok.eos_id))
    for name in families.get(tok.family).STOP_TOKENS:
        if name in tok.special:
            ids.add(tok.token_id(name))
    return ids
