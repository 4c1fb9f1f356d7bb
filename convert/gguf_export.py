"""glmcpu export: a glmcpu model file -> a GGUF file that llama.cpp (and Ollama) load.

The GGUF gets the architecture keys llama.cpp reads for the family's llama.cpp architecture
(``GGUF_ARCH``: "chatglm" or "glm4"), the tokenizer keys its converter writes for the stored
tokenizer (glmcpu/gguf_tokenizer.py), ``general.*`` provenance, and every tensor with the same
bits: f32/f16 as they are, q8_0/q4_0/q4_1 untiled into ggml's blocks (glmcpu/qtypes.py). Our
fused QKV is split back into attn_q/attn_k/attn_v where llama.cpp's converter writes them
separately. The hyper-parameters written are the ones glmcpu runs (the model's own values).
Tensors are streamed one at a time into a temporary file renamed into place when complete.
"""
import os

from glmcpu import __version__, families, models, qtypes
from glmcpu.errors import GlmcpuError, UnsupportedError
from glmcpu.families.common import layer_pattern
from glmcpu.file import ModelFile
from glmcpu.progress import Progress
from . import gguf_file as F
from . import gguf_tokenizer
from .writer import check_output_path

# llama_ftype, the weights' main type: by the file's --dtype, else by the type of blk.0.ffn_down
# (q4_k / q5_k name the _M mixes, LLAMA_FTYPE_MOSTLY_Q4_K_M / Q5_K_M)
FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9, "bf16": 32, "q4_k": 15,
              "q5_k": 17, "q6_k": 18, "q4_k_m": 15, "q5_k_m": 17}


def _gguf_names(family, ours):
    pattern, fields = layer_pattern(ours)
    src = family.GGUF_TENSORS[pattern]
    return [s.format(**fields) for s in src] if isinstance(src, list) else [src.format(**fields)]


def _tensors(mf, family, args):
    """[(gguf name, our name, qtype, group size, rows slice)] in our tensor order."""
    out = []
    for ours, shape in models.get(args.arch).tensor_table(args).items():
        info = mf.tensor_types[ours]
        q = qtypes.get(info["type"])
        gs = info.get("group_size")
        if q.grouped and gs != 32:
            raise GlmcpuError(f"{mf.path}: {ours} is {q.name} with group size {gs}; GGUF's {q.name.upper()} blocks "
                              f"hold 32 values per scale. Convert again with --group-size 32 to export it")
        names = _gguf_names(family, ours)
        rows = family.split_rows(ours, mf.params) if len(names) > 1 else [shape[0]]
        r0 = 0
        for name, n in zip(names, rows):
            out.append((name, ours, q, gs, (r0, r0 + n)))
            r0 += n
    return out


def _model_keys(w, mf, family, a):
    """general.* and the <arch>.* hyper-parameters, in llama.cpp's converter's order and value types."""
    A = family.GGUF_ARCH + "."
    cfg = mf.hf_config
    name = cfg.get("_name_or_path") if isinstance(cfg.get("_name_or_path"), str) else ""
    w.add("general.type", "model", F.STRING)
    w.add("general.name", os.path.basename(name.rstrip("/")) or family.TITLE, F.STRING)
    if "/" in name:
        w.add("general.source.huggingface.repository", name, F.STRING)
    w.add("general.source.converter", f"glmcpu {__version__}; model file by {mf.meta.get('converter', '?')}", F.STRING)
    u32 = [("context_length", a.seq_length), ("embedding_length", a.n_embd), ("feed_forward_length", a.n_ff),
           ("block_count", a.n_layer), ("attention.head_count", a.n_head), ("attention.head_count_kv", a.n_kv_head)]
    if a.head_dim * a.n_head != a.n_embd:  # llama.cpp takes n_embd / n_head otherwise
        u32 += [("attention.key_length", a.head_dim), ("attention.value_length", a.head_dim)]
    for key, v in u32:
        w.add(A + key, int(v), F.UINT32)
    w.add(A + "attention.layer_norm_rms_epsilon", a.norm_eps, F.FLOAT32)
    w.add(A + "rope.dimension_count", a.rope_dim, F.UINT32)
    w.add(A + "rope.freq_base", a.rope_base, F.FLOAT32)
    if a.rope_pos_scale != 1.0:
        w.add(A + "rope.scaling.type", "linear", F.STRING)
        w.add(A + "rope.scaling.factor", a.rope_pos_scale, F.FLOAT32)
    ftype = FILE_TYPES.get(mf.quantization.get("dtype"), FILE_TYPES[mf.tensor_types["blk.0.ffn_down.weight"]["type"]])
    w.add("general.file_type", ftype, F.UINT32)
    w.add("general.quantization_version", 2, F.UINT32)  # ggml's QK format version


def export(src, out, progress=None, log=None):
    """Write the GGUF of glmcpu model file ``src`` to ``out``. Returns [(gguf name, shape, type, bytes)]."""
    out = check_output_path(out)
    if os.path.abspath(src) == out:
        raise GlmcpuError(f"{out}: output would overwrite the input file")
    mf = ModelFile(src)
    family = families.get(mf.family)
    if family.GGUF_ARCH is None:
        raise UnsupportedError(f"unsupported: {family.TITLE} has no llama.cpp architecture, so no GGUF for it")
    a = models.get(mf.params.get("arch")).args.from_dict(mf.params)
    plan = _tensors(mf, family, a)
    tok = mf.tokenizer_info
    if tok is None:
        raise GlmcpuError(f"{src} has no tokenizer, and llama.cpp needs one in the GGUF; convert again with "
                          f"--tokenizer-dir DIR")
    keys = gguf_tokenizer.to_gguf(family.NAME, tok["filename"], mf.tokenizer_bytes(), tok.get("config"),
                                  mf.meta.get("chat_template") or None, a.n_vocab, model_config=mf.hf_config)
    written = {v for k, v, t in keys if k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")}
    extra = [e for e in a.eos_token_ids if e not in written]
    if extra and not any(k == "tokenizer.ggml.eom_token_id" for k, v, t in keys):
        # a third stop id (GLM's <|observation|>, which ends a tool call) as llama.cpp's end-of-message
        # token, so llama.cpp stops there too and an import gets the same stop ids back
        keys.append(("tokenizer.ggml.eom_token_id", extra[0], F.UINT32))
    w = F.GGUFWriter(family.GGUF_ARCH)
    _model_keys(w, mf, family, a)
    gguf_tokenizer.write_keys(w, keys)
    rows = []
    for name, ours, q, gs, (r0, r1) in plan:
        full = mf.tensor_types[ours]["shape"]
        shape = (r1 - r0, full[-1]) if len(full) == 2 else (r1 - r0,)  # rows of a split q/k/v bias too
        info = w.add_tensor(name, shape, q.ggml_type)
        rows.append((name, shape, q.name, info.nbytes))
    bar = Progress(len(plan), "export", enabled=progress)

    def data():
        cache = {}
        for name, ours, q, gs, (r0, r1) in plan:
            if ours not in cache:  # one tensor's ggml rows at a time (q, k and v share one)
                cache.clear()
                info = mf.tensor_types[ours]
                parts = {role: mf.tensor(part) for part, role in info["parts"].items()}
                cache[ours] = q.to_ggml(parts, tuple(info["shape"]), gs).reshape(info["shape"][0], -1)  # a row per row
                #   (or per value of a vector, so a split bias slices like a matrix)
            yield cache[ours][r0:r1]
            bar.update(1, name)

    try:
        w.write(out, data())
    finally:
        bar.close()
    return rows


def _byte_shape(shape, q):
    """The numpy shape of a tensor's ggml bytes, as gguf.GGUFWriter takes it with raw_dtype."""
    if len(shape) == 1:
        return (q.ggml_row_bytes(shape[0]),)
    return (shape[0], q.ggml_row_bytes(shape[1]))
