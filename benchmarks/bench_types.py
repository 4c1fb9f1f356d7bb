"""Several glmcpu files of one model (different storage types) in one run: alternating, medians.

    python benchmarks/bench_types.py c3-6b-q4_0.glmq c3-6b-q4_k_m.glmq [...] [--threads 2] [--reps 5]
        [--prefill 512] [--context 128] [--decode 16] [--json out.json]

Each repetition runs every file in turn (the order reverses between repetitions, so a noisy
neighbour slows them alike): a prefill of a P-token prompt from an empty cache, then D
single-token decode steps after a C-token context; only ``Model.forward`` is timed. Decode is also
given per byte read: tok/s x the weight bytes a decode step reads (glmcpu.bench.weight_bytes_per_token),
i.e. GB/s of weights, and as a ratio to the first file's (the acceptance measure of the K-quant
issue: a type that reads more bytes should decode as many bytes per second). The read bandwidth of
the machine is measured between repetitions, in the same run.

The files should fit in RAM together (they are memory-mapped and each decode step reads all of
one); otherwise the page cache, not the kernels, is measured.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vs_llama_cpp import glmcpu_engine  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--prefill", type=int, default=512, help="prompt length (default 512)")
    ap.add_argument("--context", type=int, default=128, help="context before the decode steps (default 128)")
    ap.add_argument("--decode", type=int, default=16, help="decode steps timed (default 16)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    from glmcpu.bench import read_bandwidth, weight_bytes_per_token
    from glmcpu.file import ModelFile
    from llvmlite import binding as llvm_binding
    n_ctx = max(args.prefill, args.context + args.decode) + 16
    rng = np.random.default_rng(0)
    names = [os.path.basename(f) for f in args.files]
    engines = {n: glmcpu_engine(f, args.threads, n_ctx) for n, f in zip(names, args.files)}
    nbytes = {n: weight_bytes_per_token(ModelFile(f)) for n, f in zip(names, args.files)}
    prompt = [int(t) for t in rng.integers(100, 60000, args.prefill)]
    ctx_ids = [int(t) for t in rng.integers(100, 60000, args.context)]
    for prefill, decode in engines.values():   # warm-up: compile, page the weights in
        prefill(prompt[:16])
        decode(ctx_ids[:8], 2)
    times = {n: {"decode": [], "prefill": []} for n in engines}
    bw = []
    for rep in range(args.reps):
        for n in (names if rep % 2 == 0 else names[::-1]):
            prefill, decode = engines[n]
            times[n]["prefill"].append(args.prefill / prefill(prompt))
            times[n]["decode"].append(args.decode / decode(ctx_ids, args.decode))
            print(f"rep {rep} {n}: prefill {times[n]['prefill'][-1]:.2f} tok/s, "
                  f"decode {times[n]['decode'][-1]:.2f} tok/s", file=sys.stderr, flush=True)
        bw.append(read_bandwidth(args.threads))
    med = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    base = names[0]
    table = {}
    for n in names:
        gbs = med[n]["decode"] * nbytes[n] / 1e9
        table[n] = {"weight_bytes_per_token": nbytes[n], "decode_tok_s": med[n]["decode"],
                    "prefill_tok_s": med[n]["prefill"], "decode_weight_gb_s": gbs,
                    "decode_per_byte_vs_first": gbs / (med[base]["decode"] * nbytes[base] / 1e9),
                    "prefill_vs_first": med[n]["prefill"] / med[base]["prefill"]}
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.machine(),
           "cpu": llvm_binding.get_host_cpu_name(), "threads": args.threads, "reps": args.reps,
           "prefill_tokens": args.prefill, "context": args.context, "decode_steps": args.decode,
           "files": args.files, "runs": times, "summary": table,
           "read_bandwidth_gb_s": statistics.median(bw) if all(bw) else None}
    print(f"\n{args.threads} threads, {args.reps} alternating repetitions, medians; "
          f"read bandwidth {res['read_bandwidth_gb_s'] or float('nan'):.1f} GB/s ({res['cpu']})\n"
          "| file | GB read / token | decode tok/s | decode GB/s | per byte vs first | prefill tok/s | prefill vs first |\n"
          "|---|---|---|---|---|---|---|")
    for n, r in table.items():
        print(f"| {n} | {r['weight_bytes_per_token'] / 1e9:.2f} | {r['decode_tok_s']:.2f} | {r['decode_weight_gb_s']:.1f} | "
              f"{r['decode_per_byte_vs_first']:.2f} | {r['prefill_tok_s']:.1f} | {r['prefill_vs_first']:.2f} |")
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f, indent=1)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
