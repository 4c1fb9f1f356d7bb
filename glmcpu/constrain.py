"""Constrained decoding with llguidance: replies that must match a grammar (the `server` extra).

  grammar(tok, json_schema=None, family=None, functions=None)   what a reply must match:
        one JSON value valid against ``json_schema``, a tool call of one of ``functions`` in the
        family's own protocol, or either of the two when both are given
  check_schema(schema)                 compile one JSON schema alone; GlmcpuError saying what is wrong
  Constraint(model, grammar)           one request's matcher, used by the generation loop
                                       (glmcpu/requests.py run) around each sampling step:
      apply(logits)   a copy of the logits with -inf for every token the grammar does not allow
                      next (the stop tokens are allowed once the reply is complete)
      advance(id)     the sampled token, fed to the matcher
      done()          the grammar accepts no more text: the reply is complete

llguidance matches token *bytes* against the grammar, so it needs each token's exact bytes
(``Tokenizer.vocab_bytes``, special tokens marked so their names never count as text). That table
(the ``LLTokenizer``) is built once per tokenizer and cached; each request compiles its grammar
once (milliseconds for ordinary schemas). The per-token cost is one mask computation in llguidance
plus numpy on its bitmask; nothing loops over the vocabulary in Python.

Exactness: a reply is only ever cut off from tokens that would leave the grammar, so with
temperature 0 a constrained reply is the unconstrained one whenever that one already matches.

The grammars:

  JSON reply      [" "] [ws] VALUE [ws]      VALUE: llguidance's JSON-schema compiler (properties in
                                             the schema's order). ws, around it and between its
                                             tokens: one space, or a line break and up to 20 spaces
                                             / tabs (WS_REGEX), so a model cannot pad forever.
  GLM-4 call      [" "] NAME "\\n" ARGS       ARGS: a JSON object valid against the function's
                                             ``parameters`` (glm_server.py process_response)
  ChatGLM3 call   [" "] NAME "\\n```python\\ntool_call(" KWARGS ")\\n```"
                                             KWARGS: key=value with the keys of ``parameters``
                                             ``properties`` in their order (the ``required`` ones
                                             present; names that are no Python identifier left
                                             out), each value a Python literal ast accepts
                                             (strings, numbers, True/False/None, lists, dicts),
                                             its form following the property's ``type`` / ``enum``
                                             where those are simple; toolcalls.parse_reply reads
                                             every such call

[" "] is sentencepiece's dummy prefix: ChatGLM-6B/2/3 write "\\u2581" before a reply's first word
(the tokenizer's encode does), and decode drops that space, so the text a client sees has none.
"""
import json
import keyword
import threading
import weakref

import numpy as np

from .errors import GlmcpuError

INSTALL_HINT = 'pip install "glmcpu[server]"'
# JSON whitespace, at most once between two tokens and around the value: one space, or a line break
# and an indentation (llama.cpp's JSON grammar bounds it the same way). Enough for compact JSON,
# json.dumps' ", " / ": " and pretty-printing; a model cannot pad a reply with whitespace forever.
WS_REGEX = r"( |\r?\n[ \t]{0,20})"

# Python literals as ChatGLM3's tool_call(...) takes them (toolcalls._read_python_call reads them with
# ast, literals only): no raw newlines, NULs or unknown escapes in strings; numbers bounded so a float
# never overflows to inf (which the reader refuses).
_PY_ESCAPE = r"""\\([\\'"nrtabfv0]|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4})"""
PYTHON_LITERALS = r"""
PY_STR: /'([^'\\\n\r\x00]|ESC)*'/ | /"([^"\\\n\r\x00]|ESC)*"/
PY_INT: /-?(0|[1-9][0-9]{0,17})/
PY_NUM: /-?(0|[1-9][0-9]{0,17})(\.[0-9]{1,17})?([eE][+-]?[0-9]{1,2})?/
PY_SEP: /, ?/
PY_KSEP: /: ?/
py_value: PY_STR | PY_NUM | "True" | "False" | "None" | py_list | py_dict
py_list: "[" (py_value (PY_SEP py_value)*)? "]"
py_dict: "{" (PY_STR PY_KSEP py_value (PY_SEP PY_STR PY_KSEP py_value)*)? "}"
""".replace("ESC", _PY_ESCAPE)


def _llguidance():
    try:
        import llguidance
    except ImportError:
        raise GlmcpuError("constrained decoding (response_format json_object / json_schema, tool_choice "
                          f"\"required\" or a named function) needs llguidance: {INSTALL_HINT}") from None
    return llguidance


# ---------------------------------------------------------------- the tokenizer table

class _Vocab:
    """What llguidance.LLTokenizer reads from a tokenizer (its TokenizerWrapper protocol): every id's
    bytes (padded with b"" up to the model's vocab size), the special ids, an eos id and encode."""

    is_tokenizer_wrapper = True

    def __init__(self, tok, n_vocab, eos):
        tokens = list(tok.vocab_bytes())
        self.tokens = tokens + [b""] * (n_vocab - len(tokens))
        self.special_token_ids = sorted(tok.special_token_ids())
        self.eos_token_id, self.bos_token_id = eos, None
        self._special = set(self.special_token_ids)
        self._index = self._longest = None

    def __call__(self, text):
        """Token ids whose bytes are exactly ``text`` (llguidance's tokenize callback): longest match
        over the vocabulary, which holds every single byte (byte fallback / byte-level BPE)."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        if self._index is None:
            self._index = {}
            for i, b in enumerate(self.tokens):
                if b and i not in self._special:
                    self._index.setdefault(b, i)
            self._longest = max(map(len, self._index))
        out, at = [], 0
        while at < len(data):
            for n in range(min(self._longest, len(data) - at), 0, -1):
                i = self._index.get(data[at:at + n])
                if i is not None:
                    out.append(i)
                    at += n
                    break
            else:
                at += 1  # a byte no token has: cannot happen with byte fallback
        return out


_tables = weakref.WeakKeyDictionary()  # tokenizer -> {(n_vocab, eos): LLTokenizer}
_tables_lock = threading.Lock()


def lltokenizer(tok, n_vocab, eos):
    """The llguidance.LLTokenizer of ``tok`` for ``n_vocab`` logits, built once and cached."""
    llg = _llguidance()
    if n_vocab < tok.vocab_size:
        raise GlmcpuError(f"the model has {n_vocab} logits but its tokenizer {tok.vocab_size} tokens")
    with _tables_lock:
        per_tok = _tables.setdefault(tok, {})
        key = (int(n_vocab), int(eos))
        if key not in per_tok:
            per_tok[key] = llg.LLTokenizer(_Vocab(tok, n_vocab, eos))
        return per_tok[key]


# ---------------------------------------------------------------- grammars

def _lark_str(s):
    return json.dumps(s, ensure_ascii=False)


def _top(tok, rules, schemas):
    """The llguidance grammar: the lark rules (defining ``reply``) and the JSON schemas they name."""
    lead = '" "? ' if tok.strips_leading_space else ""
    # no_forcing: where the grammar leaves one way on (forced bytes), llguidance would otherwise allow
    # only its own tokenization of those bytes; every token whose bytes fit stays allowed, so the
    # model keeps its own choice (and a greedy reply that fits the grammar is left unchanged)
    lark = f'%llguidance {{"no_forcing": true}}\nstart: {lead}reply\n{rules}'
    grammars = [{"lark_grammar": lark}] + [{"name": name, "json_schema": s} for name, s in schemas.items()]
    try:
        return json.dumps({"grammars": grammars}, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as e:
        raise GlmcpuError(f"a JSON schema must be plain JSON data: {e}") from None


def check_schema(schema):
    """GlmcpuError with llguidance's reason if ``schema`` (a JSON schema) does not compile."""
    llg = _llguidance()
    if not isinstance(schema, (dict, bool)):
        raise GlmcpuError(f"a JSON schema is an object, got {type(schema).__name__}")
    try:
        g = llg.LLMatcher.grammar_from_json_schema(json.dumps(schema, allow_nan=False))
    except (TypeError, ValueError, RecursionError) as e:
        raise GlmcpuError(f"the JSON schema is not valid JSON: {e}") from None
    err = llg.LLMatcher.validate_grammar(g)
    if err:
        raise GlmcpuError(f"the JSON schema cannot be used: {_one_line(err)}")


def grammar(tok, json_schema=None, family=None, functions=None):
    """The grammar (llguidance's JSON form) of a reply: one JSON value valid against ``json_schema``
    (a dict; {"type": "object"} for json_object), a tool call of one of ``functions`` (checked
    OpenAI function specs) in ``family``'s protocol, or either when both are given."""
    rules, schemas, alts = [], {}, []
    if json_schema is not None:
        schemas["reply_json"] = _with_whitespace(json_schema)
        rules += ["json_reply: WS? @reply_json WS?", f"WS: /{WS_REGEX}/"]
        alts.append("json_reply")
    if functions:
        if family == "glm4":
            for i, f in enumerate(functions):
                schemas[f"args_{i}"] = _with_whitespace(f.get("parameters") or {"type": "object"})
                rules.append(f'call_{i}: {_lark_str(f["name"] + chr(10))} @args_{i}')
        elif family == "chatglm3":
            rules.append(PYTHON_LITERALS)
            for i, f in enumerate(functions):
                head, tail = f["name"] + "\n```python\ntool_call(", ")\n```"
                kwargs = _python_kwargs(f, i, rules)
                body = f"{_lark_str(head)} {kwargs} {_lark_str(tail)}" if kwargs else _lark_str(head + tail)
                rules.append(f"call_{i}: {body}")
        else:
            raise GlmcpuError(f"the {family} chat format has no tool calls to force")
        alts += [f"call_{i}" for i in range(len(functions))]
    if not alts:
        raise GlmcpuError("a grammar needs a JSON schema or functions")
    rules.insert(0, "reply: " + " | ".join(alts))
    return _top(tok, "\n".join(rules), schemas)


def _with_whitespace(schema):
    """The schema with our whitespace rule for llguidance's compiler (a client's own "x-guidance"
    options win)."""
    if not isinstance(schema, dict):
        return schema
    return {"x-guidance": {"whitespace_pattern": WS_REGEX}, **schema}


def _python_kwargs(f, i, rules):
    """The rule for ChatGLM3's ``k=v, ...`` of function ``f`` (its properties in order, the required
    ones present, each key at most once); adds the rules it needs to ``rules``."""
    params = f.get("parameters") or {}
    props = params.get("properties") if isinstance(params.get("properties"), dict) else {}
    required = [k for k in params.get("required") or [] if isinstance(k, str)]
    keys = [k for k in props if k.isidentifier() and not keyword.iskeyword(k)]
    bad = [k for k in required if k not in keys]
    if bad:
        raise GlmcpuError(f"function {f['name']!r}: ChatGLM3 passes arguments as Python keywords, and the "
                          f"required parameter {bad[0]!r} is not a Python identifier")
    if not keys:
        return ""
    n = len(keys)
    for j, k in enumerate(keys):
        rules.append(f"kv_{i}_{j}: {_lark_str(k + '=')} {_python_value(props[k], f'v_{i}_{j}', rules)}")
    # seq_j: a non-empty run of keys j.. in order, skipping only optional ones
    later_required = [any(k in required for k in keys[j + 1:]) for j in range(n)]
    for j in range(n):
        alts = []
        if not later_required[j]:
            alts.append(f"kv_{i}_{j}")
        if j + 1 < n:
            alts.append(f"kv_{i}_{j} PY_SEP seq_{i}_{j + 1}")
            if keys[j] not in required:
                alts.append(f"seq_{i}_{j + 1}")
        rules.append(f"seq_{i}_{j}: " + " | ".join(alts))
    return f"seq_{i}_0" if required else f"seq_{i}_0?"


def _python_value(schema, name, rules):
    """The rule for a Python literal following ``schema`` where it is simple (enum / const, type
    string / integer / number / boolean / null / array); any literal otherwise."""
    if not isinstance(schema, dict):
        return "py_value"
    if "enum" in schema or "const" in schema:
        values = schema["enum"] if "enum" in schema else [schema["const"]]
        if isinstance(values, list) and values:
            rules.append(f"{name}: " + " | ".join(_lark_str(_py_repr(v)) for v in values))
            return name
        return "py_value"
    kinds = schema.get("type")
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if not isinstance(kinds, list) or not kinds:
        return "py_value"
    alts = []
    for k in kinds:
        if k == "string":
            alts.append("PY_STR")
        elif k == "integer":
            alts.append("PY_INT")
        elif k == "number":
            alts.append("PY_NUM")
        elif k == "boolean":
            alts += ['"True"', '"False"']
        elif k == "null":
            alts.append('"None"')
        elif k == "array":
            item = _python_value(schema.get("items"), name + "_item", rules)
            alts.append(f'"[" ({item} (PY_SEP {item})*)? "]"')
        elif k == "object":
            alts.append("py_dict")
        else:
            return "py_value"
    rules.append(f"{name}: " + " | ".join(alts))
    return name


def _py_repr(v):
    """Python source of a JSON value (as toolcalls renders arguments)."""
    if isinstance(v, float) and not np.isfinite(v):
        raise GlmcpuError("enum values must be finite numbers")
    return repr(v)


def _one_line(msg):
    """llguidance's error message on one line, without the parser-state dump it may append."""
    msg = " ".join(line.strip() for line in msg.split("<state>")[0].splitlines() if line.strip())
    return (msg[:300] + "...") if len(msg) > 300 else (msg or "unknown error")


# ---------------------------------------------------------------- one request

class Constraint:
    """One request's grammar state. Build it before the request runs (it compiles the grammar, so
    errors are the caller's 400s); the generation loop calls apply / advance / done."""

    def __init__(self, model, grammar_json):
        from .chat import stop_ids
        llg = _llguidance()
        tok = model.tokenizer
        self.n_vocab = int(model.vocab_size)
        self.stops = np.array(sorted(stop_ids(tok, model.config.eos_token_ids)), np.int64)
        eos = tok.eos_id if tok.eos_id is not None else (int(self.stops[0]) if len(self.stops) else 0)
        self.matcher = llg.LLMatcher(lltokenizer(tok, self.n_vocab, eos), grammar_json, log_level=0)
        if self.matcher.is_error():
            raise GlmcpuError(f"the grammar cannot be used: {_one_line(self.matcher.get_error())}")
        self._bits = np.zeros((self.n_vocab + 31) // 32, np.int32)

    def allowed(self):
        """bool[n_vocab]: the tokens that may come next (a stop token only once the reply is complete)."""
        self.matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        self._check()
        ok = np.unpackbits(self._bits.view(np.uint8), count=self.n_vocab, bitorder="little").view(bool)
        ok[self.stops] = self.matcher.is_accepting()
        if not ok.any():
            raise GlmcpuError("constrained decoding: the grammar allows no token here")
        return ok

    def apply(self, logits):
        """A copy of ``logits`` [n_vocab] with -inf where the grammar allows no token."""
        return np.where(self.allowed(), logits, np.float32(-np.inf)).astype(np.float32, copy=False)

    def advance(self, token_id):
        if not self.matcher.consume_token(int(token_id)):
            raise GlmcpuError(f"constrained decoding: token {int(token_id)} does not fit the grammar "
                              f"({_one_line(self.matcher.get_error())})")

    def done(self):
        """True once the grammar accepts no more text (the reply is complete)."""
        self._check()
        return self.matcher.is_stopped()

    def _check(self):
        if self.matcher.is_error():
            raise GlmcpuError(f"constrained decoding failed: {_one_line(self.matcher.get_error())}")
