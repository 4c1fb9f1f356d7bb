"""The transformers-style API of THUDM's official checkpoints, over glmcpu model files.

Code written for the official checkpoints runs after changing its import::

    from glmcpu.compat import AutoTokenizer, AutoModel      # was: from transformers import ...
    tokenizer = AutoTokenizer.from_pretrained("chatglm3-6b-q4_0.glmq", trust_remote_code=True)
    model = AutoModel.from_pretrained("chatglm3-6b-q4_0.glmq", trust_remote_code=True).eval()
    response, history = model.chat(tokenizer, "你好", history=[])

  AutoTokenizer.from_pretrained(FILE)   CompatTokenizer: __call__, encode, decode, batch_decode,
                                        apply_chat_template, eos_token_id, pad_token_id,
                                        convert_tokens_to_ids, get_command, build_chat_input, ...
  AutoModel.from_pretrained(FILE)       CompatModel (also AutoModelForCausalLM):
    model(input_ids).logits             float32 [1, T, vocab] from one forward over the sequence
    model.generate(input_ids, ...)      int64 [1, T + new], the prompt included, as transformers
    model.chat(tokenizer, query, history, ...) -> (response, history)       the official chat
    model.stream_chat(...)              yields (response so far, history)

Arrays are numpy (return_tensors="np"), batch size 1, no beam search; docs/COMPAT.md lists what
differs from the official API. Sampling is glmcpu's Sampler (glmcpu/generate.py); chat and
stream_chat run through glmcpu/requests.py's generation loop (the one Model.chat uses), so a
greedy chat here and Model.chat(temperature=0) give the same reply.
"""
import copy
import json
import os
import re
import warnings
import weakref

import numpy as np

from .errors import GlmcpuError

# families whose official chat takes history as (query, response) pairs; the others use
# {"role", "content", "metadata"} dicts (ChatGLM3 style)
PAIR_FAMILIES = ("chatglm1", "chatglm2")
ROLE_FAMILIES = ("chatglm3", "glm4", "glm", "glm4-0414")
# the official chat defaults of each family (max_length, top_p, temperature)
CHAT_DEFAULTS = {"chatglm1": (2048, 0.7, 0.95), "chatglm2": (8192, 0.8, 0.8)}
CHAT_DEFAULT = (8192, 0.8, 0.8)
# the year process_response writes for "[[训练时间]]"
TRAINING_YEAR = {"chatglm1": "2023年", "chatglm2": "2023年", "chatglm3": "2023年"}
HF_KWARGS_IGNORED = ("trust_remote_code", "revision", "cache_dir", "local_files_only", "resume_download",
                     "force_download", "proxies", "token", "use_auth_token", "low_cpu_mem_usage", "use_fast",
                     "torch_dtype", "dtype", "device_map", "device", "load_in_8bit", "load_in_4bit",
                     "attn_implementation", "empty_init", "encode_special_tokens")
TENSOR_HINT = "glmcpu works on numpy arrays: pass return_tensors=\"np\" or leave it out"

_SHARED = {}  # file identity -> weakref to the glmcpu tokenizer built for that file (model or tokenizer)


# ---------------------------------------------------------------- loading

def _model_path(path):
    """The glmcpu model file ``path`` names: a file, or a directory holding exactly one .glmq file.
    A Hugging Face checkpoint directory or a Hub name gets the conversion command to run."""
    if not isinstance(path, (str, os.PathLike)):
        raise GlmcpuError(f"from_pretrained needs the path of a glmcpu model file, got {type(path).__name__}")
    path = os.fspath(path)
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.endswith(".glmq"))
        if len(files) == 1:
            return os.path.join(path, files[0])
        if os.path.isfile(os.path.join(path, "config.json")):
            raise GlmcpuError(f"{path} is a Hugging Face checkpoint directory; glmcpu runs its own model files: "
                              f"run `glmcpu convert {path} -o model.glmq` (--dtype q4_0 to quantize) and pass "
                              f"model.glmq to from_pretrained")
        raise GlmcpuError(f"{path}: a directory with {len(files) or 'no'} .glmq files; pass the model file itself")
    if not os.path.exists(path):
        raise GlmcpuError(f"{path}: no such file. glmcpu does not download from the Hugging Face Hub: download the "
                          f"checkpoint, run `glmcpu convert CHECKPOINT_DIR -o model.glmq` and pass model.glmq")
    return path


def _identity(path):
    st = os.stat(path)
    return os.path.realpath(path), st.st_size, st.st_mtime_ns


def _check_hf_kwargs(kwargs, what):
    unknown = sorted(k for k in kwargs if k not in HF_KWARGS_IGNORED)
    if unknown:
        raise GlmcpuError(f"{what}.from_pretrained: unsupported argument(s) {', '.join(unknown)}; glmcpu takes the "
                          f"model file and n_ctx, threads, mode, kv (see docs/COMPAT.md)")
    for key in ("device", "device_map"):
        if kwargs.get(key) not in (None, "cpu", "auto"):
            warnings.warn(f"glmcpu runs on the CPU: {key}={kwargs[key]!r} is ignored", stacklevel=3)
    for key in ("load_in_8bit", "load_in_4bit"):
        if kwargs.get(key):
            warnings.warn(f"{key} is ignored: a glmcpu file keeps the precision chosen at conversion "
                          f"(glmcpu convert --dtype q8_0 / q4_0)", stacklevel=3)


class AutoTokenizer:
    @staticmethod
    def from_pretrained(path, *args, **kwargs):
        """The tokenizer stored in the glmcpu model file ``path``. It is built on first use, and
        shared with a model loaded from the same file (AutoModel.from_pretrained) when that came
        first: one tokenizer per file."""
        if args:
            raise GlmcpuError("AutoTokenizer.from_pretrained takes the model file and keyword arguments only")
        padding_side = kwargs.pop("padding_side", None)
        if padding_side not in (None, "left", "right"):
            raise GlmcpuError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        _check_hf_kwargs(kwargs, "AutoTokenizer")
        from .file import ModelFile
        path = _model_path(path)
        mf = ModelFile(path)
        try:
            if not mf.tokenizer_info:
                raise GlmcpuError(f"{path} has no tokenizer; convert again with --tokenizer PATH (or --tokenizer-dir "
                                  f"DIR)")
            family, info, data = mf.family, mf.tokenizer_info, mf.tokenizer_bytes()
            template = mf.meta.get("chat_template") or None
        finally:
            mf.close()
        key = _identity(path)

        def build():
            tok = _shared(key)
            if tok is None:
                from .tokenizer import load_tokenizer
                tok = load_tokenizer(family, info, data)
                _SHARED[key] = weakref.ref(tok)
            return tok

        tok = CompatTokenizer(build, family, path, template, info.get("config"))
        tok.padding_side = padding_side or tok.padding_side
        return tok


class AutoModel:
    @staticmethod
    def from_pretrained(path, *args, n_ctx=4096, threads=None, mode="fast", kv=None, **kwargs):
        """The glmcpu model file ``path`` as a CompatModel. n_ctx: the context (KV cache) in tokens;
        threads (None: all physical cores), mode and kv (the KV cache type; None: glmcpu's default)
        as for glmcpu.load."""
        if args:
            raise GlmcpuError("AutoModel.from_pretrained takes the model file and keyword arguments only")
        _check_hf_kwargs(kwargs, "AutoModel")
        from .model import Model
        path = _model_path(path)
        model = Model(path, n_ctx=n_ctx, threads=threads, mode=mode, **({} if kv is None else {"kv": kv}))
        if model.file.tokenizer_info:
            _SHARED[_identity(path)] = weakref.ref(model.tokenizer)
        return CompatModel(model)


def _shared(key):
    ref = _SHARED.get(key)
    return ref() if ref is not None else None


AutoModelForCausalLM = AutoModel


# ---------------------------------------------------------------- arrays

class BatchEncoding(dict):
    """A dict of input_ids / attention_mask with attribute access; ``to(device)`` does nothing."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, *args, **kwargs):
        return self


class CausalLMOutput(dict):
    """model(input_ids): ``logits`` float32 [1, T, vocab], ``loss`` (with labels) and
    ``past_key_values`` (always None); by attribute, key or position as transformers' ModelOutput."""

    def __init__(self, logits, loss=None):
        super().__init__()
        if loss is not None:
            self["loss"] = loss
        self["logits"] = logits
        self.loss, self.logits, self.past_key_values = loss, logits, None

    def __getitem__(self, key):
        if isinstance(key, int):
            return list(self.values())[key]
        return super().__getitem__(key)

    def to_tuple(self):
        return tuple(self.values())


def _check_tensors(return_tensors):
    if return_tensors not in (None, "np"):
        kind = {"pt": "torch tensors", "tf": "TensorFlow tensors", "jax": "JAX arrays"}.get(return_tensors,
                                                                                          repr(return_tensors))
        raise GlmcpuError(f"return_tensors={return_tensors!r}: {kind} are not supported; {TENSOR_HINT}")


def _is_torch(x):
    return type(x).__module__.split(".")[0] == "torch"


def _ids_1d(input_ids, what="input_ids"):
    """One sequence of token ids from a list, a 1-D array or a [1, T] array."""
    if input_ids is None:
        raise GlmcpuError(f"{what} is missing: pass the prompt's token ids (e.g. tokenizer(text, "
                          f"return_tensors='np')['input_ids'])")
    if _is_torch(input_ids):
        raise GlmcpuError(f"{what} is a torch tensor; {TENSOR_HINT}")
    try:
        a = np.asarray(input_ids)
    except ValueError:
        raise GlmcpuError(f"{what} must be a rectangular list or array of token ids") from None
    if a.dtype == object or (a.size and not np.issubdtype(a.dtype, np.integer)):
        raise GlmcpuError(f"{what} must hold integer token ids, got dtype {a.dtype}")
    if a.ndim == 2:
        if a.shape[0] != 1:
            raise GlmcpuError(f"{what} has batch size {a.shape[0]}: glmcpu runs one sequence at a time "
                              f"(batch size 1); loop over the sequences")
        a = a[0]
    if a.ndim != 1 or a.size == 0:
        raise GlmcpuError(f"{what} must be a non-empty sequence of token ids, shape [T] or [1, T]; "
                          f"got shape {a.shape}")
    return a.astype(np.int64)


def _check_mask(attention_mask, n):
    if attention_mask is None:
        return
    if _is_torch(attention_mask):
        raise GlmcpuError(f"attention_mask is a torch tensor; {TENSOR_HINT}")
    m = np.asarray(attention_mask)
    if m.ndim == 2 and m.shape[0] == 1:
        m = m[0]
    if m.shape != (n,):
        raise GlmcpuError(f"attention_mask has shape {np.asarray(attention_mask).shape}, the input_ids {n} tokens")
    if not np.all(m == 1):
        raise GlmcpuError("attention_mask has zeros (padding): glmcpu runs one unpadded sequence; "
                          "pass the sequence without padding")


# ---------------------------------------------------------------- tokenizer

class CompatTokenizer:
    """The official tokenizer's API over a glmcpu tokenizer (glmcpu/tokenizer.py, tokenizer_hf.py).

    ``family`` is the model family; ``glmcpu`` the wrapped tokenizer. Ids are those of the
    official tokenizer (tests/test_compat.py checks them against the golden official ids)."""

    def __init__(self, build, family, path=None, chat_template=None, config=None):
        self._build, self._tok = build, None
        self.family = family
        self.name_or_path = path
        self.chat_template = chat_template
        config = config if isinstance(config, dict) else {}
        self.padding_side = config.get("padding_side") if config.get("padding_side") in ("left", "right") else "left"
        self.model_max_length = config.get("model_max_length", 1 << 60)

    @property
    def glmcpu(self):
        """The glmcpu tokenizer (glmcpu/tokenizer.py, tokenizer_hf.py) doing the work."""
        if self._tok is None:
            self._tok = self._build()
        return self._tok

    def __repr__(self):
        return f"<glmcpu.compat tokenizer {self.family} {self.name_or_path!r} vocab_size={self.vocab_size}>"

    def __len__(self):
        return self.vocab_size

    @property
    def vocab_size(self):
        return self.glmcpu.vocab_size

    # special tokens, named as each family's official tokenizer names them
    @property
    def eos_token_id(self):
        return self.glmcpu.eos_id

    @property
    def eos_token(self):
        return self.convert_ids_to_tokens(self.eos_token_id) if self.eos_token_id is not None else None

    @property
    def pad_token_id(self):
        tok = self.glmcpu
        if self.family == "chatglm1":
            return tok.sp.piece_to_id("<pad>")
        if self.family in ("chatglm2", "chatglm3"):
            return tok.sp.unk_id()  # the official SPTokenizer pads with <unk>
        pad = getattr(tok, "special_tokens_map", {}).get("pad_token")
        if pad is not None:
            return self.convert_tokens_to_ids(pad)
        return tok.eos_id  # GLM-4: <|endoftext|>

    @property
    def pad_token(self):
        return self.convert_ids_to_tokens(self.pad_token_id) if self.pad_token_id is not None else None

    @property
    def unk_token_id(self):
        sp = getattr(self.glmcpu, "sp", None)
        return sp.unk_id() if sp is not None else None

    @property
    def bos_token_id(self):
        if self.family == "chatglm1":
            return self.glmcpu.token_id("<sop>")
        sp = getattr(self.glmcpu, "sp", None)
        return sp.bos_id() if sp is not None else None

    def get_command(self, token):
        """Id of a special token by name (the official ChatGLM2/3 and GLM-4 tokenizers' get_command)."""
        alias = {"<eos>": self.eos_token_id, "<pad>": self.pad_token_id, "<bos>": self.bos_token_id}
        if token in self.glmcpu.special:
            return self.glmcpu.special[token]
        if alias.get(token) is not None:
            return alias[token]
        raise GlmcpuError(f"the {self.family} tokenizer has no special token {token!r} "
                          f"(it has {', '.join(sorted(self.glmcpu.special))})")

    def convert_tokens_to_ids(self, tokens):
        if isinstance(tokens, (list, tuple)):
            return [self.convert_tokens_to_ids(t) for t in tokens]
        if not isinstance(tokens, str):
            raise GlmcpuError(f"convert_tokens_to_ids takes a token string or a list of them, got {tokens!r}")
        tok = self.glmcpu
        if tokens in tok.special:
            return tok.special[tokens]
        if hasattr(tok, "sp"):
            return tok.sp.piece_to_id(tokens)  # <unk>'s id for an unknown piece, as the official tokenizer
        if hasattr(tok, "tk"):
            i = tok.tk.token_to_id(tokens)
            if i is not None:
                return i
        raise GlmcpuError(f"{tokens!r} is not a token of the {self.family} tokenizer")

    def convert_ids_to_tokens(self, ids, skip_special_tokens=False):
        if isinstance(ids, (list, tuple, np.ndarray)):
            out = [self.convert_ids_to_tokens(int(i)) for i in ids]
            specials = self.glmcpu.special_token_ids()
            return [t for i, t in zip(ids, out) if not (skip_special_tokens and int(i) in specials)]
        i = int(ids)
        tok = self.glmcpu
        names = {v: k for k, v in tok.special.items()}
        if i in names:
            return names[i]
        if hasattr(tok, "sp") and 0 <= i < tok.sp.vocab_size():
            return tok.sp.id_to_piece(i)
        if hasattr(tok, "tk"):
            t = tok.tk.id_to_token(i)
            if t is not None:
                return t
        return tok.token_bytes(i).decode("utf-8", errors="replace")

    def tokenize(self, text, **kwargs):
        return self.convert_ids_to_tokens(self.encode(text, add_special_tokens=False))

    # encode / decode
    def encode(self, text, add_special_tokens=True, return_tensors=None, **kwargs):
        """Token ids of ``text`` (the official tokenizer's; add_special_tokens: [gMASK] sop before
        it, ChatGLM-6B [gMASK] <sop> after it); return_tensors="np" gives an int64 [1, T] array."""
        _check_tensors(return_tensors)
        _no_extra(kwargs, ("truncation", "max_length", "padding"), "encode")
        if not isinstance(text, str):
            raise GlmcpuError(f"encode() needs a str, got {type(text).__name__}")
        ids = self.glmcpu.encode(text, add_special_tokens=bool(add_special_tokens))
        ids = _truncate(ids, kwargs)
        return np.asarray([ids], np.int64) if return_tensors == "np" else ids

    def __call__(self, text, add_special_tokens=True, return_tensors=None, padding=False, truncation=False,
                 max_length=None, return_attention_mask=True, **kwargs):
        """{"input_ids", "attention_mask"} for a text or a list of texts (padding=True pads a batch on
        ``padding_side`` with pad_token_id)."""
        _check_tensors(return_tensors)
        _no_extra(kwargs, ("return_token_type_ids", "is_split_into_words"), "the tokenizer")
        if kwargs.get("is_split_into_words"):
            raise GlmcpuError("is_split_into_words is not supported: pass the text (or a list of texts)")
        batch = isinstance(text, (list, tuple))
        texts = list(text) if batch else [text]
        if not texts or not all(isinstance(t, str) for t in texts):
            raise GlmcpuError("the tokenizer takes a str or a non-empty list of str")
        opts = {"truncation": truncation, "max_length": max_length}
        seqs = [_truncate(self.glmcpu.encode(t, add_special_tokens=bool(add_special_tokens)), opts) for t in texts]
        return self._batch(seqs, batch, return_tensors, padding, return_attention_mask, max_length)

    def _batch(self, seqs, batch, return_tensors, padding=False, return_attention_mask=True, max_length=None):
        masks = [[1] * len(s) for s in seqs]
        if padding:
            width = max(map(len, seqs))
            if padding == "max_length" and max_length:
                width = max(width, int(max_length))
            pad = self.pad_token_id
            for k, s in enumerate(seqs):
                n = width - len(s)
                if self.padding_side == "left":
                    seqs[k], masks[k] = [pad] * n + s, [0] * n + masks[k]
                else:
                    seqs[k], masks[k] = s + [pad] * n, masks[k] + [0] * n
        if return_tensors == "np":
            if len(set(map(len, seqs))) > 1:
                raise GlmcpuError("the texts have different lengths: pass padding=True to get one array "
                                  "(glmcpu's model still takes one sequence at a time)")
            seqs, masks = np.asarray(seqs, np.int64), np.asarray(masks, np.int64)
        elif not batch:
            seqs, masks = seqs[0], masks[0]
        out = BatchEncoding(input_ids=seqs)
        if return_attention_mask:
            out["attention_mask"] = masks
        return out

    def decode(self, token_ids, skip_special_tokens=False, **kwargs):
        """Text of one sequence of ids (int, list or 1-D array), as the official decode writes it."""
        _no_extra(kwargs, ("clean_up_tokenization_spaces", "spaces_between_special_tokens"), "decode")
        if _is_torch(token_ids):
            raise GlmcpuError(f"decode() got a torch tensor; {TENSOR_HINT}")
        a = np.asarray(token_ids)
        if a.ndim == 0:
            a = a.reshape(1)
        if a.ndim != 1:
            raise GlmcpuError(f"decode() takes one sequence of ids, got shape {a.shape}; use batch_decode for a "
                              f"batch (e.g. outputs[0] for the first sequence)")
        if a.size and not np.issubdtype(a.dtype, np.integer):
            raise GlmcpuError(f"decode() needs integer token ids, got dtype {a.dtype}")
        return self.glmcpu.decode([int(i) for i in a], skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences, skip_special_tokens=False, **kwargs):
        if _is_torch(sequences):
            raise GlmcpuError(f"batch_decode() got a torch tensor; {TENSOR_HINT}")
        return [self.decode(s, skip_special_tokens=skip_special_tokens, **kwargs) for s in sequences]

    # chat prompts
    def apply_chat_template(self, conversation, tools=None, add_generation_prompt=False, tokenize=True,
                            return_tensors=None, return_dict=False, chat_template=None, padding=False,
                            truncation=False, max_length=None, **kwargs):
        """The chat prompt of ``conversation`` (a list of {"role", "content"} dicts, or a list of such
        lists): the model's jinja chat template rendered as transformers renders it (GLM-4 releases),
        or the family's official chat format (ChatGLM3 build_chat_input, ChatGLM2 / ChatGLM-6B
        rounds; no template in those releases). tokenize=False: the text; else the ids (a list,
        an int64 [1, T] array with return_tensors="np", a BatchEncoding with return_dict=True)."""
        _check_tensors(return_tensors)
        _no_extra(kwargs, ("continue_final_message", "documents", "return_assistant_tokens_mask",
                           "tokenizer_kwargs"), "apply_chat_template")
        if kwargs.get("continue_final_message") or kwargs.get("return_assistant_tokens_mask"):
            raise GlmcpuError("apply_chat_template: continue_final_message and return_assistant_tokens_mask "
                              "are not supported")
        batch = isinstance(conversation, (list, tuple)) and conversation and \
            isinstance(conversation[0], (list, tuple))
        convs = list(conversation) if batch else [conversation]
        texts, seqs = [], []
        for conv in convs:
            text, ids = self._chat(conv, tools, add_generation_prompt, chat_template, tokenize,
                                   kwargs.get("documents"))
            texts.append(text)
            seqs.append(ids)
        if not tokenize:
            return texts if batch else texts[0]
        seqs = [_truncate(s, {"truncation": truncation, "max_length": max_length}) for s in seqs]
        if return_dict:
            return self._batch(seqs, batch, return_tensors, padding, True, max_length)
        if return_tensors == "np":
            return self._batch(seqs, True, "np", padding, False, max_length)["input_ids"]
        return seqs if batch else seqs[0]

    def _chat(self, conversation, tools, add_generation_prompt, chat_template, tokenize, documents=None):
        """(text or None, ids or None) of one conversation."""
        if not isinstance(conversation, (list, tuple)) or not conversation \
                or not all(isinstance(m, dict) for m in conversation):
            raise GlmcpuError("apply_chat_template needs a non-empty list of {'role', 'content'} dicts")
        template = chat_template or self.chat_template
        tok = self.glmcpu
        if template:
            from .chat_template import render
            variables = dict(getattr(tok, "special_tokens_map", None) or {})
            if documents is not None:
                variables["documents"] = documents
            text = render(template, list(conversation), tools, add_generation_prompt, **variables)
            return text, (tok.encode(text, parse_special=True) if tokenize else None)
        ids = self._family_prompt(conversation, tools)
        if not add_generation_prompt and self.family in ROLE_FAMILIES:
            ids = ids[:-1]  # the family prompt ends with <|assistant|>
        return tok.decode(ids), ids

    def _family_prompt(self, messages, tools=None):
        """The family's official chat prompt (no template): ids ending where the reply starts."""
        from . import families
        fam = families.get(self.family)
        if self.family not in PAIR_FAMILIES + ("chatglm3", "glm4"):
            raise GlmcpuError("this model file has no chat template; convert again with the release's "
                              "tokenizer_config.json next to the weights (or --tokenizer-dir DIR)")
        messages = [_message_for_prompt(m, i) for i, m in enumerate(messages)]
        if self.family in PAIR_FAMILIES:
            return fam.chat_prompt(self.glmcpu, messages, tools=tools)
        from .toolcalls import render_messages
        expanded = []
        for m in messages:
            expanded += _expand_tools(self.family, m)
        return families.chatglm3.role_prompt(self.glmcpu, render_messages(self.family, expanded, tools))

    def build_chat_input(self, query, history=None, role="user"):
        """ChatGLM3's (and GLM-4's) prompt for ``query`` after ``history`` (dicts), as a BatchEncoding
        with input_ids and attention_mask, int64 [1, T] arrays."""
        if self.family not in ("chatglm3", "glm4"):
            raise GlmcpuError(f"build_chat_input belongs to the ChatGLM3 / GLM-4 tokenizers; for {self.family} "
                              f"use apply_chat_template" + (" or build_prompt" if self.family == "chatglm2" else ""))
        ids = self._family_prompt(_role_messages(self.family, history, query, role))
        return self._batch([ids], True, "np")

    def build_prompt(self, query, history=None):
        """ChatGLM2's prompt text for ``query`` after ``history`` ((query, response) pairs)."""
        if self.family != "chatglm2":
            raise GlmcpuError(f"build_prompt belongs to the ChatGLM2 tokenizer; for {self.family} use "
                              f"apply_chat_template")
        pairs = _pairs(history)
        prompt = "".join(f"[Round {i + 1}]\n\n问：{q}\n\n答：{r}\n\n" for i, (q, r) in enumerate(pairs))
        return prompt + f"[Round {len(pairs) + 1}]\n\n问：{query}\n\n答："


def _no_extra(kwargs, allowed, what):
    extra = sorted(k for k in kwargs if k not in allowed)
    if extra:
        raise GlmcpuError(f"{what}: unsupported argument(s) {', '.join(extra)}")


def _truncate(ids, opts):
    if opts.get("truncation") and opts.get("max_length"):
        return ids[:int(opts["max_length"])]
    return ids


def _pairs(history):
    """ChatGLM-6B / ChatGLM2 history: a list of (query, response) pairs."""
    if history is None:
        return []
    if not isinstance(history, (list, tuple)) or not all(
            isinstance(h, (list, tuple)) and len(h) == 2 and all(isinstance(x, str) for x in h) for h in history):
        raise GlmcpuError("history must be a list of (query, response) string pairs, as the official "
                          "ChatGLM-6B / ChatGLM2 chat returns it")
    return [tuple(h) for h in history]


def _message_for_prompt(m, i):
    if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "observation", "tool"):
        raise GlmcpuError(f"history[{i}] must be a dict with a role of system/user/assistant/observation, got {m!r:.80}")
    if not isinstance(m.get("content"), str):
        raise GlmcpuError(f"history[{i}] ({m['role']}) needs a string content, got {m.get('content')!r:.80}; "
                          f"keep the history that chat() returns (its entries hold the reply text)")
    return m


def _expand_tools(family, m):
    """A history message in the family's own messages: a ChatGLM3 system message with ``tools`` gets
    them appended as build_chat_input does; a GLM-4 one becomes the tools block, then its content,
    as glm-4-9b-chat's chat template writes it."""
    keep = {k: m[k] for k in ("role", "content", "metadata") if k in m}
    if keep["role"] == "tool":
        keep["role"] = "observation"
    if "tools" not in m or m["role"] != "system":
        return [keep]
    tools = m["tools"]
    if family == "chatglm3":
        keep["content"] = m["content"] + "\n" + json.dumps(tools, indent=4, ensure_ascii=False)
        return [keep]
    from .toolcalls import render_messages
    out = render_messages(family, [{"role": "system", "content": ""}, {"role": "user", "content": ""}], tools)[:1]
    return out + ([keep] if keep["content"] else [])


def _role_messages(family, history, query, role):
    if history is None:
        history = []
    if not isinstance(history, (list, tuple)):
        raise GlmcpuError("history must be a list of {'role', 'content'} dicts, as the official ChatGLM3 chat "
                          "returns it")
    if role not in ("user", "observation"):
        raise GlmcpuError(f"role must be 'user' or 'observation' (a tool's result), got {role!r}")
    if not isinstance(query, str):
        raise GlmcpuError(f"query must be a str, got {type(query).__name__}")
    msgs = [_message_for_prompt(m, i) for i, m in enumerate(history)]
    return msgs + [{"role": role, "content": query}]


# ---------------------------------------------------------------- replies

def _punctuation_v1(text):
    """ChatGLM-6B's process_response: half-width punctuation next to a CJK character -> full-width."""
    for half, full in ((",", "，"), ("!", "！"), (":", "："), (";", "；"), (r"\?", "？")):
        text = re.sub(r"([\u4e00-\u9fff])%s" % half, r"\1%s" % full, text)
        text = re.sub(r"%s([\u4e00-\u9fff])" % half, r"%s\1" % full, text)
    return text


def process_response(family, output, history=None):
    """The official process_response of ``family``. ChatGLM-6B / ChatGLM2: the reply text cleaned
    (-> str). ChatGLM3 / GLM-4: ``output`` (the reply with special tokens as text) split at
    <|assistant|>; each part's first line is its metadata: empty for text, a tool's name for a
    call, whose arguments become {"name", "parameters"} when the history's system message has
    tools (ChatGLM3's tool_call(k=v) read as literals only, never evaluated; GLM-4's JSON), else
    {"name", "content"} -> (response, history with the assistant entries appended)."""
    if family in PAIR_FAMILIES:
        text = output.strip().replace("[[训练时间]]", "2023年")
        return _punctuation_v1(text) if family == "chatglm1" else text
    history = copy.deepcopy(list(history or []))
    has_tools = bool(history) and history[0].get("role") == "system" and "tools" in history[0]
    content = ""
    for part in output.split("<|assistant|>"):
        metadata, sep, content = part.partition("\n")
        if not sep:
            metadata, content = "", part
        if not metadata.strip():
            content = content.strip()
            history.append({"role": "assistant", "metadata": metadata, "content": content})
            content = content.replace("[[训练时间]]", TRAINING_YEAR.get(family, "2024年"))
            continue
        history.append({"role": "assistant", "metadata": metadata, "content": content})
        name = metadata.strip()
        params = _call_arguments(family, name, content) if has_tools else None
        content = {"name": name, "parameters": params} if params is not None else {"name": name, "content": content}
    return content, history


def _call_arguments(family, name, body):
    """A tool call's arguments (dict), or None if ``body`` is no well-formed call."""
    if family != "chatglm3":
        try:
            args = json.loads(body)
        except ValueError:
            return None
        return args if isinstance(args, dict) else None
    from .toolcalls import parse_reply
    try:
        parsed = parse_reply(family, f"{name}\n{body}", [{"type": "function", "function": {"name": name}}])
    except GlmcpuError:
        return None
    calls = parsed["tool_calls"]
    return json.loads(calls[0]["function"]["arguments"]) if calls else None


# ---------------------------------------------------------------- model

class Config:
    """model.config: the checkpoint's config.json, by attribute or key."""

    def __init__(self, hf_config):
        self.__dict__.update(hf_config)
        self._dict = dict(hf_config)

    def __getitem__(self, key):
        return self._dict[key]

    def get(self, key, default=None):
        return self._dict.get(key, default)

    def to_dict(self):
        return dict(self._dict)

    def __repr__(self):
        return f"Config({json.dumps(self._dict, ensure_ascii=False)[:200]})"


GENERATE_DEFAULTS = {"max_length": 20, "max_new_tokens": None, "do_sample": False, "temperature": 1.0,
                     "top_p": 1.0, "top_k": 50, "repetition_penalty": 1.0, "eos_token_id": None,
                     "min_new_tokens": 0}
GENERATE_IGNORED = ("pad_token_id", "bos_token_id", "use_cache", "position_ids", "token_type_ids",
                    "synced_gpus", "output_attentions", "output_hidden_states")


class CompatModel:
    """A glmcpu model (``glmcpu``: the glmcpu.Model) with the official checkpoints' API."""

    def __init__(self, model):
        self.glmcpu = model
        self.family = model.family
        self.config = Config(model.hf_config)
        self.device = "cpu"
        self.dtype = np.float32
        self.training = False
        self.name_or_path = model.path

    def __repr__(self):
        return f"<glmcpu.compat model {self.family} {self.name_or_path!r} n_ctx={self.glmcpu.n_ctx}>"

    # torch.nn.Module habits: harmless here
    def eval(self):
        return self

    def train(self, mode=True):
        if mode:
            raise GlmcpuError("glmcpu is an inference engine: training is not supported (model.train())")
        return self

    def requires_grad_(self, requires_grad=True):
        return self

    def to(self, *args, **kwargs):
        for a in list(args) + list(kwargs.values()):
            if isinstance(a, str) and a.split(":")[0] in ("cuda", "mps", "xpu", "npu"):
                _gpu_note(a)
            elif type(a).__name__ == "device" and getattr(a, "type", "cpu") != "cpu":
                _gpu_note(str(a))
        return self

    def cuda(self, *args, **kwargs):
        _gpu_note("cuda")
        return self

    def cpu(self):
        return self

    def half(self):
        return self  # the file's precision is fixed at conversion (glmcpu convert --dtype)

    def float(self):
        return self

    def bfloat16(self):
        return self

    def quantize(self, bits, *args, **kwargs):
        warnings.warn(f"quantize({bits}) is ignored: a glmcpu file is quantized when converted "
                      f"(glmcpu convert --dtype q4_0 / q8_0)", stacklevel=2)
        return self

    # forward
    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, labels=None,
                 use_cache=None, return_dict=None, **kwargs):
        """One forward pass over the whole sequence (from an empty cache): CausalLMOutput with
        ``logits`` float32 [1, T, vocab]; with ``labels`` ([1, T], -100 = ignored) also ``loss``,
        the mean cross-entropy of each next token, as the official model computes it."""
        _no_extra(kwargs, ("output_attentions", "output_hidden_states", "inputs_embeds", "token_type_ids"),
                  "model()")
        if kwargs.get("inputs_embeds") is not None:
            raise GlmcpuError("inputs_embeds is not supported: pass input_ids")
        if kwargs.get("output_attentions") or kwargs.get("output_hidden_states"):
            raise GlmcpuError("output_attentions / output_hidden_states are not supported: glmcpu returns logits")
        if past_key_values is not None:
            raise GlmcpuError("past_key_values is not supported: glmcpu keeps its own KV cache; pass the whole "
                              "sequence")
        ids = _ids_1d(input_ids)
        _check_mask(attention_mask, ids.size)
        m = self.glmcpu
        m.reset()
        logits = m.forward(ids, all_logits=True)[None]  # [1, T, V]
        loss = None
        if labels is not None:
            lab = _ids_1d(labels, "labels")
            if lab.size != ids.size:
                raise GlmcpuError(f"labels have {lab.size} tokens, input_ids {ids.size}")
            loss = _next_token_loss(logits[0], lab)
        return CausalLMOutput(logits, loss)

    forward = __call__

    def generate(self, input_ids=None, generation_config=None, logits_processor=None, stopping_criteria=None,
                 streamer=None, attention_mask=None, num_beams=1, num_return_sequences=1, seed=None, inputs=None,
                 **kwargs):
        """Continue one sequence: int64 [1, T + new] with the prompt first, as transformers'
        generate. max_new_tokens wins over max_length (prompt included); without either the
        length is 20 tokens in all, as transformers' default. do_sample=False is greedy; with
        sampling: temperature, top_k (default 50), top_p; repetition_penalty; the reply ends after
        an eos_token_id (default: the model's eos ids), which is kept as the last token.
        logits_processor: callables (input_ids [1, t], scores [1, V]) -> scores on numpy arrays;
        stopping_criteria: callables (input_ids, scores) -> bool; streamer: put(ids) / end(), as
        transformers' TextStreamer (the prompt first, then each token); seed: the sampler's seed (glmcpu)."""
        if inputs is not None:
            if input_ids is not None:
                raise GlmcpuError("generate(): pass the prompt once (input_ids or inputs)")
            input_ids = inputs
        ids = _ids_1d(input_ids)
        _check_mask(attention_mask, ids.size)
        if num_beams != 1 or kwargs.pop("num_beam_groups", 1) != 1:
            raise GlmcpuError(f"num_beams={num_beams}: beam search is not supported; use greedy (do_sample=False) "
                              f"or sampling")
        if num_return_sequences != 1:
            raise GlmcpuError("num_return_sequences must be 1: glmcpu generates one sequence per call")
        if kwargs.get("return_dict_in_generate") or kwargs.get("output_scores") or kwargs.get("output_logits"):
            raise GlmcpuError("return_dict_in_generate / output_scores / output_logits are not supported; "
                              "call model(input_ids).logits for the scores")
        for k in ("return_dict_in_generate", "output_scores", "output_logits"):
            kwargs.pop(k, None)
        opts = _generation_options(generation_config, kwargs)
        params, eos = self._params(ids.size, opts, seed)
        out = list(ids)
        for t in self._decode_ids(ids, params, eos, opts["min_new_tokens"], logits_processor, stopping_criteria,
                                  streamer):
            out.append(t)
        return np.asarray([out], np.int64)

    def _params(self, n_prompt, opts, seed=None):
        from .generate import SamplingParams
        n_ctx = self.glmcpu.n_ctx
        if n_prompt >= n_ctx:
            raise GlmcpuError(f"the prompt is {n_prompt} tokens but the context holds {n_ctx}; load with a larger "
                              f"n_ctx (AutoModel.from_pretrained(FILE, n_ctx=...))")
        if opts["max_new_tokens"] is not None:
            new = _positive_int(opts["max_new_tokens"], "max_new_tokens")
        else:
            total = _positive_int(opts["max_length"], "max_length")
            if total <= n_prompt:
                raise GlmcpuError(f"max_length={total} leaves no room after the {n_prompt}-token prompt; pass "
                                  f"max_new_tokens (new tokens only) or a larger max_length")
            new = total - n_prompt
        new = min(new, n_ctx - n_prompt)  # the reply ends when the context is full
        if opts["do_sample"]:
            if opts["temperature"] is None or not opts["temperature"] > 0:
                raise GlmcpuError(f"temperature must be > 0 when sampling, got {opts['temperature']!r}; "
                                  f"pass do_sample=False for greedy decoding")
            temperature = float(opts["temperature"])
        else:
            temperature = 0.0
        params = SamplingParams(max_new_tokens=new, temperature=temperature, top_k=int(opts["top_k"] or 0),
                                top_p=float(opts["top_p"] if opts["top_p"] is not None else 1.0),
                                repetition_penalty=float(opts["repetition_penalty"] or 1.0), seed=seed)
        eos = opts["eos_token_id"]
        if eos is None:
            eos = list(self.glmcpu.config.eos_token_ids)
        elif isinstance(eos, (int, np.integer)):
            eos = [int(eos)]
        elif isinstance(eos, (list, tuple)) and all(isinstance(e, (int, np.integer)) for e in eos):
            eos = [int(e) for e in eos]
        else:
            raise GlmcpuError(f"eos_token_id must be an int or a list of ints, got {eos!r}")
        return params, set(eos)

    def _decode_ids(self, ids, params, eos, min_new, logits_processor, stopping_criteria, streamer):
        """Token ids as they are generated (the ending eos included). Token-id generation has no
        text, so it runs here rather than in glmcpu/requests.py (which decodes text, needs a
        tokenizer and stops on the family's stop set); the sampler is the same."""
        from .generate import Sampler
        sampler = Sampler(params)
        m = self.glmcpu
        m.reset()
        if streamer is not None:
            streamer.put(np.asarray([ids], np.int64))
        seen = [int(t) for t in ids]
        n0 = len(seen)
        logits = m.forward(ids, all_logits=False)[0]
        try:
            for k in range(params.max_new_tokens):
                scores = logits
                if k < min_new and eos:
                    scores = scores.copy()
                    scores[list(eos)] = -np.inf
                if logits_processor:
                    arr = np.asarray([seen], np.int64)
                    for proc in logits_processor:
                        scores = np.asarray(proc(arr, np.array(scores[None], np.float32)), np.float32).reshape(-1)
                nxt = sampler(scores, seen)
                seen.append(nxt)
                if streamer is not None:
                    streamer.put(np.asarray([nxt], np.int64))
                yield nxt
                if nxt in eos:
                    break
                if stopping_criteria and any(bool(np.all(c(np.asarray([seen], np.int64), scores[None])))
                                             for c in stopping_criteria):
                    break
                if len(seen) - n0 < params.max_new_tokens:
                    logits = m.forward([nxt], all_logits=False)[0]
        finally:
            if streamer is not None:
                streamer.end()

    # chat
    def _tokenizer(self, tokenizer):
        if not isinstance(tokenizer, CompatTokenizer):
            raise GlmcpuError(f"chat() needs the tokenizer from glmcpu.compat.AutoTokenizer.from_pretrained, "
                              f"got {type(tokenizer).__name__}")
        if tokenizer.family != self.family:
            raise GlmcpuError(f"the tokenizer is a {tokenizer.family} tokenizer, the model a {self.family} model; "
                              f"load both from the same file")
        return self.glmcpu.tokenizer

    def _chat_request(self, tokenizer, query, history, role, max_length, do_sample, top_p, temperature,
                      logits_processor, num_beams, kwargs):
        """(GenerationRequest, the history the reply is appended to) of one chat turn."""
        from .requests import GenerationRequest
        self._tokenizer(tokenizer)
        if num_beams != 1:
            raise GlmcpuError(f"num_beams={num_beams}: beam search is not supported")
        if logits_processor:
            raise GlmcpuError("chat() takes no logits_processor in glmcpu; use model.generate(input_ids, "
                              "logits_processor=[...]) with numpy callables")
        _no_extra(kwargs, ("max_new_tokens", "top_k", "repetition_penalty", "seed", "eos_token_id",
                           "pad_token_id"), "chat()")
        default_len, default_p, default_t = CHAT_DEFAULTS.get(self.family, CHAT_DEFAULT)
        if self.family in PAIR_FAMILIES:
            if role != "user":
                raise GlmcpuError(f"the {self.family} chat format has no roles: leave role='user'")
            pairs = _pairs(history)
            if not isinstance(query, str):
                raise GlmcpuError(f"query must be a str, got {type(query).__name__}")
            msgs = []
            for q, r in pairs:
                msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": r}]
            ids = self.glmcpu.chat_prompt(msgs + [{"role": "user", "content": query}])
            base = pairs
        else:
            msgs = _role_messages(self.family, history, query, role)
            ids = self._role_prompt(tokenizer, msgs)
            base = copy.deepcopy(list(history or [])) + [{"role": role, "content": query}]
        opts = {"max_length": default_len if max_length is None else max_length,
                "max_new_tokens": kwargs.get("max_new_tokens"), "do_sample": do_sample,
                "temperature": default_t if temperature is None else temperature,
                "top_p": default_p if top_p is None else top_p, "top_k": kwargs.get("top_k", 50),
                "repetition_penalty": kwargs.get("repetition_penalty", 1.0), "eos_token_id": None}
        if kwargs.get("eos_token_id") is not None:
            raise GlmcpuError("chat() stops on the family's official stop tokens; for other eos ids use "
                              "model.generate(input_ids, eos_token_id=...)")
        params, _ = self._params(len(ids), opts, kwargs.get("seed"))
        return GenerationRequest(ids, params), base

    def _role_prompt(self, tokenizer, msgs):
        if self.glmcpu.chat_template and self.family != "glm4":
            return self.glmcpu.chat_prompt(msgs)  # the template reads a system message's tools itself
        return tokenizer._family_prompt(msgs)

    def _finish(self, text, base, query):
        """(response, history) of a reply's text (special tokens kept as text)."""
        if self.family in PAIR_FAMILIES:
            response = process_response(self.family, text)
            return response, base + [(query, response)]
        return process_response(self.family, text, base)

    def chat(self, tokenizer, query, history=None, role="user", max_length=None, num_beams=1, do_sample=True,
             top_p=None, temperature=None, logits_processor=None, **kwargs):
        """One chat turn -> (response, history), as the official chat of the model's family.

        ChatGLM-6B / ChatGLM2: history is a list of (query, response) pairs and ``role`` must stay
        "user". ChatGLM3 and the GLM-4 families: history is a list of {"role", "content"} dicts (a
        system message may carry "tools": ChatGLM3 function specs, GLM-4 {"type": "function",
        "function": ...} specs); role "observation" sends a tool's result; a tool call comes back
        as {"name", "parameters"}. Defaults per family as the official code (max_length 2048 /
        top_p 0.7 / temperature 0.95 for ChatGLM-6B, 8192 / 0.8 / 0.8 for the others); kwargs:
        max_new_tokens, top_k (default 50), repetition_penalty, seed. The history passed in is not
        modified."""
        req, base = self._chat_request(tokenizer, query, history, role, max_length, do_sample, top_p, temperature,
                                       logits_processor, num_beams, kwargs)
        for _ in self.glmcpu.run(req):
            pass
        return self._finish(req.result.raw_text, base, query)

    def stream_chat(self, tokenizer, query, history=None, role="user", past_key_values=None, max_length=None,
                    do_sample=True, top_p=None, temperature=None, logits_processor=None,
                    return_past_key_values=False, num_beams=1, **kwargs):
        """As chat, yielding (response so far, history) while the reply grows; the last pair is the
        whole reply, as chat returns it. A tool call in progress is {"name", "content": the call so
        far} until its arguments are complete, then {"name", "parameters"}.
        past_key_values: glmcpu keeps the conversation's cache itself (only the new part of the
        prompt is computed), so return_past_key_values=True yields None as the third item and a
        past_key_values passed back must be that None."""
        if past_key_values is not None:
            raise GlmcpuError("past_key_values is not supported: glmcpu reuses its own cache; pass the history "
                              "(and past_key_values=None)")
        req, base = self._chat_request(tokenizer, query, history, role, max_length, do_sample, top_p, temperature,
                                       logits_processor, num_beams, kwargs)
        extra = (None,) if return_past_key_values else ()
        text, last = "", None
        for piece in self.glmcpu.run(req):
            text += piece
            response, hist = self._finish(text, base, query)
            if response and response != last:
                last = response
                yield (response, hist) + extra
        response, hist = self._finish(req.result.raw_text, base, query)
        if response != last:
            yield (response, hist) + extra

    def process_response(self, output, history=None):
        """The official process_response (see the module function)."""
        if self.family in PAIR_FAMILIES:
            return process_response(self.family, output)
        return process_response(self.family, output, history)


def _gpu_note(where):
    warnings.warn(f"glmcpu runs on the CPU: {where} is ignored", stacklevel=3)


def _positive_int(v, name):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise GlmcpuError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def _generation_options(generation_config, kwargs):
    """transformers' GenerationConfig defaults, then ``generation_config`` (object or dict), then kwargs."""
    opts = dict(GENERATE_DEFAULTS)
    if generation_config is not None:
        get = generation_config.get if isinstance(generation_config, dict) else \
            (lambda k, d=None: getattr(generation_config, k, d))
        for k in GENERATE_DEFAULTS:
            v = get(k, None)
            if v is not None:
                opts[k] = v
    for k in GENERATE_IGNORED:
        kwargs.pop(k, None)
    if "min_length" in kwargs:
        raise GlmcpuError("min_length is not supported; use min_new_tokens")
    unknown = sorted(k for k in kwargs if k not in GENERATE_DEFAULTS)
    if unknown:
        raise GlmcpuError(f"generate(): unsupported argument(s) {', '.join(unknown)}; glmcpu takes max_length, "
                          f"max_new_tokens, min_new_tokens, do_sample, temperature, top_k, top_p, "
                          f"repetition_penalty, eos_token_id, seed")
    for k, v in kwargs.items():
        if v is not None or k == "max_new_tokens":
            opts[k] = v
    opts["min_new_tokens"] = int(opts["min_new_tokens"] or 0)
    return opts


def _next_token_loss(logits, labels):
    """Mean cross-entropy of labels[t + 1] under logits[t] (labels -100 ignored), float32."""
    x = logits[:-1].astype(np.float64)
    y = labels[1:]
    keep = y != -100
    if not keep.any():
        return np.float32(np.nan)
    x, y = x[keep], y[keep]
    if (y < 0).any() or (y >= logits.shape[-1]).any():
        raise GlmcpuError(f"labels must be token ids or -100, got {int(y[(y < 0) | (y >= logits.shape[-1])][0])}")
    mx = x.max(-1, keepdims=True)
    lse = (mx + np.log(np.exp(x - mx).sum(-1, keepdims=True)))[:, 0]
    return np.float32((lse - x[np.arange(len(y)), y]).mean())


__all__ = ["AutoTokenizer", "AutoModel", "AutoModelForCausalLM", "CompatTokenizer", "CompatModel",
           "BatchEncoding", "CausalLMOutput", "process_response"]
