"""glmcpu against llama.cpp in one run on one machine: the same weights, alternating, medians.

    pip install llama-cpp-python==0.3.36   # CMAKE_ARGS="-DGGML_NATIVE=ON"; not a glmcpu dependency
    glmcpu export model-q4_0.glmq -o model-q4_0.gguf          # the same q4_0 blocks, bit for bit
    python benchmarks/vs_llama_cpp.py model-q4_0.glmq model-q4_0.gguf [--threads 2] [--reps 3] [--json out.json]

Each repetition runs, for each engine in turn (the order alternates between repetitions): a
prefill of a P-token prompt from an empty cache, then D single-token decode steps after a
C-token context. Only the forward passes are timed (no sampling, no detokenization): glmcpu
``Model.forward``, llama.cpp ``Llama.eval``. Both use a float16 KV cache (llama.cpp's default and
glmcpu's) and the given thread count. The read bandwidth of this machine is measured in the same
run (glmcpu.bench.read_bandwidth), so decode can be stated as a fraction of its roofline.
"""
import argparse
import json
import platform
import statistics
import sys
import time

import numpy as np


def glmcpu_engine(path, threads, n_ctx):
    """(prefill(ids) -> seconds, decode(ctx_ids, n) -> seconds) of a glmcpu file: only the forward
    passes timed, each from an empty cache."""
    import glmcpu
    m = glmcpu.load(path, n_ctx=n_ctx, threads=threads, kv="f16")

    def prefill(ids):
        m.reset()
        t0 = time.perf_counter()
        m.forward(ids, all_logits=False)
        return time.perf_counter() - t0

    def decode(ctx_ids, n):
        m.reset()
        m.forward(ctx_ids, all_logits=False)
        t0 = time.perf_counter()
        for _ in range(n):
            m.forward([5], all_logits=False)
        return time.perf_counter() - t0
    return prefill, decode


def _llama(path, threads, n_ctx):
    from llama_cpp import Llama
    llm = Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, n_batch=512,
                n_ubatch=512, logits_all=False, verbose=False)

    def prefill(ids):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        return time.perf_counter() - t0

    def decode(ctx_ids, n):
        llm.reset()
        llm.eval(ctx_ids)
        t0 = time.perf_counter()
        for _ in range(n):
            llm.eval([5])
        return time.perf_counter() - t0
    return prefill, decode


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("glmq")
    ap.add_argument("gguf")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--prefill", type=int, nargs="+", default=[512], help="prompt lengths (default 512)")
    ap.add_argument("--context", type=int, default=128, help="context before the decode steps (default 128)")
    ap.add_argument("--decode", type=int, default=32, help="decode steps timed (default 32)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    import llama_cpp
    from glmcpu.bench import read_bandwidth, weight_bytes_per_token
    from glmcpu.file import ModelFile
    from llvmlite import binding as llvm_binding
    n_ctx = max(max(args.prefill), args.context + args.decode) + 16
    rng = np.random.default_rng(0)
    engines = {"glmcpu": glmcpu_engine(args.glmq, args.threads, n_ctx), "llama.cpp": _llama(args.gguf, args.threads, n_ctx)}
    prompts = {p: [int(t) for t in rng.integers(100, 60000, p)] for p in args.prefill}
    ctx_ids = [int(t) for t in rng.integers(100, 60000, args.context)]
    for prefill, decode in engines.values():   # warm-up: compile, page the weights in
        prefill(prompts[min(prompts)][:16])
        decode(ctx_ids[:8], 2)
    times = {e: {"decode": [], **{f"prefill_{p}": [] for p in prompts}} for e in engines}
    bw = []
    for rep in range(args.reps):
        order = list(engines) if rep % 2 == 0 else list(engines)[::-1]
        for e in order:
            prefill, decode = engines[e]
            for p, ids in prompts.items():
                times[e][f"prefill_{p}"].append(p / prefill(ids))
            times[e]["decode"].append(args.decode / decode(ctx_ids, args.decode))
            print(f"rep {rep} {e:9s} " + "  ".join(f"{k} {v[-1]:.2f} tok/s" for k, v in times[e].items()),
                  file=sys.stderr, flush=True)
        bw.append(read_bandwidth(args.threads))
    med = {e: {k: statistics.median(v) for k, v in t.items()} for e, t in times.items()}
    weight_bytes = weight_bytes_per_token(ModelFile(args.glmq))   # what a decode step reads
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.machine(),
           "cpu": llvm_binding.get_host_cpu_name(), "threads": args.threads, "reps": args.reps,
           "llama_cpp_python": llama_cpp.__version__, "glmq": args.glmq, "gguf": args.gguf,
           "context": args.context, "decode_steps": args.decode, "weight_bytes_per_token": weight_bytes,
           "runs": times, "median": med,
           "read_bandwidth_gb_s": statistics.median(bw) if all(bw) else None}
    ratio = {k: med["glmcpu"][k] / med["llama.cpp"][k] for k in med["glmcpu"]}
    res["ratio_glmcpu_over_llama_cpp"] = ratio
    if res["read_bandwidth_gb_s"]:
        res["decode_roofline_tok_s"] = res["read_bandwidth_gb_s"] * 1e9 / weight_bytes
        res["decode_fraction_of_roofline"] = {e: med[e]["decode"] / res["decode_roofline_tok_s"] for e in med}
    print(json.dumps({k: res[k] for k in ("median", "ratio_glmcpu_over_llama_cpp", "read_bandwidth_gb_s",
                                          "decode_fraction_of_roofline") if k in res}, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
