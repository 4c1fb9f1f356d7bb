"""Chat prompts exactly as each family's official chat code builds them.

messages: [{"role": "system" | "user" | "assistant", "content": str}, ...] ending with the user
message to answer. The prompt ends where the assistant's reply starts.
"""
from .errors import GlmcpuError

# tokens that end an assistant reply, besides the model's eos ids
STOP_NAMES = {
    "chatglm3": ["<|user|>", "<|observation|>"],
    "glm4": ["<|user|>", "<|observation|>"],
    "chatglm2": [],
    "chatglm1": ["<eop>"],
}


def _check(messages):
    if not isinstance(messages, (list, tuple)) or not messages:
        raise GlmcpuError("messages must be a non-empty list of {'role', 'content'} dicts")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "observation") \
                or not isinstance(m.get("content"), str):
            raise GlmcpuError(f"bad message {m!r}: needs role system/user/assistant and a string content")
    if messages[-1]["role"] != "user":
        raise GlmcpuError("the last message must be the user's")


def _split(messages):
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
    return rounds, messages[-1]["content"]


def chat_prompt(tok, messages):
    """Token ids of the prompt for ``messages`` with tokenizer ``tok`` (its family's template)."""
    _check(messages)
    fam = tok.family
    if fam in ("chatglm3", "glm4"):
        ids = tok.prefix_ids()
        for m in messages:
            ids += [tok.token_id(f"<|{m['role']}|>")] + tok.encode(m.get("metadata", "") + "\n") + tok.encode(m["content"])
        return ids + [tok.token_id("<|assistant|>")]
    rounds, query = _split(messages)
    if fam == "chatglm2":
        prompt = "".join(f"[Round {i + 1}]\n\n问：{q}\n\n答：{r}\n\n" for i, (q, r) in enumerate(rounds))
        prompt += f"[Round {len(rounds) + 1}]\n\n问：{query}\n\n答："
        return tok.encode(prompt, add_special_tokens=True)
    if fam == "chatglm1":
        if not rounds:
            prompt = query
        else:
            prompt = "".join(f"[Round {i}]\n问：{q}\n答：{r}\n" for i, (q, r) in enumerate(rounds))
            prompt += f"[Round {len(rounds)}]\n问：{query}\n答："
        return tok.encode(prompt, add_special_tokens=True)
    raise GlmcpuError(f"no chat template for family {fam!r}")


def stop_ids(tok, eos_ids):
    ids = set(int(e) for e in eos_ids)
    ids.add(int(tok.eos_id))
    for name in STOP_NAMES.get(tok.family, []):
        ids.add(tok.token_id(name))
    return ids
