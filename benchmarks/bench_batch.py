"""Aggregate decode throughput with S sequences in one forward step (Model.forward_batch), and the
cost of a prompt chunk riding along with decode rows.

    python benchmarks/bench_batch.py -m model.glmq [--threads 2] [--streams 1 2 4 8] [--reps 3] [--json out.json]

For each S: S slots each hold a C-token context, then D steps each compute one new token for
every slot (S rows per forward pass); aggregate tok/s = S * D / time. Then the time of one step
carrying 3 decode rows plus a P-token prompt chunk, against P tokens alone and 3 rows alone: what
a new request's prefill costs the running streams and itself under continuous batching.
Medians over the repetitions; only forward passes are timed.
"""
import argparse
import json
import statistics
import sys
import time

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--chunk", type=int, default=128, help="prompt chunk riding with decode rows (default 128)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--kv", default="f16", choices=["f16", "f32"])
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    import glmcpu
    S = max(max(args.streams), 4)
    m = glmcpu.load(args.model, n_ctx=args.context + args.steps + args.chunk + 8, threads=args.threads,
                    kv=args.kv, n_slots=S)
    rng = np.random.default_rng(0)
    ctx = [[int(t) for t in rng.integers(100, 60000, args.context)] for _ in range(S)]
    m.forward_batch([(0, ctx[0][:8])])                            # compile, page the weights in
    m.reset()
    res = {"model": args.model, "threads": m.threads, "kv": args.kv, "context": args.context, "steps": args.steps,
           "date": time.strftime("%Y-%m-%d %H:%M"), "streams": {}}
    for n in args.streams:
        rates = []
        for _ in range(args.reps):
            m.reset()
            for s in range(n):                                    # contexts, one slot at a time
                m.forward_batch([(s, ctx[s])])
            t0 = time.perf_counter()
            for _ in range(args.steps):
                m.forward_batch([(s, [5]) for s in range(n)])
            rates.append(n * args.steps / (time.perf_counter() - t0))
        res["streams"][n] = statistics.median(rates)
        print(f"{n} streams: {res['streams'][n]:.2f} tok/s aggregate "
              f"({res['streams'][n] / res['streams'][args.streams[0]]:.2f}x {args.streams[0]})", file=sys.stderr)
    prompt = [int(t) for t in rng.integers(100, 60000, args.chunk)]
    mixed, alone, rows = [], [], []
    for _ in range(args.reps):
        m.reset()
        for s in range(3):
            m.forward_batch([(s, ctx[s])])
        t0 = time.perf_counter()
        m.forward_batch([(s, [5]) for s in range(3)])
        rows.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        m.forward_batch([(s, [5]) for s in range(3)] + [(3, prompt)])
        mixed.append(time.perf_counter() - t0)
        m.reset(3)
        t0 = time.perf_counter()
        m.forward_batch([(3, prompt)])
        alone.append(time.perf_counter() - t0)
    res["chunk"] = {"tokens": args.chunk, "with_3_decode_rows_s": statistics.median(mixed),
                    "alone_s": statistics.median(alone), "3_decode_rows_alone_s": statistics.median(rows)}
    print(f"a {args.chunk}-token prompt chunk: {res['chunk']['alone_s']:.2f} s alone, "
          f"{res['chunk']['with_3_decode_rows_s']:.2f} s with 3 decode rows (3 rows alone: "
          f"{res['chunk']['3_decode_rows_alone_s']:.3f} s)", file=sys.stderr)
    print(json.dumps(res, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
