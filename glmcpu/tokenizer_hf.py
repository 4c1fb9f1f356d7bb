"""Tokenizer of the Hugging-Face-native GLM releases (glm-4-9b-chat-hf, GLM-Edge, GLM-4-0414).

Those releases ship a ``tokenizer.json`` (the ``tokenizers`` library's serialized tokenizer: for GLM-4
a byte-level BPE with the same 151329 ranks and 14 special tokens as the tiktoken file) and a
``tokenizer_config.json`` naming the eos token and carrying the jinja chat template
(glmcpu/chat_template.py renders it). The ``tokenizers`` library does the work here, so encode and
decode are the official ones by construction:

  encode(text)                       as transformers' ``tokenizer(text, add_special_tokens=False)``:
                                     special-token text ("<|user|>") becomes the special id
  encode(text, parse_special=False)  the text taken literally: "<|user|>" gets the ids of its characters
  encode(text, add_special_tokens=True)  adds what the tokenizer.json post-processor adds
  decode(ids)                        as transformers' ``decode``: special tokens kept, no spaces added
  token_bytes(id)                    the exact bytes of one token: byte-level BPE tokens mapped back
                                     through GPT-2's byte-to-unicode table, added tokens their text
"""
import threading

from .errors import GlmcpuError
from .tokenizer import Tokenizer

# the special-token attributes of a transformers tokenizer, as tokenizer_config.json names them
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

# transformers' clean_up_tokenization, applied by decode only if tokenizer_config.json asks for it
CLEAN_UP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
            (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def _bytes_to_unicode():
    """GPT-2's table (the ``tokenizers`` ByteLevel pre-tokenizer's): byte -> the character standing
    for it in a byte-level BPE vocabulary. Printable Latin-1 bytes stand for themselves, the other
    68 for U+0100 onwards, in byte order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) \
        + list(range(ord("\xae"), ord("\xff") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_OF_CHAR = {c: b for b, c in _bytes_to_unicode().items()}  # a byte-level vocabulary character -> its byte


def _token_text(value, key):
    """A tokenizer_config.json token entry: a string or an AddedToken-style dict ({"content": ...})."""
    if isinstance(value, dict):
        value = value.get("content")
    if not isinstance(value, str):
        raise GlmcpuError(f"tokenizer_config.json: invalid {key!r}: {value!r} (expected a token string)")
    return value


def _special_tokens_map(config):
    """name -> token text (and additional_special_tokens -> list of texts) for the chat template."""
    out = {}
    for key in SPECIAL_TOKEN_KEYS:
        if config.get(key) is not None:
            out[key] = _token_text(config[key], key)
    extra = config.get("additional_special_tokens")
    if extra is not None:
        if not isinstance(extra, list):
            raise GlmcpuError(f"tokenizer_config.json: invalid 'additional_special_tokens': {extra!r} "
                              "(expected a list)")
        out["additional_special_tokens"] = [_token_text(t, "additional_special_tokens") for t in extra]
    return out


def _load(tokenizer_json):
    """tokenizers.Tokenizer from the bytes of a tokenizer.json, or a GlmcpuError saying what is wrong."""
    import tokenizers
    if isinstance(tokenizer_json, str):
        tokenizer_json = tokenizer_json.encode("utf-8")
    if not isinstance(tokenizer_json, (bytes, bytearray, memoryview)):
        raise GlmcpuError(f"tokenizer.json must be given as bytes, got {type(tokenizer_json).__name__}")
    try:
        return tokenizers.Tokenizer.from_buffer(bytes(tokenizer_json))
    except Exception as e:  # the library raises ValueError/Exception with a serde message
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise GlmcpuError(f"the tokenizer is not a valid Hugging Face tokenizer.json ({reason}); "
                          "convert again with the release's own tokenizer.json") from None


class HFTokenizer(Tokenizer):
    """A ``tokenizer.json`` tokenizer with its ``tokenizer_config.json`` (dict, or None).

    vocab_size  ids 0..vocab_size-1, added tokens included (151343 for GLM-4)
    special     special-token text -> id, every added token marked special
    eos_id      id of tokenizer_config's ``eos_token`` (None when it names none)
    special_tokens_map  ``bos_token``/``eos_token``/... -> text, the chat template's variables
    """

    def __init__(self, tokenizer_json, tokenizer_config=None):
        if tokenizer_config is None:
            tokenizer_config = {}
        if not isinstance(tokenizer_config, dict):
            raise GlmcpuError(f"tokenizer_config.json must hold a JSON object, got {type(tokenizer_config).__name__}")
        self.tk = _load(tokenizer_json)
        # encode_special_tokens is a switch on the shared tokenizers object: flipped only under this lock
        self._lock = threading.Lock()
        added = self.tk.get_added_tokens_decoder()  # id -> AddedToken
        self._added = {i: tok.content for i, tok in added.items()}
        import tokenizers.decoders
        self._byte_level = isinstance(self.tk.decoder, tokenizers.decoders.ByteLevel)
        self.special = {tok.content: i for i, tok in sorted(added.items()) if tok.special}
        self._special_ids = frozenset(self.special.values())
        self.vocab_size = max([self.tk.get_vocab_size(with_added_tokens=True)] + [i + 1 for i in added])
        self.special_tokens_map = _special_tokens_map(tokenizer_config)
        self.eos_id = self._id_of(self.special_tokens_map["eos_token"], "eos_token") \
            if "eos_token" in self.special_tokens_map else None
        self._clean_up = tokenizer_config.get("clean_up_tokenization_spaces") is True
        self._prefix, self._suffix = self._post_processor_ids()

    def _id_of(self, text, key):
        i = self.tk.token_to_id(text)
        if i is None:
            raise GlmcpuError(f"tokenizer_config.json: {key} {text!r} is not a token of tokenizer.json; "
                              "use the tokenizer_config.json of the same release")
        return i

    def _post_processor_ids(self):
        """(prefix, suffix) ids the post-processor puts around one encoded text ([gMASK] <sop> for GLM-4
        tokenizers that declare it; nothing for a plain ByteLevel post-processor)."""
        probe = "a"
        bare = self.tk.encode(probe, add_special_tokens=False).ids
        full = self.tk.encode(probe, add_special_tokens=True).ids
        for start in range(len(full) - len(bare) + 1):
            if full[start:start + len(bare)] == bare:
                return full[:start], full[start + len(bare):]
        return [], []

    def _token_bytes(self, i):
        added = self._added.get(i)
        if added is not None:  # added tokens are stored as their text, not byte-level encoded
            return added.encode("utf-8")
        if not self._byte_level:
            raise GlmcpuError(f"token bytes need a byte-level BPE tokenizer.json (decoder ByteLevel), this one's "
                              f"decoder is {type(self.tk.decoder).__name__}")
        piece = self.tk.id_to_token(i)
        if piece is None:  # an id no token has
            return b""
        try:
            return bytes(BYTE_OF_CHAR[c] for c in piece)
        except KeyError:
            raise GlmcpuError(f"tokenizer.json: token {i} ({piece!r}) is not byte-level encoded") from None

    def token_id(self, name):
        """Id of a special token (or of any vocabulary entry) given by its text."""
        if name in self.special:
            return self.special[name]
        i = self.tk.token_to_id(name)
        if i is None:
            raise GlmcpuError(f"the tokenizer has no token {name!r}")
        return i

    def prefix_ids(self):
        return list(self._prefix)

    def suffix_ids(self):
        return list(self._suffix)

    def _encoding(self, text, add_special_tokens, parse_special):
        if not isinstance(text, str):
            raise GlmcpuError(f"can only encode text (str), got {type(text).__name__}")
        with self._lock:
            self.tk.encode_special_tokens = not parse_special
            try:
                return self.tk.encode(text, add_special_tokens=add_special_tokens)
            finally:
                self.tk.encode_special_tokens = False

    def encode(self, text, add_special_tokens=False, parse_special=True):
        """Token ids of ``text`` (list of int). parse_special=True: special-token text becomes the special
        id, as the official tokenizer does; False: the text is encoded literally."""
        return self._encoding(text, add_special_tokens, parse_special).ids

    def _encode(self, text):
        return self.encode(text, parse_special=False)

    def split_special(self, text):
        """``text`` cut where the official tokenizer finds special tokens: a list of str (text between
        them, never empty) and int (a special token's id, its text including any whitespace the token's
        lstrip/rstrip absorbs). Joining the pieces' texts gives ``text`` back; encoding each str piece
        with parse_special=False and keeping the ints gives ``encode(text)``."""
        enc = self._encoding(text, False, True)
        pieces, pos = [], 0
        for i, (start, end) in zip(enc.ids, enc.offsets):
            if i in self._special_ids:
                if start > pos:
                    pieces.append(text[pos:start])
                pieces.append(i)
                pos = end
        if pos < len(text):
            pieces.append(text[pos:])
        return pieces

    def decode(self, ids, skip_special_tokens=False):
        """Text of ``ids`` as the official decode gives it; ids outside the vocabulary are ignored."""
        n = self.vocab_size
        ids = [i for i in map(int, ids) if 0 <= i < n]
        text = self.tk.decode(ids, skip_special_tokens=skip_special_tokens)
        if self._clean_up:
            for old, new in CLEAN_UP:
                text = text.replace(old, new)
        return text
