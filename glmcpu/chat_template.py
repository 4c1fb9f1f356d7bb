"""Jinja chat templates (``chat_template`` of tokenizer_config.json) rendered as transformers renders them.

transformers' ``apply_chat_template`` compiles the template in jinja2's ImmutableSandboxedEnvironment
with trim_blocks and lstrip_blocks, the ``loopcontrols`` extension ({% break %}, {% continue %}) and its
``{% generation %}`` tag, replaces the ``tojson`` filter by ``json.dumps`` (non-ASCII kept, no HTML
escaping, indent/separators/sort_keys/ensure_ascii arguments), adds the globals ``raise_exception``
and ``strftime_now``, and renders with ``messages``, ``tools``, ``documents``,
``add_generation_prompt`` and the tokenizer's special tokens (``bos_token``, ``eos_token``, ...).
The prompt is then tokenized without added special tokens: the template writes them itself.

  render(template, messages, tools=None, add_generation_prompt=True, **variables) -> str
  encode_chat(tok, template, messages, tools=None, parse_special=False) -> list[int]

encode_chat(parse_special=True) gives the official ids: special-token text anywhere in the prompt,
message text included, becomes the special token. parse_special=False (the default) keeps special
tokens written by the template and encodes special-token text that comes from the caller's messages
and tools literally, so a user typing "<|user|>" cannot open a new turn. How: every special-token
string inside the caller's strings is swapped for a private-use character before rendering (the
template's logic sees the same structure; trim, comparisons and truthiness are unaffected), the
result is checked to be the official text once swapped back, it is cut at the special tokens the
official tokenizer finds (all written by the template now) and each piece between them is encoded
literally with the swapped characters turned back into their text. With no special-token text in
the messages the ids are exactly those of parse_special=True.
"""
import json
import re
from datetime import datetime
from functools import lru_cache

from .errors import GlmcpuError

PRIVATE_USE = range(0xE000, 0xF900)  # Basic Multilingual Plane private-use area: one char, one JSON escape


class TemplateRaised(Exception):
    """Raised by the template's own ``raise_exception(message)``."""


def raise_exception(message):
    raise TemplateRaised(str(message))


def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    """transformers' tojson filter: plain json.dumps, non-ASCII kept, no HTML escaping."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(fmt):
    return datetime.now().strftime(fmt)


def _environment():
    import jinja2.ext
    from jinja2 import nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}``: transformers marks the assistant's text with it for
        training masks; rendering keeps the body as is (in its own scope, as transformers' call block)."""
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


@lru_cache(maxsize=None)
def _shared_environment():
    return _environment()


@lru_cache(maxsize=16)
def compile_template(template):
    """The compiled jinja template (cached by its source text)."""
    import jinja2
    if not isinstance(template, str):
        raise GlmcpuError(f"a chat template must be a string, got {type(template).__name__}")
    try:
        return _shared_environment().from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise GlmcpuError(f"chat template syntax error on line {e.lineno}: {e.message}; "
                          "fix the chat_template in tokenizer_config.json") from None


def render(template, messages, tools=None, add_generation_prompt=True, **variables):
    """The prompt text the template makes of ``messages`` (OpenAI-style list of dicts, passed through
    unchanged) and ``tools``; ``variables`` are extra template variables (bos_token, eos_token, ...)."""
    import jinja2
    compiled = compile_template(template)
    context = {"documents": None, **variables, "messages": messages, "tools": tools,
               "add_generation_prompt": add_generation_prompt}
    try:
        return compiled.render(**context)
    except TemplateRaised as e:
        raise GlmcpuError(f"the chat template rejects these messages: {e}") from None
    except GlmcpuError:
        raise
    except jinja2.TemplateError as e:
        raise GlmcpuError(f"chat template error: {str(e).rstrip('.')}; check the messages' fields against "
                          "what the template expects") from None
    except Exception as e:  # a Python error inside the template (e.g. str + int on a message field)
        raise GlmcpuError(f"chat template error: {type(e).__name__}: {str(e).rstrip('.')}; check the messages' "
                          "fields against what the template expects") from None


# ---------------------------------------------------------------- literal special-token text in messages

def _strings(obj):
    """Every str inside nested dicts (keys and values), lists and tuples."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _strings(v)


def _map_strings(obj, fn):
    """A copy of ``obj`` with ``fn`` applied to every str inside (same container types)."""
    if isinstance(obj, str):
        return fn(obj)
    if isinstance(obj, dict):
        return {_map_strings(k, fn): _map_strings(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_strings(v, fn) for v in obj)
    return obj


class SpecialTextShield:
    """Swaps special-token text inside the caller's strings for private-use characters and back.

    special: the tokenizer's special-token texts; inputs: the messages and tools; template: its source
    (no swap character may occur in any of them, raw or as a JSON ``\\uXXXX`` escape)."""

    def __init__(self, special, inputs, template):
        texts = sorted(special, key=len, reverse=True)  # longest first: leftmost-longest, as the tokenizer
        self.pattern = re.compile("|".join(map(re.escape, texts))) if texts else None
        found = set()
        if self.pattern is not None:
            for s in _strings(inputs):
                found.update(self.pattern.findall(s))
        self.needed = bool(found)
        self.swap, self.back = {}, {}
        if not self.needed:
            return
        corpus = "\0".join([template, *_strings(inputs), *special])
        free = (chr(c) for c in PRIVATE_USE if chr(c) not in corpus and f"\\u{c:04x}" not in corpus)
        for text in sorted(found):
            ch = next(free, None)
            if ch is None:
                raise GlmcpuError("the messages use every private-use character; "
                                  "pass parse_special=True to encode them")
            self.swap[text], self.back[ch] = ch, text
            self.back[f"\\u{ord(ch):04x}"] = text  # the same character after tojson(ensure_ascii=True)
        self._back_pattern = re.compile("|".join(map(re.escape, sorted(self.back, key=len, reverse=True))))

    def hide(self, obj):
        """``obj`` with special-token text in its strings swapped out (``obj`` itself when none is)."""
        if not self.needed:
            return obj
        return _map_strings(obj, lambda s: self.pattern.sub(lambda m: self.swap[m.group()], s))

    def restore(self, text):
        if not self.needed:
            return text
        return self._back_pattern.sub(lambda m: self.back[m.group()], text)


def encode_chat(tok, template, messages, tools=None, parse_special=False, add_generation_prompt=True):
    """Token ids of the rendered chat prompt (list of int).

    tok: an HFTokenizer (encode(text, parse_special=...), split_special(text), special,
    special_tokens_map). parse_special=True: exactly ``tok.encode(render(...))``, the official ids.
    parse_special=False: special-token text from the messages and tools stays literal text."""
    variables = dict(getattr(tok, "special_tokens_map", None) or {})
    text = render(template, messages, tools, add_generation_prompt, **variables)
    if parse_special:
        return tok.encode(text, parse_special=True)
    shield = SpecialTextShield(tok.special, [messages, tools], template)
    if shield.needed:
        hidden = render(template, shield.hide(messages), shield.hide(tools), add_generation_prompt, **variables)
        if shield.restore(hidden) != text:
            raise GlmcpuError("this chat template alters message text in a way glmcpu cannot follow, so special-"
                              "token text in the messages cannot be kept literal; remove it from the messages "
                              "or pass parse_special=True")
        text = hidden
    ids = []
    for piece in tok.split_special(text):
        if isinstance(piece, int):
            ids.append(piece)
        else:
            ids += tok.encode(shield.restore(piece), parse_special=False)
    return ids
