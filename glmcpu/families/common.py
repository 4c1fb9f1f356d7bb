"""Helpers the family modules and the converter share."""
import re


def name_hint(text):
    """A family suggested by a model name such as THUDM/chatglm3-6b-32k, or None."""
    t = (text or "").lower()
    if "glm-4" in t or "glm4" in t:
        return "glm4"
    if "chatglm3" in t:
        return "chatglm3"
    if "chatglm2" in t or "codegeex2" in t:
        return "chatglm2"
    return None


def layer_pattern(name):
    """'blk.3.attn_qkv.weight' -> ('blk.{i}.attn_qkv.weight', {'i': '3'}); other names unchanged."""
    m = re.match(r"^blk\.(\d+)\.(.*)$", name)
    if not m:
        return name, {}
    return "blk.{i}." + m.group(2), {"i": m.group(1)}


def compile_patterns(patterns):
    """Regexes for checkpoint name patterns with "{i}"."""
    return [re.compile("^" + re.escape(p).replace(r"\{i\}", r"\d+") + "$") for p in patterns]
