"""Check tests/gguf_reference.py against GGUF files written by llama.cpp's real convert_hf_to_gguf.py.

    python tools/check_gguf_reference.py [DIR]        (default: /work/data/gguf-ref/gguf)

DIR holds the converter's outputs and a manifest.json:
    {"cases": {CASE: {"src": CHECKPOINT_DIR, "outputs": {OUTTYPE: FILE, ...},
                      "tokenizer_pre_from": DIR_WITH_THE_FULL_TOKENIZER or null}}}
For every case and outtype the file is regenerated with write_reference_gguf and compared byte for
byte. On a mismatch the two files are compared key by key (order, type, value) and tensor by tensor
(name, order, type, shape, offset, bytes) and the differences are printed. Exit status 1 on any
mismatch.

How the files were made (working directories, the converter run, why the tokenizers are cut down):
/work/data/gguf-ref/README.md. Directories: /work/data/gguf-ref/gguf (the tiny models, every outtype)
and /work/data/gguf-ref/gguf-fullvocab (tokenizer path at the release vocabulary sizes, f32 only).

tokenizer_pre_from: the checkpoints' tokenizer.json files are cut down to the tiny models' 320-id
vocabularies, so the converter's pre-tokenizer hash cannot recognise them; the converter was run with
the pre-tokenizer name its own get_vocab_base_pre() gives for the real, full tokenizer.json in that
directory, and the same name is computed here (torch-free) with gguf_reference.tokenizer_pre_name.
"""
import json
import logging
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from gguf import GGUFReader, GGUFValueType  # noqa: E402

import gguf_reference  # noqa: E402

# the converter logs the same "Duplicated key name 'tokenizer.ggml.add_bos_token'" warning (the
# ChatGLM model keys write it, the tokenizer's ByteLevel post-processor writes it again in place)
logging.getLogger("gguf.gguf_writer").setLevel(logging.ERROR)

DEFAULT_DIR = "/work/data/gguf-ref/gguf"


def describe_differences(ref_path, new_path, limit=20):
    """Key-by-key and tensor-by-tensor differences between two GGUF files (list of strings)."""
    a, b = GGUFReader(ref_path), GGUFReader(new_path)
    out = []
    ka, kb = list(a.fields), list(b.fields)
    if ka != kb:
        out.append(f"key order/set differs:\n    converter: {ka}\n    reference: {kb}")
    for k in ka:
        if k not in b.fields:
            out.append(f"key {k}: missing in reference")
            continue
        fa, fb = a.fields[k], b.fields[k]
        ta = [GGUFValueType(t).name for t in fa.types]
        tb = [GGUFValueType(t).name for t in fb.types]
        if ta != tb:
            out.append(f"key {k}: type {ta} vs {tb}")
        va, vb = fa.contents(), fb.contents()
        if va != vb:
            if isinstance(va, list) and isinstance(vb, list):
                n = next((i for i, (x, y) in enumerate(zip(va, vb)) if x != y), min(len(va), len(vb)))
                out.append(f"key {k}: lengths {len(va)} vs {len(vb)}, first difference at [{n}]: "
                           f"{va[n:n + 3]!r} vs {vb[n:n + 3]!r}")
            else:
                out.append(f"key {k}: {va!r} vs {vb!r}")
    na, nb = [t.name for t in a.tensors], [t.name for t in b.tensors]
    if na != nb:
        out.append(f"tensor order/set differs:\n    converter: {na}\n    reference: {nb}")
    tb = {t.name: t for t in b.tensors}
    offset_noted = False
    for ta_ in a.tensors:
        tb_ = tb.get(ta_.name)
        if tb_ is None:
            out.append(f"tensor {ta_.name}: missing in reference")
            continue
        if ta_.tensor_type != tb_.tensor_type or list(ta_.shape) != list(tb_.shape):
            out.append(f"tensor {ta_.name}: {ta_.tensor_type.name}{list(ta_.shape)} vs "
                       f"{tb_.tensor_type.name}{list(tb_.shape)}")
        elif ta_.data_offset != tb_.data_offset and not offset_noted:
            offset_noted = True
            out.append(f"tensor data offsets differ from {ta_.name} on: {ta_.data_offset} vs {tb_.data_offset}")
        if ta_.data.tobytes() != tb_.data.tobytes():
            da = np.frombuffer(ta_.data.tobytes(), np.uint8)
            db = np.frombuffer(tb_.data.tobytes(), np.uint8)
            n = int(np.count_nonzero(da[:len(db)] != db[:len(da)])) if len(da) == len(db) else -1
            out.append(f"tensor {ta_.name}: data differs ({n} bytes of {len(da)})")
    if not out:
        out.append("no key or tensor difference found (the header layout differs?)")
    return out[:limit]


def main(argv):
    d = argv[1] if len(argv) > 1 else DEFAULT_DIR
    manifest = json.load(open(os.path.join(d, "manifest.json"), encoding="utf-8"))
    n_ok = n_bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for case, entry in manifest["cases"].items():
            pre = None
            if entry.get("tokenizer_pre_from"):
                pre = gguf_reference.tokenizer_pre_name(entry["tokenizer_pre_from"])
                if entry.get("tokenizer_pre") not in (None, pre):
                    print(f"{case}: manifest says the converter used pre {entry['tokenizer_pre']!r}, "
                          f"tokenizer_pre_name gives {pre!r}")
                    n_bad += 1
            for outtype, fname in entry["outputs"].items():
                ref = os.path.join(d, fname)
                new = os.path.join(tmp, fname)
                gguf_reference.write_reference_gguf(entry["src"], new, outtype, tokenizer_pre=pre)
                a, b = open(ref, "rb").read(), open(new, "rb").read()
                if a == b:
                    n_ok += 1
                    print(f"{case:30s} {outtype:5s} identical ({len(a)} bytes)"
                          + (f"  [tokenizer.ggml.pre {pre!r} from {entry['tokenizer_pre_from']}]" if pre else ""))
                else:
                    n_bad += 1
                    print(f"{case:30s} {outtype:5s} DIFFERS ({len(a)} vs {len(b)} bytes)")
                    for line in describe_differences(ref, new):
                        print("    " + line)
    print(f"{n_ok} identical, {n_bad} different")
    return 1 if n_bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
