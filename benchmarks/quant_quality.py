"""Quantization error on the golden checkpoints: rel. RMS error of the logits against the
official PyTorch logits, per family, type and group size. Prints the markdown table of
docs/QUANTIZATION.md.

    python benchmarks/quant_quality.py [--golden ../shared/golden]
"""
import argparse
import os
import sys
import tempfile

import numpy as np

import glmcpu
from glmcpu import qtypes
from glmcpu.convert import convert

CASES = ["chatglm1-tiny", "chatglm2-tiny-bin", "chatglm3-tiny", "glm4-tiny"]


def run(path, ids, T, mode):
    m = glmcpu.load(path, mode=mode)
    return np.concatenate([m.forward(ids[:T])] + [m.forward([int(t)]) for t in ids[T:]])


def rel_rms(a, b):
    return float(np.sqrt(((a - b) ** 2).mean() / (b ** 2).mean()))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--golden", default=os.path.join(os.path.dirname(here), "shared", "golden"))
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            src = os.path.join(args.golden, case)
            e = np.load(os.path.join(src, "expected.npz"))
            ids = np.concatenate([e["prompt_ids"], e["decode_ids"]])
            T = len(e["prompt_ids"])
            official = np.concatenate([e["prefill_logits"], e["decode_logits"]])
            for dtype, gs in [("f32", 32), ("f16", 32)] + [(q, g) for q in qtypes.GROUPED for g in (32, 128)]:
                path = os.path.join(tmp, f"{case}-{dtype}-{gs}.glmq")
                convert(src, path, dtype=dtype, group_size=gs, progress=False)
                fast = run(path, ids, T, "fast")
                exact = run(path, ids, T, "exact")
                ref = run(path, ids, T, "reference")
                argmax = float((fast.argmax(1) == official.argmax(1)).mean())
                rows.append((case, dtype, gs if dtype.startswith("q") else "-", rel_rms(fast, official),
                             rel_rms(exact, official), float(np.abs(fast - ref).max() / np.abs(ref).max()), argmax))
    print("| case | type | group | rel. RMS error (fast) | rel. RMS error (exact: f32 activations) | fast vs reference, max rel. | argmax agreement |")
    print("|---|---|---|---|---|---|---|")
    for case, dtype, gs, f, x, r, a in rows:
        print(f"| {case} | {dtype} | {gs} | {f:.4f} | {x:.4f} | {r:.1e} | {a:.0%} |")


if __name__ == "__main__":
    sys.exit(main())
