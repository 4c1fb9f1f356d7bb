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
from . import families
from .hf import Checkpoint
from .quantize import QTYPES, get_qtype
from .writer import Part, write_file, check_output_path

BLOCK_BYTES = 8 << 20  # float32 bytes converted at a time


def _tokenizer_entry(ck, family, tokenizer_path):
    """The tokenizer file's bytes and config for the metadata, or None when the source has none."""
    path = tokenizer_path or ck.find_file("tokenizer.model")
    if path is None:
        return None
    if not os.path.isfile(path):
        raise GlmcpuError(f"{path}: tokenizer file not found")
    with open(path, "rb") as f:
        data = f.read()
    kind = "tiktoken" if family == "glm4" else "sentencepiece"
    if kind == "tiktoken":
        first = data.split(b"\n", 1)[0].split()
        if len(first) != 2 or not first[1].isdigit():
            raise GlmcpuError(f"{path}: not a GLM-4 tiktoken file (lines of '<base64 token> <rank>')")
    else:
        import sentencepiece as spm
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(data)
        except Exception:
            raise GlmcpuError(f"{path}: not a sentencepiece model") from None
    tc_path = os.path.join(os.path.dirname(path), "tokenizer_config.json")
    tok_config = None
    if os.path.isfile(tc_path):
        try:
            with open(tc_path, encoding="utf-8") as f:
                tok_config = json.load(f)
        except (ValueError, OSError):
            raise GlmcpuError(f"{tc_path}: not valid JSON") from None
    return {"type": kind, "filename": os.path.basename(path), "sha256": hashlib.sha256(data).hexdigest(),
            "config": tok_config, "data": base64.b64encode(data).decode("ascii")}


def convert(src, out, dtype="f16", family=None, tokenizer=None, progress=None, log=None):
    """Convert checkpoint directory ``src`` to the glmcpu file ``out``. Returns summary rows
    [(name, shape, type, bytes)]."""
    qtype = get_qtype(dtype)
    out = check_output_path(out)
    ck = Checkpoint(src)
    for p in ck.weight_files:
        if os.path.abspath(p) == out:
            raise GlmcpuError(f"{out}: output would overwrite an input file")
    fam = families.detect_family(ck.config, ck.src, family)
    params = families.build_params(ck.config, fam)
    plan = families.plan_tensors(ck, ck.config, params)
    tok = _tokenizer_entry(ck, fam, tokenizer)
    if tok is None and log:
        log(f"note: no tokenizer.model in {ck.src}; the file will have no tokenizer (pass --tokenizer PATH)")

    f32 = QTYPES["f32"]
    entries = []  # (name, source, perm, qtype, [Part])
    for name, t, perm in plan:
        q = qtype if len(t.shape) == 2 else f32  # norms and biases stay float32
        parts = [Part(name + suffix, st, shape) for suffix, st, shape in q.parts(t.shape)]
        entries.append((name, t, perm, q, parts))
    tensor_meta = {name: {"type": q.name, "shape": list(t.shape),
                          "parts": {p.name: p.name[len(name):] or "data" for p in parts}}
                   for name, t, perm, q, parts in entries}
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "family": fam,
        "config": json.dumps(ck.config, ensure_ascii=False),
        "params": json.dumps(params),
        "quantization": json.dumps({"dtype": qtype.name, "norms_and_biases": "f32"}),
        "tensors": json.dumps(tensor_meta),
        "tokenizer": json.dumps(tok),
        "converter": f"glmcpu {__version__}",
    }
    all_parts = [p for e in entries for p in e[4]]
    bar = Progress(len(entries), "convert", enabled=progress)

    def fill(w):
        for name, t, perm, q, parts in entries:
            _write_tensor(w, name, t, perm, q, parts)
            bar.update(1, name)

    try:
        write_file(out, all_parts, metadata, fill)
    finally:
        bar.close()
    return [(name, tuple(t.shape), q.name, sum(p.nbytes for p in parts)) for name, t, perm, q, parts in entries]


def _write_tensor(w, name, t, perm, q, parts):
    shape = t.shape
    if len(shape) == 1:
        blocks = [(None, None)]
    else:
        step = max(1, BLOCK_BYTES // (shape[1] * 4))
        blocks = [(r, min(shape[0], r + step)) for r in range(0, shape[0], step)]
    # Each part is written whole, in order: encode every block, keeping only the current part.
    for k, part in enumerate(parts):
        w.seek_part(part)
        for r0, r1 in blocks:
            if perm is None:
                rows = t.rows_f32(r0, r1)
            else:
                raw = t.raw()
                idx = perm if r0 is None else perm[r0:r1]
                from .hf import to_f32
                rows = to_f32(raw[idx], t.st_dtype)
            if not np.isfinite(rows).all():
                raise GlmcpuError(f"{t.path}: tensor {t.name!r} contains NaN or infinity")
            w.write(q.encode(rows, t.name)[k])
