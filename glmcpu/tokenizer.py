"""Tokenizers of the ChatGLM family, rebuilt from the tokenizer file stored in the model file.

  chatglm2, chatglm3  sentencepiece BPE (tokenizer.model) + special tokens appended after its
                      64789 pieces: [MASK] [gMASK] [sMASK] sop eop (+ <|system|> <|user|>
                      <|assistant|> <|observation|> for ChatGLM3)
  chatglm1            sentencepiece (ice_text.model) with "\\n" -> <n>, tab -> <|tab|> and runs of
                      2..80 spaces -> <|blank_N|> before encoding, reversed after decoding
  glm4                tiktoken BPE (tokenizer.model: "<base64 token> <rank>" lines) with GLM-4's
                      pre-tokenization regex; special tokens 151329..151342

encode(text, parse_special=...) decides whether special-token strings in the text become special
tokens. The default is what the official tokenizer does (GLM-4's turns a literal "<|user|>" into
the token; the sentencepiece ones keep it as text); chat message content is always encoded with
parse_special=False unless asked, so a user cannot inject a role token. Special tokens are added
by add_special_tokens=True and by the chat formats.

token_bytes(id) / vocab_bytes() are the exact bytes a token adds to the text (a sentencepiece byte
piece <0xNN> is that byte, "\u2581" a space; a special token is its name, and special_token_ids()
lists those): what constrained decoding (glmcpu/constrain.py) matches grammars against.
"""
import re

import base64

from .errors import GlmcpuError

GLM4_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GLM4_SPECIAL = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
                "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>",
                "<|begin_of_video|>", "<|end_of_video|>"]
GLM_SPECIAL = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop"]
GLM3_ROLES = ["<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]
_BLANK = re.compile(rb"<\|blank_(\d+)\|>")  # ChatGLM-6B's runs of spaces


class Tokenizer:
    """Common interface: encode, decode, special-token ids, the raw-prompt prefix/suffix."""

    family = None
    special = {}  # name -> id
    parses_special = False  # what the official encode does with special-token text
    # sentencepiece's dummy prefix: encode puts a "\u2581" before the text and decode drops the space of
    # a leading "\u2581", so the token bytes of a reply may start with one space its text does not have
    strips_leading_space = False

    def token_id(self, name):
        if name not in self.special:
            raise GlmcpuError(f"the {self.family} tokenizer has no special token {name!r}")
        return self.special[name]

    def encode(self, text, add_special_tokens=False, parse_special=None):
        """Token ids of ``text``. parse_special: special-token strings in the text become special
        tokens (None: as the official tokenizer does). add_special_tokens: the raw-prompt prefix
        (ChatGLM2/3, GLM-4: [gMASK] sop) or suffix (ChatGLM-6B: [gMASK] <sop>)."""
        if not isinstance(text, str):
            raise GlmcpuError(f"encode() needs a str, got {type(text).__name__}")
        if parse_special is None:
            parse_special = self.parses_special
        if parse_special:
            ids = []
            for piece in self._split_special(text):
                ids += [self.special[piece]] if piece in self.special else self._encode(piece)
        else:
            ids = self._encode(text)
        if add_special_tokens:
            ids = self.prefix_ids() + ids + self.suffix_ids()
        return ids

    def _split_special(self, text):
        """text split around special-token strings (kept as pieces of their own)."""
        if not hasattr(self, "_special_re"):
            names = sorted(self.special, key=len, reverse=True)
            self._special_re = re.compile("(" + "|".join(re.escape(n) for n in names) + ")") if names else None
        if self._special_re is None:
            return [text]
        return [p for p in self._special_re.split(text) if p]

    def prefix_ids(self):
        return []

    def suffix_ids(self):
        return []

    def is_special(self, i):
        return i in self._special_ids

    def token_bytes(self, i):
        """The bytes token ``i`` stands for: what it adds to the decoded text (special and control
        tokens: their name, as decode(..., skip_special_tokens=False) writes the special ones)."""
        i = int(i)
        if not 0 <= i < self.vocab_size:
            raise GlmcpuError(f"token id {i} is out of range for this tokenizer's {self.vocab_size} tokens")
        return self._token_bytes(i)

    def vocab_bytes(self):
        """[token_bytes(i) for every id 0..vocab_size-1], built once."""
        if getattr(self, "_vocab_bytes", None) is None:
            self._vocab_bytes = [self._token_bytes(i) for i in range(self.vocab_size)]
        return self._vocab_bytes

    def special_token_ids(self):
        """Ids that stand for no text (their token_bytes is a name): the special tokens, and
        sentencepiece's control and unknown pieces (<unk>, <s>, </s>)."""
        return frozenset(self._special_ids)


def _sp_piece_bytes(sp, i):
    """A sentencepiece piece as bytes: a byte piece <0xNN> is that byte, "\u2581" is a space."""
    piece = sp.id_to_piece(i)
    if sp.is_byte(i):
        return bytes([int(piece[3:5], 16)])
    if sp.is_control(i) or sp.is_unknown(i):
        return piece.encode("utf-8")
    return piece.replace("\u2581", " ").encode("utf-8")


def _sp_control_ids(tok):
    """The control and unknown pieces of ``tok.sp`` (computed once)."""
    if getattr(tok, "_control_ids", None) is None:
        sp = tok.sp
        tok._control_ids = frozenset(i for i in range(sp.vocab_size()) if sp.is_control(i) or sp.is_unknown(i))
    return tok._control_ids


class SentencePieceGLM(Tokenizer):
    """ChatGLM2 and ChatGLM3."""

    strips_leading_space = True

    def __init__(self, model_bytes, family, roles):
        import sentencepiece as spm
        self.family = family
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(model_bytes)
        except Exception:
            raise GlmcpuError("the tokenizer stored in the model file is not a sentencepiece model") from None
        n = self.sp.vocab_size()
        names = GLM_SPECIAL + (GLM3_ROLES if roles else [])
        self.special = {name: n + i for i, name in enumerate(names)}
        self._by_id = {i: name for name, i in self.special.items()}
        self._special_ids = set(self._by_id)
        self.vocab_size = n + len(names)
        self.eos_id = self.sp.eos_id()

    def _encode(self, text):
        return self.sp.encode(text)

    def _token_bytes(self, i):
        return self._by_id[i].encode("utf-8") if i in self._by_id else _sp_piece_bytes(self.sp, i)

    def special_token_ids(self):
        return frozenset(self._special_ids | _sp_control_ids(self))

    def prefix_ids(self):
        return [self.special["[gMASK]"], self.special["sop"]]

    def decode(self, ids, skip_special_tokens=False):
        """As the official SPTokenizer.decode: special tokens become their names."""
        text, buf = [], []
        for i in ids:
            i = int(i)
            if i in self._by_id:
                if buf:
                    text.append(self.sp.decode(buf))
                    buf = []
                if not skip_special_tokens:
                    text.append(self._by_id[i])
            elif 0 <= i < self.sp.vocab_size():
                if not (skip_special_tokens and i in (self.sp.bos_id(), self.sp.eos_id())):
                    buf.append(i)
        if buf:
            text.append(self.sp.decode(buf))
        return "".join(text)


class IceTextTokenizer(Tokenizer):
    """ChatGLM-6B (v1)."""

    family = "chatglm1"
    MAX_BLANK = 80
    strips_leading_space = True

    def __init__(self, model_bytes):
        import sentencepiece as spm
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(model_bytes)
        except Exception:
            raise GlmcpuError("the tokenizer stored in the model file is not a sentencepiece model") from None
        self.vocab_size = self.sp.vocab_size()
        self.special = {name: self.sp.piece_to_id(name) for name in
                        ("[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<unk>", "<pad>")}
        self._special_ids = {self.special[n] for n in ("[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>")}
        self.eos_id = self.special["<eop>"]

    def _encode(self, text):
        text = text.replace("\n", "<n>").replace("\t", "<|tab|>")
        for n in range(self.MAX_BLANK, 1, -1):
            text = text.replace(" " * n, f"<|blank_{n}|>")
        return self.sp.encode(text)

    def suffix_ids(self):
        return [self.special["[gMASK]"], self.special["<sop>"]]

    def _token_bytes(self, i):
        """The piece's bytes with decode's replacements: <n> is "\\n", <|tab|> a tab, <|blank_N|> N spaces."""
        b = _sp_piece_bytes(self.sp, i)
        if self.sp.is_byte(i) or self.sp.is_control(i) or self.sp.is_unknown(i):
            return b
        return _BLANK.sub(lambda m: b" " * int(m.group(1)), b.replace(b"<n>", b"\n").replace(b"<|tab|>", b"\t"))

    def special_token_ids(self):
        return frozenset(self._special_ids | _sp_control_ids(self))

    def decode(self, ids, skip_special_tokens=False):
        ids = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special_ids]
        text = self.sp.decode(ids).replace("<n>", "\n").replace("<|tab|>", "\t")
        for n in range(2, self.MAX_BLANK + 1):
            text = text.replace(f"<|blank_{n}|>", " " * n)
        return text


class TiktokenGLM4(Tokenizer):
    family = "glm4"
    parses_special = True  # the official tokenizer splits its added special tokens out of the text

    def __init__(self, model_bytes):
        import tiktoken
        ranks = {}
        try:
            for line in model_bytes.splitlines():
                if line.strip():
                    tok, rank = line.split()
                    ranks[base64.b64decode(tok)] = int(rank)
        except ValueError:
            raise GlmcpuError("the tokenizer stored in the model file is not a GLM-4 tiktoken file") from None
        n = len(ranks)
        self.special = {name: n + i for i, name in enumerate(GLM4_SPECIAL)}
        self._by_id = {i: name for name, i in self.special.items()}
        self._special_ids = set(self._by_id)
        self.enc = tiktoken.Encoding("glm4", pat_str=GLM4_PATTERN, mergeable_ranks=ranks, special_tokens=self.special)
        self.vocab_size = n + len(GLM4_SPECIAL)
        self.eos_id = self.special["<|endoftext|>"]

    def _encode(self, text):
        return self.enc.encode(text, allowed_special=set(), disallowed_special=())

    def _token_bytes(self, i):
        return self.enc.decode_single_token_bytes(i)  # a rank's bytes; a special token's name

    def prefix_ids(self):
        return [self.special["[gMASK]"], self.special["<sop>"]]

    def decode(self, ids, skip_special_tokens=False):
        ids = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special_ids]
        return self.enc.decode_bytes(ids).decode("utf-8", errors="replace")


def load_tokenizer(family, info, data):
    """The tokenizer of ``family`` from the model file's tokenizer entry and bytes."""
    from . import families
    fam = families.get(family)
    kind = (info or {}).get("type")
    if kind != fam.TOKENIZER_KIND:
        raise GlmcpuError(f"a {family} model needs a {fam.TOKENIZER_KIND} tokenizer "
                          f"({' or '.join(fam.TOKENIZER_FILES)}), the model file has {kind!r}")
    tok = fam.make_tokenizer(info, data)
    tok.family = family
    return tok
