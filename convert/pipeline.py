"""glmcpu convert: a Hugging Face ChatGLM checkpoint directory -> one .glmq file."""
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


def convert(src, out, dtype="f16", family=None, tokenizer=None, progress=None, log=None,
            group_size=32, embedding_dtype=None, output_dtype=None, tokenizer_dir=None):
    """Convert checkpoint directory ``src`` to the glmcpu file ``out``. Returns summary rows
    [(name, shape, type, bytes)].

    dtype: type of the 2-D weights; embedding_dtype / output_dtype override it for the token
    embedding and the output layer (e.g. "f16" to keep them unquantized). group_size: 32, 64 or
    128 for the quantized types; a tensor whose row length it does not divide uses the largest
    smaller group size that does, or f16 if none does (a note is logged either way).
    """
    qtype = qtypes.get(dtype)
    q_embd = qtypes.get(embedding_dtype or dtype)
    q_out = qtypes.get(output_dtype or dtype)
    if group_size not in (32, 64, 128):
        raise GlmcpuError(f"group size {group_size} is not supported; use 32, 64 or 128")
    log = log or (lambda msg: None)
    out = check_output_path(out)
    ck = Checkpoint(src)
    for p in ck.weight_files:
        if os.path.abspath(p) == out:
            raise GlmcpuError(f"{out}: output would overwrite an input file")
    fam = families.detect(ck.config, ck.src, family)
    params = fam.params(ck.config)
    params["eos_token_ids"] += [e for e in _generation_eos(ck) if e not in params["eos_token_ids"]]
    plan = plan_tensors(ck, ck.config, fam, params)
    tok = _tokenizer_entry(ck, fam, tokenizer, tokenizer_dir)
    if tok is None:
        log(f"note: no {' or '.join(fam.TOKENIZER_FILES)} in {ck.src}; the file will have no tokenizer "
            f"(pass --tokenizer-dir DIR or --tokenizer PATH)")
    template = _chat_template(tok)

    entries = []  # (name, source, perm, qtype, group size, [Part])
    for name, t, perm in plan:
        if len(t.shape) != 2:
            q, gs = QTYPES["f32"], None  # norms and biases stay float32
        else:
            q = {"token_embd.weight": q_embd, "output.weight": q_out}.get(name, qtype)
            gs = None
            if q.row_align > 1:
                gs = pick_group_size(t.shape[1], group_size)
                if gs is None:
                    log(f"note: {name} has rows of {t.shape[1]} values, not a multiple of 32: kept in f16")
                    q = QTYPES["f16"]
                elif gs != group_size:
                    log(f"note: {name} has rows of {t.shape[1]} values: group size {gs} instead of {group_size}")
        parts = [Part(name + suffix, st, shape) for suffix, role, st, shape in q.parts(t.shape, gs)]
        roles = {name + suffix: role for suffix, role, st, shape in q.parts(t.shape, gs)}
        entries.append((name, t, perm, q, gs, parts, roles))
    tensor_meta = {}
    for name, t, perm, q, gs, parts, roles in entries:
        tensor_meta[name] = {"type": q.name, "shape": list(t.shape), "parts": roles}
        if gs:
            tensor_meta[name]["group_size"] = gs
    quant = {"dtype": qtype.name, "norms_and_biases": "f32",
             "embedding": q_embd.name, "output": q_out.name}
    if any(q.row_align > 1 for q in (qtype, q_embd, q_out)):
        quant.update(group_size=group_size, tile_rows=TILE_ROWS, activations="int8 per 32 (fast kernels)")
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "family": fam.NAME,
        "config": json.dumps(ck.config, ensure_ascii=False),
        "params": json.dumps(params),
        "quantization": json.dumps(quant),
        "tensors": json.dumps(tensor_meta),
        "tokenizer": json.dumps(tok),
        "chat_template": template or "",
        "converter": f"glmcpu {__version__}",
    }
    all_parts = [p for e in entries for p in e[5]]
    bar = Progress(len(entries), "convert", enabled=progress)

    def fill(w):
        for name, t, perm, q, gs, parts, roles in entries:
            _write_tensor(w, t, perm, q, gs, parts)
            bar.update(1, name)

    try:
        write_file(out, all_parts, metadata, fill)
    finally:
        bar.close()
    return [(name, tuple(t.shape), q.name + (f"/g{gs}" if gs else ""), sum(p.nbytes for p in parts))
            for name, t, perm, q, gs, parts, roles in entries]


def _write_tensor(w, t, perm, q, gs, parts):
    """Stream one tensor: blocks of rows are read, converted and encoded once; the first part is
    written as it comes, the small later parts (scales, mins) are held until the first is done."""
    shape = t.shape
    if len(shape) == 1:
        blocks = [(None, None)]
    else:
        step = max(1, BLOCK_BYTES // (shape[1] * 4))
        step = max(q.row_align, step // q.row_align * q.row_align)
        blocks = [(r, min(shape[0], r + step)) for r in range(0, shape[0], step)]
    held = [[] for _ in parts[1:]]
    w.seek_part(parts[0])
    for r0, r1 in blocks:
        if perm is None:
            rows = t.rows_f32(r0, r1)
        else:
            idx = perm if r0 is None else perm[r0:r1]
            rows = to_f32(t.raw()[idx], t.st_dtype)  # QKV rows of one layer: read whole, permuted
        if rows.size and not (np.isfinite(rows.max()) and np.isfinite(rows.min())):  # NaN propagates
            raise GlmcpuError(f"{t.path}: tensor {t.name!r} contains NaN or infinity")
        enc = q.encode(rows, t.name, gs)
        w.write(enc[0])
        for h, a in zip(held, enc[1:]):
            h.append(a)
    for part, h in zip(parts[1:], held):
        w.seek_part(part)
        for a in h:
            w.write(a)
