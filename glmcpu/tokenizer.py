"""Tokenizers of the ChatGLM family, rebuilt from the tokenizer file stored in the model file.

  chatglm2, chatglm3  sentencepiece BPE (tokenizer.model) + special tokens appended after its
                      64789 pieces: [MASK] [gMASK] [sMASK] sop eop (+ <|system|> <|user|>
                      <|assistant|> <|observation|> for ChatGLM3)
  chatglm1            sentencepiece (ice_text.model) with "\\n" -> <n>, tab -> <|tab|> and runs of
                      2..80 spaces -> <|blank_N|> before encoding, reversed after decoding
  glm4                tiktoken BPE (tokenizer.model: "<base64 token> <rank>" lines) with GLM-4's
                      pre-tokenization regex; special tokens 151329..151342

encode() never turns text into a special token: a user typing "<|user|>" gets the ids of those
characters. Special tokens are only added by add_special_tokens=True and by the chat templates.
"""
import base64

from .errors import GlmcpuError

GLM4_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GLM4_SPECIAL = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
                "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>",
                "<|begin_of_video|>", "<|end_of_video|>"]
GLM_SPECIAL = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop"]
GLM3_ROLES = ["<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]


class Tokenizer:
    """Common interface: encode, decode, special-token ids, the raw-prompt prefix/suffix."""

    family = None
    special = {}  # name -> id

    def token_id(self, name):
        return self.special[name]

    def encode(self, text, add_special_tokens=False):
        ids = self._encode(text)
        if add_special_tokens:
            ids = self.prefix_ids() + ids + self.suffix_ids()
        return ids

    def prefix_ids(self):
        return []

    def suffix_ids(self):
        return []

    def is_special(self, i):
        return i in self._special_ids


class SentencePieceGLM(Tokenizer):
    """ChatGLM2 and ChatGLM3."""

    def __init__(self, model_bytes, family):
        import sentencepiece as spm
        self.family = family
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(model_bytes)
        except Exception:
            raise GlmcpuError("the tokenizer stored in the model file is not a sentencepiece model") from None
        n = self.sp.vocab_size()
        names = GLM_SPECIAL + (GLM3_ROLES if family == "chatglm3" else [])
        self.special = {name: n + i for i, name in enumerate(names)}
        self._by_id = {i: name for name, i in self.special.items()}
        self._special_ids = set(self._by_id)
        self.vocab_size = n + len(names)
        self.eos_id = self.sp.eos_id()

    def _encode(self, text):
        return self.sp.encode(text)

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

    def prefix_ids(self):
        return [self.special["[gMASK]"], self.special["<sop>"]]

    def decode(self, ids, skip_special_tokens=False):
        ids = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special_ids]
        return self.enc.decode_bytes(ids).decode("utf-8", errors="replace")


def load_tokenizer(family, info, data):
    """Tokenizer from the model file's tokenizer metadata and bytes."""
    kind = info.get("type")
    if family == "glm4":
        if kind != "tiktoken":
            raise GlmcpuError(f"a GLM-4 model needs the tiktoken tokenizer file, the model file has {kind!r}")
        return TiktokenGLM4(data)
    if family == "chatglm1":
        return IceTextTokenizer(data)
    if family in ("chatglm2", "chatglm3"):
        return SentencePieceGLM(data, family)
    raise GlmcpuError(f"no tokenizer for family {family!r}")
