"""glmcpu convert: a Hugging Face checkpoint directory or a GGUF file -> one .glmq file."""
import base64
import hashlib
import json
import os

import numpy as np

from glmcpu import __version__
from glmcpu.errors import GlmcpuError
from glmcpu.file import FORMAT_NAME, FORMAT_VERSION
from glmcpu.progress import Progress
from glmcpu import families, qtypes
from glmcpu.qtypes import QTYPES, TILE_ROWS, pick_group_size
from .hf import Checkpoint, to_f32
from .mixes import MIXES, mix_type
from .plan import plan_tensors
from .writer import Part, write_file, check_output_path

BLOCK_BYTES = 2 << 20  # float32 bytes of rows converted at a time (rounded up to whole tiles)


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, OSError):
        raise GlmcpuError(f"{path}: not valid JSON") from None


def _tokenizer_entry(ck, family, tokenizer_path, tokenizer_dir):
    """The tokenizer file's bytes and tokenizer_config.json for the metadata, or None when the
    source has none. The file is checked by building the family's tokenizer from it."""
    path = tokenizer_path
    if path is None:
        for d in ([tokenizer_dir] if tokenizer_dir else []) + [ck.src]:
            found = [os.path.join(d, n) for n in family.TOKENIZER_FILES if os.path.isfile(os.path.join(d, n))]
            if found:
                path = found[0]
                break
        if path is None and tokenizer_dir:
            raise GlmcpuError(f"{tokenizer_dir}: no {' or '.join(family.TOKENIZER_FILES)} there")
    if path is None:
        return None
    if not os.path.isfile(path):
        raise GlmcpuError(f"{path}: tokenizer file not found")
    with open(path, "rb") as f:
        data = f.read()
    tc_path = os.path.join(os.path.dirname(path), "tokenizer_config.json")
    tok_config = _read_json(tc_path) if os.path.isfile(tc_path) else None
    entry = {"type": family.TOKENIZER_KIND, "filename": os.path.basename(path),
             "sha256": hashlib.sha256(data).hexdigest(), "config": tok_config}
    family.make_tokenizer(entry, data)  # raises a clear error if the file is not this family's tokenizer
    entry["data"] = base64.b64encode(data).decode("ascii")
    return entry


def _chat_template(tok_entry):
    """The jinja chat template of tokenizer_config.json (a string, or the "default" of a named list)."""
    tc = (tok_entry or {}).get("config") or {}
    t = tc.get("chat_template")
    if isinstance(t, list):
        t = next((x.get("template") for x in t if isinstance(x, dict) and x.get("name") == "default"), None)
    return t if isinstance(t, str) else None


def _generation_eos(ck):
    """eos ids from generation_config.json (the official generate() stops on these too)."""
    path = ck.find_file("generation_config.json")
    if path is None:
        return []
    gc = _read_json(path)
    eos = gc.get("eos_token_id") if isinstance(gc, dict) else None
    eos = eos if isinstance(eos, list) else [eos]
    return [int(e) for e in eos if isinstance(e, int) and not isinstance(e, bool)]


class Source:
    """What every converter source provides: the family, the original config (kept in the
    file's metadata), the normalized params, the tokenizer entry and chat template, and the
    tensors in file order as ``(our name, reader)``. A reader has ``name``, ``path``, ``shape``,
    ``rows_f32(r0, r1)`` and ``ggml_type`` (None for float checkpoints; a GGUF tensor's type,
    with ``ggml_rows(r0, r1)`` giving its raw ggml blocks)."""

    def __init__(self, src, family, config, params, tokenizer, template, tensors, inputs=(), kind="hf"):
        self.src, self.family, self.config, self.params = src, family, config, params
        self.tokenizer, self.template, self.tensors, self.inputs = tokenizer, template, tensors, inputs
        self.kind = kind  # "hf" (float checkpoint) or "gguf" (tensors keep their type unless --dtype)


class HFTensor:
    """A checkpoint tensor (or a Concat of several) with an optional row permutation."""
    ggml_type = None

    def __init__(self, t, perm):
        self.t, self.perm = t, perm
        self.name, self.path, self.shape = t.name, t.path, tuple(t.shape)

    def rows_f32(self, r0=None, r1=None):
        if self.perm is None:
            return self.t.rows_f32(r0, r1)
        idx = self.perm if r0 is None else self.perm[r0:r1]
        return to_f32(self.t.raw()[idx], self.t.st_dtype)  # QKV rows of one layer: read whole, permuted


def open_hf(src, family=None, tokenizer=None, tokenizer_dir=None, log=None):
    """A Hugging Face checkpoint directory as a converter Source."""
    log = log or (lambda msg: None)
    ck = Checkpoint(src)
    fam = families.detect(ck.config, ck.src, family)
    params = fam.params(ck.config)
    params["eos_token_ids"] += [e for e in _generation_eos(ck) if e not in params["eos_token_ids"]]
    plan = plan_tensors(ck, ck.config, fam, params)
    tok = _tokenizer_entry(ck, fam, tokenizer, tokenizer_dir)
    if tok is None:
        log(f"note: no {' or '.join(fam.TOKENIZER_FILES)} in {ck.src}; the file will have no tokenizer "
            f"(pass --tokenizer-dir DIR or --tokenizer PATH)")
    return Source(ck.src, fam, ck.config, params, tok, _chat_template(tok),
                  [(name, HFTensor(t, perm)) for name, t, perm in plan], inputs=ck.weight_files)


def is_gguf(path):
    """A file that starts with GGUF's magic."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def open_source(src, family=None, tokenizer=None, tokenizer_dir=None, log=None):
    """A converter Source from a checkpoint directory or a GGUF file (detected by content)."""
    if is_gguf(src):
        from .gguf_import import open_gguf
        if tokenizer or tokenizer_dir:
            raise GlmcpuError("--tokenizer / --tokenizer-dir do not apply to a GGUF source: "
                              "its tokenizer is read from the GGUF metadata")
        return open_gguf(src, family=family, log=log)
    return open_hf(src, family=family, tokenizer=tokenizer, tokenizer_dir=tokenizer_dir, log=log)


def unreadable_type(reader):
    """The error for a GGUF tensor of a ggml type glmcpu neither stores nor dequantizes."""
    from .gguf_file import TYPE_NAMES
    known = ", ".join(TYPE_NAMES[t] for t in sorted(qtypes.BY_GGML_TYPE))
    return (f"{reader.path}: tensor {reader.name!r} is {reader.ggml_type_name}, which glmcpu cannot read; "
            f"use a GGUF whose tensors are {known} (llama.cpp's llama-quantize makes one)")


def _choose_type(name, reader, q, group_size, log):
    """The storage type and group size of one tensor: norms and biases f32; a GGUF tensor keeps
    its own type when ``q`` is None; quantized rows need a group size dividing their length."""
    if len(reader.shape) != 2:
        return QTYPES["f32"], None
    if q is None:  # keep the source's type (GGUF)
        kept = qtypes.BY_GGML_TYPE.get(reader.ggml_type)
        if kept is None:
            raise GlmcpuError(unreadable_type(reader))
        return kept, (32 if kept.grouped else None)
    if not q.grouped:
        if not qtypes.fits(q, reader.shape[1]):  # K-quants: rows of whole 256-value super-blocks
            log(f"note: {name} has rows of {reader.shape[1]} values, not whole {q.name} blocks: q8_0 instead")
            return _choose_type(name, reader, QTYPES["q8_0"], group_size, log)
        return q, None
    gs = pick_group_size(reader.shape[1], group_size)
    if gs is None:
        log(f"note: {name} has rows of {reader.shape[1]} values, not a multiple of 32: kept in f16")
        return QTYPES["f16"], None
    if gs != group_size:
        log(f"note: {name} has rows of {reader.shape[1]} values: group size {gs} instead of {group_size}")
    return q, gs


def convert(src, out, dtype=None, family=None, tokenizer=None, progress=None, log=None,
            group_size=32, embedding_dtype=None, output_dtype=None, tokenizer_dir=None):
    """Convert checkpoint directory or GGUF file ``src`` to the glmcpu file ``out``. Returns
    summary rows [(name, shape, type, bytes)].

    dtype: type of the 2-D weights (default: f16 for a checkpoint; for a GGUF file each tensor
    keeps its type, bit for bit); embedding_dtype / output_dtype override it for the token
    embedding and the output layer (e.g. "f16" to keep them unquantized). group_size: 32, 64 or
    128 for the quantized types; a tensor whose row length it does not divide uses the largest
    smaller group size that does, or f16 if none does (a note is logged either way).
    """
    mix = dtype if dtype in MIXES else None
    for d in (None if mix else dtype, embedding_dtype, output_dtype):
        if d is not None:
            qtypes.get(d)
    if group_size not in (32, 64, 128):
        raise GlmcpuError(f"group size {group_size} is not supported; use 32, 64 or 128")
    log = log or (lambda msg: None)
    out = check_output_path(out)
    source = open_source(src, family=family, tokenizer=tokenizer, tokenizer_dir=tokenizer_dir, log=log)
    for p in source.inputs:
        if os.path.abspath(p) == out:
            raise GlmcpuError(f"{out}: output would overwrite an input file")
    dtype = dtype or (None if source.kind == "gguf" else "f16")
    qtype = qtypes.get(dtype) if dtype and not mix else None
    q_embd = qtypes.get(embedding_dtype) if embedding_dtype else qtype
    q_out = qtypes.get(output_dtype) if output_dtype else qtype

    entries = []  # (name, reader, qtype, group size, [Part])
    tied = families.is_tied(source.family, source.config) if source.kind == "hf" else False
    for name, reader in source.tensors:
        want = {"token_embd.weight": q_embd, "output.weight": q_out}.get(name, qtype)
        if mix and len(reader.shape) == 2 and not (name in ("token_embd.weight", "output.weight") and want):
            kind, note = mix_type(mix, name, reader.shape[1], source.params["n_layer"], tied)
            if note:
                log(note)
            want = qtypes.get(kind)
        q, gs = _choose_type(name, reader, want, group_size, log)
        spec = q.parts(reader.shape, gs)
        parts = [Part(name + suffix, st, shape) for suffix, role, st, shape in spec]
        entries.append((name, reader, q, gs, parts, {name + suffix: role for suffix, role, st, shape in spec}))
    tensor_meta = {}
    for name, reader, q, gs, parts, roles in entries:
        tensor_meta[name] = {"type": q.name, "shape": list(reader.shape), "parts": roles}
        if gs:
            tensor_meta[name]["group_size"] = gs
    matrices = [e for e in entries if len(e[1].shape) == 2]
    kind = lambda n: next((q.name for name, r, q, gs, p, ro in matrices if name == n), None)  # noqa: E731
    quant = {"dtype": dtype or "as in the source", "norms_and_biases": "f32",
             "embedding": kind("token_embd.weight"), "output": kind("output.weight")}
    if any(q.grouped for name, r, q, gs, p, ro in matrices):
        quant.update(group_size=group_size if dtype else 32, tile_rows=TILE_ROWS,
                     activations="int8 per 32 (fast kernels)")
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "family": source.family.NAME,
        "config": json.dumps(source.config, ensure_ascii=False),
        "params": json.dumps(source.params),
        "quantization": json.dumps(quant),
        "tensors": json.dumps(tensor_meta),
        "tokenizer": json.dumps(source.tokenizer),
        "chat_template": source.template or "",
        "converter": f"glmcpu {__version__}",
    }
    all_parts = [p for e in entries for p in e[4]]
    bar = Progress(len(entries), "convert", enabled=progress)

    def fill(w):
        for name, reader, q, gs, parts, roles in entries:
            _write_tensor(w, reader, q, gs, parts)
            bar.update(1, name)

    try:
        write_file(out, all_parts, metadata, fill)
    finally:
        bar.close()
    return [(name, reader.shape, q.name + (f"/g{gs}" if gs else ""), sum(p.nbytes for p in parts))
            for name, reader, q, gs, parts, roles in entries]


def _write_tensor(w, reader, q, gs, parts):
    """Stream one tensor: blocks of rows are read and encoded (or, for a GGUF tensor kept in its
    type, repacked) once; the first part is written as it comes, the small later parts (scales,
    mins) are held until the first is done."""
    shape = reader.shape
    if len(shape) == 1:
        blocks = [(None, None)]
    else:
        step = max(1, BLOCK_BYTES // (shape[1] * 4))
        step = max(q.row_align, step // q.row_align * q.row_align)
        blocks = [(r, min(shape[0], r + step)) for r in range(0, shape[0], step)]
    repack = reader.ggml_type is not None and reader.ggml_type == q.ggml_type and len(shape) == 2
    held = [[] for _ in parts[1:]]
    w.seek_part(parts[0])
    for r0, r1 in blocks:
        if repack:
            enc = q.from_ggml(reader.ggml_rows(r0, r1), shape)
        else:
            rows = reader.rows_f32(r0, r1)
            if rows.size and not (np.isfinite(rows.max()) and np.isfinite(rows.min())):  # NaN propagates
                raise GlmcpuError(f"{reader.path}: tensor {reader.name!r} contains NaN or infinity")
            enc = q.encode(rows, reader.name, gs)
        w.write(enc[0])
        for h, a in zip(held, enc[1:]):
            h.append(a)
    for part, h in zip(parts[1:], held):
        w.seek_part(part)
        for a in h:
            w.write(a)
