"""The model families glmcpu runs, one module each, found through this registry.

A family module says everything glmcpu knows about one release line:

  NAME            the name stored in the model file ("chatglm3", "glm", ...); TITLE for people
  ARCH            the architecture that runs it (``glmcpu.models.ARCHS``), which owns the
                  tensor table: our tensor names and shapes from the hyper-parameters
  MODEL_TYPES     the config.json ``model_type`` values it may describe
  recognise(config, hints) -> True | False | None   (None: cannot tell; --family decides)
  params(config) -> dict         normalized hyper-parameters (the ARCH's ModelArgs), with "arch";
                                 every option that is not implemented raises "unsupported: <flag>"
  TENSORS         {our name: checkpoint name, or a list of names concatenated along rows};
                  "{i}" stands for the layer index
  IGNORED         checkpoint names that are dropped (e.g. rotary tables recomputed at load)
  row_permutation(name, params, config) -> new row -> old row, or None   (optional)
  split_rows(name, params) -> rows of each concatenated source        (with list sources)
  tied(config) -> the output layer is the embedding                    (optional)
  TOKENIZER_FILES file names of the tokenizer, looked for next to the weights, first found wins
  make_tokenizer(info, data) -> Tokenizer   from the tokenizer entry stored in the model file
  chat_prompt(tok, messages, tools, parse_special, template) -> prompt ids
  STOP_TOKENS     names of special tokens that end a reply, besides the eos ids
  GGUF_ARCH       llama.cpp's architecture name for it (None: llama.cpp cannot run it)
  GGUF_TENSORS    {our name: llama.cpp tensor name, or a list concatenated along rows}
  recognise_gguf(g) -> bool   a GGUF of this family (g: arch, tokenizer_model, tokens, tensors)

Callers ask this registry (``get``, ``detect``), never ``if family == ...``.
"""
import json
import os

from glmcpu.errors import GlmcpuError, UnsupportedError

from . import chatglm1, chatglm2, chatglm3, glm4, glm, glm4_0414
from .common import layer_pattern

# Order matters only for error messages and --family choices.
FAMILIES = {f.NAME: f for f in (chatglm1, chatglm2, chatglm3, glm4, glm, glm4_0414)}


def names():
    return list(FAMILIES)


def get(name):
    """The family module called ``name``; a clear error for a file made by a newer glmcpu."""
    if name not in FAMILIES:
        raise GlmcpuError(f"unknown model family {name!r} (known: {', '.join(FAMILIES)}); "
                          f"a file made by a newer glmcpu needs that version: upgrade glmcpu")
    return FAMILIES[name]


def read_hints(config, src=None):
    """What besides config.json can tell families apart: the model's name and its
    tokenizer_config.json (raw text and parsed), when the checkpoint directory has one."""
    hints = {"name": config.get("_name_or_path") or "", "tokenizer_config": {}, "tokenizer_config_text": ""}
    path = os.path.join(src, "tokenizer_config.json") if src else None
    if path and os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                tc = json.load(f)
        except (OSError, ValueError):
            tc = {}
        if isinstance(tc, dict):
            hints["tokenizer_config"] = tc
            hints["tokenizer_config_text"] = json.dumps(tc)
    return hints


def detect(config, src=None, override=None):
    """The family module a checkpoint's config.json describes (``override``: --family)."""
    if not isinstance(config, dict):
        raise GlmcpuError("config.json must hold a JSON object")
    mt = config.get("model_type")
    candidates = [f for f in FAMILIES.values() if mt in f.MODEL_TYPES]
    if not candidates:
        known = sorted({t for f in FAMILIES.values() for t in f.MODEL_TYPES})
        raise UnsupportedError(f"unsupported: model_type {mt!r}; glmcpu converts model_type "
                               f"{', '.join(repr(t) for t in known)} checkpoints")
    if "vision_config" in config:
        raise UnsupportedError("unsupported: vision_config (GLM-4V multimodal checkpoints)")
    hints = read_hints(config, src)
    verdicts = {f.NAME: f.recognise(config, hints) for f in candidates}
    if override is not None:
        if override not in FAMILIES:
            raise GlmcpuError(f"unknown family {override!r}; choose one of {', '.join(FAMILIES)}")
        if override not in verdicts or verdicts[override] is False:
            said = [FAMILIES[n].TITLE for n, v in verdicts.items() if v]
            what = f"it describes a {said[0]} model" if said else f"model_type {mt!r}"
            raise GlmcpuError(f"config.json does not describe a {FAMILIES[override].TITLE} model ({what})")
        return FAMILIES[override]
    sure = [n for n, v in verdicts.items() if v is True]
    if len(sure) == 1:
        return FAMILIES[sure[0]]
    maybe = [n for n, v in verdicts.items() if v is None] + sure
    raise GlmcpuError(
        f"cannot tell {' from '.join(maybe)} from config.json (no _name_or_path hint, no tokenizer_config.json); "
        f"pass {' or '.join('--family ' + n for n in maybe)}")


def detect_gguf(g, override=None):
    """The family of a GGUF file (``g``: arch, tokenizer_model, tokens, tensors; --family overrides)."""
    archs = sorted({f.GGUF_ARCH for f in FAMILIES.values() if f.GGUF_ARCH})
    if g["arch"] not in archs:
        raise UnsupportedError(f"unsupported: GGUF architecture {g['arch']!r}; glmcpu reads "
                               f"{', '.join(repr(a) for a in archs)} GGUF files (the GLM family)")
    if override is not None:
        if override not in FAMILIES:
            raise GlmcpuError(f"unknown family {override!r}; choose one of {', '.join(FAMILIES)}")
        if FAMILIES[override].GGUF_ARCH != g["arch"]:
            raise GlmcpuError(f"this GGUF is llama.cpp architecture {g['arch']!r}, not a {FAMILIES[override].TITLE} model")
        return FAMILIES[override]
    found = [f for f in FAMILIES.values() if f.recognise_gguf(g)]
    if len(found) != 1:
        raise GlmcpuError(f"cannot tell which GLM family this {g['arch']!r} GGUF is (tokenizer {g['tokenizer_model']!r}); "
                          f"pass --family ({', '.join(n for n, f in FAMILIES.items() if f.GGUF_ARCH == g['arch'])})")
    return found[0]




def sources(family, ours):
    """Checkpoint name(s) for one of our tensor names (a list when they are concatenated), or None."""
    pattern, fields = layer_pattern(ours)
    src = family.TENSORS.get(pattern)
    if src is None:
        return None
    return [s.format(**fields) for s in src] if isinstance(src, list) else src.format(**fields)


def is_tied(family, config):
    return getattr(family, "tied", lambda c: bool(c.get("tie_word_embeddings", False)))(config)


def checkpoint_shapes(family, config):
    """Checkpoint tensor name -> shape that ``config`` implies for ``family``, in our tensor order:
    the inverse of the name map, for writing random checkpoints (benchmarks/synth.py, tests)."""
    from glmcpu import models
    params = family.params(config)
    shapes = {}
    for ours, shape in models.tensor_table(params).items():
        src = sources(family, ours)
        if ours == "output.weight" and config.get("tie_word_embeddings", False):
            continue  # saved without lm_head (ChatGLM-6B's may go either way: it is written)
        if isinstance(src, list):
            for name, rows in zip(src, family.split_rows(ours, params)):
                shapes[name] = (rows,) + tuple(shape[1:])
        else:
            shapes[src] = tuple(shape)
    return shapes
