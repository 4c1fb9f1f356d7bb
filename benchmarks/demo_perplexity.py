"""Held-out perplexity of the demo model per storage type (the table in docs/QUANTIZATION.md).

    python benchmarks/demo_perplexity.py /work/demo_main [--ctx 256]

CKPT is the checkpoint tools/train_demo.py wrote (config.json, model.safetensors, heldout.txt).
Each held-out entry is scored on its own, as in training: [gMASK] sop + text + eos, every token
after the two prefix tokens predicted (the same definition as train_log.json's perplexity).
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ckpt")
    ap.add_argument("--heldout", help="default: CKPT/heldout.txt")
    args = ap.parse_args(argv)
    entries = read_entries(args.heldout or os.path.join(args.ckpt, "heldout.txt"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = None
        for dtype, gs in [("f32", 32), ("f16", 32)] + [(q, g) for q in qtypes.GROUPED for g in (32, 128)]:
            path = os.path.join(tmp, f"{dtype}-{gs}.glmq")
            convert(args.ckpt, path, dtype=dtype, group_size=gs, progress=False)
            ppl, n = entry_perplexity(glmcpu.load(path, n_ctx=512), entries)
            base = base or ppl
            rows.append((dtype, gs if dtype.startswith("q") else "-", os.path.getsize(path), ppl, ppl / base - 1))
            print(f"{dtype} g{gs}: {ppl:.4f}", file=sys.stderr, flush=True)
    print(f"held-out: {len(entries)} entries, {n} tokens\n")
    print("| type | group | file | held-out perplexity | vs f32 |\n|---|---|---|---|---|")
    for dtype, gs, size, ppl, rel in rows:
        print(f"| {dtype} | {gs} | {size / 1e6:.1f} MB | {ppl:.3f} | {rel:+.2%} |")


if __name__ == "__main__":
    sys.exit(main())
