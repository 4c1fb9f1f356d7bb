"""Speed benchmark of a model file: what `glmcpu bench` and benchmarks/bench_generate.py print.

Reports, separately: load time, first-call (compile) time, prefill tok/s for 128- and 512-token
prompts, decode tok/s over 128 tokens at context 128 and 1024, peak RSS, file size, weight bytes
read per decoded token and the GB/s that achieves, and the machine's read bandwidth measured in
the same run with the same thread count (a numba parallel sum over a 2 GiB array, in a
subprocess so it does not count in peak RSS), hence the roofline ratio.

Decode at context N is measured with N positions already in the KV cache; the prompt's values do
not change the work, so unless --full-prefill is given the cache is marked filled without
computing a 1024-token prompt first.
"""
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np


def read_bandwidth(threads, gib=2.0, repeat=5):
    """GB/s of a numba parallel float32 sum over a large array (best of ``repeat``), in a subprocess."""
    code = f"""
import time, numpy as np, numba
from numba import njit, prange
numba.set_num_threads({threads})
@njit(parallel=True, fastmath=True, cache=False)
def total(a):
    s = np.float32(0.0)
    for i in prange(a.size):
        s += a[i]
    return s
a = np.ones(int({gib} * 2**30) // 4, np.float32)
total(a)
best = 1e9
for _ in range({repeat}):
    t = time.perf_counter(); total(a); best = min(best, time.perf_counter() - t)
print(a.nbytes / best / 1e9)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        return None
    return float(out.stdout.strip().splitlines()[-1])


def _best(times):
    t = np.asarray(times)
    return float(t.min()), float((t.max() - t.min()) / t.min()) if t.min() > 0 else 0.0


def weight_bytes_per_token(mf):
    """Bytes of weights a decode step reads: every matrix whole, the embedding one row."""
    total = 0
    for name, info in mf.tensor_types.items():
        nb = sum(mf.tensor(p).nbytes for p in info.get("parts", {name: "data"}))
        if name == "token_embd.weight":
            nb //= info["shape"][0]
        total += nb
    return total


def run(path, threads=None, repeat=3, n_ctx=4096, full_prefill=False, prefill_lengths=(128, 512),
        decode_contexts=(128, 1024), decode_tokens=128, sweep=None, bandwidth=True, log=None, kv="f16"):
    import numba
    import glmcpu
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    res = {"file": os.path.abspath(path), "file_bytes": os.path.getsize(path), "date": time.strftime("%Y-%m-%d"),
           "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "python": platform.python_version(),
           "numba": numba.__version__, "numpy": np.__version__}
    t0 = time.perf_counter()
    m = glmcpu.load(path, n_ctx=n_ctx, threads=threads, kv=kv)
    res["load_s"] = time.perf_counter() - t0
    res.update(threads=m.threads, family=m.family, n_ctx=n_ctx, quantization=m.file.quantization, kv=kv,
               kv_bytes=m.arch.kv_bytes())
    from llvmlite import binding as llvm_binding
    feats = llvm_binding.get_host_cpu_features()
    res["cpu"] = llvm_binding.get_host_cpu_name() + "".join(
        f" +{f}" for f in ("avx2", "avx512f", "avx512vnni", "avxvnni", "neon", "dotprod") if feats.get(f))
    res["kernels_4bit"] = "avx2" if getattr(getattr(m.arch, "ws", None), "avx2", False) else "portable"
    res["weight_bytes_per_token"] = weight_bytes_per_token(m.file)
    log(f"loaded {path} ({m.family}, {m.file.quantization.get('dtype')}) in {res['load_s']:.2f}s, {m.threads} threads, "
        f"cpu {res['cpu']}, 4-bit kernels {res['kernels_4bit']}")
    rng = np.random.default_rng(0)
    vocab = m.vocab_size

    def prompt(n):
        ids = rng.integers(100, min(vocab, 60000), n).tolist()
        suffix = list(m.arch.prompt_suffix)  # e.g. ChatGLM-6B's [gMASK] <sop>
        if suffix:
            ids[-len(suffix):] = suffix
        return ids

    # first calls: compile (or load from numba's cache) every kernel the model uses
    t0 = time.perf_counter()
    m.forward(prompt(8), all_logits=False)
    m.forward([5], all_logits=False)
    first = time.perf_counter() - t0
    m.reset()
    t0 = time.perf_counter()
    m.forward(prompt(8), all_logits=False)
    m.forward([5], all_logits=False)
    steady = time.perf_counter() - t0
    m.reset()
    res["compile_s"] = max(0.0, first - steady)
    log(f"first call {first:.2f}s (compile/cache load {res['compile_s']:.2f}s)")

    res["prefill"] = {}
    for n in prefill_lengths:
        if n >= n_ctx:
            continue
        ids, times = prompt(n), []
        for _ in range(repeat):
            m.reset()
            t0 = time.perf_counter()
            m.forward(ids, all_logits=False)
            times.append(time.perf_counter() - t0)
        best, spread = _best(times)
        res["prefill"][n] = {"tok_s": n / best, "spread": spread}
        log(f"prefill {n:5d} tokens: {n / best:7.2f} tok/s (spread {spread:.1%})")

    def decode_at(ctx):
        times = []
        for _ in range(repeat):
            m.reset()
            if full_prefill or not m.arch.reuse_cache:
                m.forward(prompt(ctx), all_logits=False)
            else:
                m.forward(prompt(2), all_logits=False)
                m.tokens = [0] * ctx      # positions 0..ctx-1 treated as cached (values do not matter)
            tok = 5
            t0 = time.perf_counter()
            for _ in range(decode_tokens):
                tok = int(np.argmax(m.forward([tok], all_logits=False)[0])) % vocab
            times.append(time.perf_counter() - t0)
        return _best(times)

    res["decode"] = {}
    for ctx in decode_contexts:
        if ctx + decode_tokens > n_ctx:
            continue
        best, spread = decode_at(ctx)
        tps = decode_tokens / best
        res["decode"][ctx] = {"tok_s": tps, "spread": spread, "gb_s": tps * res["weight_bytes_per_token"] / 1e9}
        log(f"decode at context {ctx:5d}: {tps:7.2f} tok/s (spread {spread:.1%}), "
            f"{res['decode'][ctx]['gb_s']:.1f} GB/s of weights")
    if sweep:
        res["sweep"] = {}
        for ctx in sweep:
            if ctx + decode_tokens <= n_ctx:
                res["sweep"][ctx] = decode_tokens / decode_at(ctx)[0]
                log(f"sweep: context {ctx:5d}: {res['sweep'][ctx]:.2f} tok/s")
    res["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if bandwidth:
        bw = read_bandwidth(m.threads)
        res["read_bandwidth_gb_s"] = bw
        if bw:
            for d in res["decode"].values():
                d["roofline"] = d["gb_s"] / bw
            log(f"read bandwidth ({m.threads} threads): {bw:.1f} GB/s")
    return res


def markdown(results):
    """A markdown table, one row per result of run() (keys may be ints or, from JSON, strings)."""
    def get(d, k):
        return d.get(k, d.get(str(k))) if d else None

    def cell(d, k):
        v = get(d, k)
        return f"{v['tok_s']:.2f} ±{v['spread']:.0%}" if v else "-"

    head = ["model", "type", "threads", "file", "load s", "compile s", "prefill 128 tok/s", "prefill 512 tok/s",
            "decode @128 tok/s", "decode @1024 tok/s", "weights GB/s", "read BW GB/s", "roofline", "peak RSS"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        q = r.get("quantization", {})
        typ = q.get("dtype", "?")
        if typ.startswith("q") and q.get("group_size"):
            typ += f"/g{q['group_size']}"
        if typ.startswith("q4") and r.get("kernels_4bit"):
            typ += f" {r['kernels_4bit']}"
        typ += f", KV {r.get('kv', 'f32')}"  # results from before the f16 cache had a float32 one
        d128 = get(r.get("decode"), 128) or {}
        row = [os.path.basename(r["file"]), typ, str(r["threads"]), f"{r['file_bytes'] / 1e9:.2f} GB",
               f"{r['load_s']:.2f}", f"{r['compile_s']:.1f}", cell(r.get("prefill"), 128), cell(r.get("prefill"), 512),
               cell(r.get("decode"), 128), cell(r.get("decode"), 1024),
               f"{d128.get('gb_s', 0):.1f}", f"{r.get('read_bandwidth_gb_s') or 0:.1f}",
               f"{d128.get('roofline', 0):.0%}", f"{r['peak_rss_bytes'] / 1e9:.2f} GB"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot(res, out):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'glmcpu[plot]'")
    xs = sorted(int(k) for k in res["sweep"])
    ys = [res["sweep"][k] if k in res["sweep"] else res["sweep"][str(k)] for k in xs]
    plt.figure(figsize=(6, 4))
    plt.plot(xs, ys, marker="o")
    plt.xscale("log", base=2)
    plt.xlabel("context length (tokens in the KV cache)")
    plt.ylabel("decode tokens/s")
    plt.title(f"{os.path.basename(res['file'])}, {res['threads']} threads, {res.get('kv', 'f32')} KV cache")
    plt.grid(True, alpha=0.3)
    plt.ylim(bottom=0)
    plt.tight_layout()
    plt.savefig(out, dpi=100)


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(prog="glmcpu bench", description="Speed of a glmcpu model file.")
    ap.add_argument("-m", "--model", help="model file (default: the built-in demo model)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=3, help="best of N (default 3)")
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--kv", default="f16", choices=["f16", "f32"], help="KV cache type (default f16)")
    ap.add_argument("--full-prefill", action="store_true", help="really compute the prompt before decode runs")
    ap.add_argument("--quick", action="store_true", help="short prompts and few tokens (smoke test)")
    ap.add_argument("--no-bandwidth", action="store_true", help="skip the memory bandwidth measurement")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--plot", help="PNG of decode tok/s vs context length (needs matplotlib)")
    args = ap.parse_args(argv)
    if not args.model:
        from glmcpu import demo_model_path
        args.model = demo_model_path()
        print(f"glmcpu: no -m given, using the built-in demo model ({args.model})", file=sys.stderr)
    kw = {}
    if args.quick:
        kw = dict(prefill_lengths=(16, 32), decode_contexts=(16, 64), decode_tokens=8)
    # decode speed against the context: 128, 256, ... up to what --ctx leaves room for
    sweep = tuple(c for c in (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
                  if c + 160 <= args.ctx) if args.plot else None
    if args.quick and args.plot:
        sweep = (16, 64, 128)
    res = run(args.model, threads=args.threads, repeat=args.repeat, n_ctx=args.ctx, full_prefill=args.full_prefill,
              sweep=sweep, bandwidth=not args.no_bandwidth and not args.quick, kv=args.kv, **kw)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1, default=str)
    if not args.quick:
        print(markdown([res]))
    else:
        print(json.dumps({k: v for k, v in res.items() if k in ("prefill", "decode", "load_s", "compile_s")}, default=str))
    if args.plot:
        plot(res, args.plot)
        print(f"plot: {args.plot}")
    return 0
