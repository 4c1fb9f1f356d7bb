"""Held-out perplexity of the demo model per storage type (the table in docs/QUANTIZATION.md).

    python benchmarks/demo_perplexity.py /work/demo_main [--types f32 q4_0 q4_k_m ...]

CKPT is the checkpoint tools/train_demo.py wrote (config.json, model.safetensors, heldout.txt).
Each held-out entry is scored on its own, as in training: [gMASK] sop + text + eos, every token
after the two prefix tokens predicted (the same definition as train_log.json's perplexity).
The KV cache is float32, so the figures measure the weights' storage type alone. "b/w" is the
matrices' bits per weight (2-D tensors: bytes * 8 / values; norms and biases are f32 in every file).
"""
import argparse
import math
import os
import sys
import tempfile

import numpy as np

import glmcpu
from glmcpu import qtypes
from glmcpu.convert import convert
from glmcpu.file import ModelFile
from glmcpu.perplexity import log_softmax_at


def read_entries(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return [e.strip("\n") for e in text.split("\n%\n") if e.strip()]


def entry_perplexity(model, entries, seq_len=256):
    """exp(mean NLL) over the entries, each scored alone with the training format."""
    tok = model.tokenizer
    nll, n = 0.0, 0
    for e in entries:
        ids = (tok.prefix_ids() + tok.encode(e) + [tok.eos_id])[:seq_len]
        model.reset()
        logits = model.forward(ids)
        lp = log_softmax_at(logits[1:-1], np.asarray(ids[2:]))
        nll -= float(lp.sum())
        n += len(ids) - 2
    model.reset()
    return math.exp(nll / n), n


def bits_per_weight(path):
    mf = ModelFile(path)
    nbytes = values = 0
    for name, info in mf.tensor_types.items():
        if len(info["shape"]) == 2:
            nbytes += sum(mf.tensor(p).nbytes for p in info.get("parts", {name: "data"}))
            values += info["shape"][0] * info["shape"][1]
    return 8 * nbytes / values


def default_types():
    grouped = [(q, g) for q in qtypes.GROUPED for g in (32, 128)]
    rows = [q for q in qtypes.QUANTIZED if q not in qtypes.GROUPED] + ["q4_k_m", "q5_k_m"]
    return [("f32", None), ("f16", None)] + grouped + [(q, None) for q in rows]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ckpt")
    ap.add_argument("--heldout", help="default: CKPT/heldout.txt")
    ap.add_argument("--types", nargs="+", help="storage types or mixes (default: every one; grouped types at "
                                               "groups 32 and 128); f32 always comes first, the baseline")
    args = ap.parse_args(argv)
    todo = default_types() if not args.types else \
        [("f32", None)] + [(t, 32 if t in qtypes.GROUPED else None) for t in args.types if t != "f32"]
    entries = read_entries(args.heldout or os.path.join(args.ckpt, "heldout.txt"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = None
        for dtype, gs in todo:
            path = os.path.join(tmp, f"{dtype}-{gs}.glmq")
            convert(args.ckpt, path, dtype=dtype, group_size=gs or 32, progress=False)
            ppl, n = entry_perplexity(glmcpu.load(path, n_ctx=512, kv="f32"), entries)
            base = base or ppl
            rows.append((dtype, gs or "-", os.path.getsize(path), bits_per_weight(path), ppl, ppl / base - 1))
            print(f"{dtype} g{gs}: {ppl:.4f}", file=sys.stderr, flush=True)
    print(f"held-out: {len(entries)} entries, {n} tokens\n")
    print("| type | group | file | b/w | held-out perplexity | vs f32 |\n|---|---|---|---|---|---|")
    for dtype, gs, size, bpw, ppl, rel in rows:
        print(f"| {dtype} | {gs} | {size / 1e6:.1f} MB | {bpw:.2f} | {ppl:.3f} | {rel:+.2%} |")


if __name__ == "__main__":
    sys.exit(main())
