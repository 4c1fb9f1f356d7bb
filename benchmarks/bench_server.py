"""Time to first token and decode speed through the HTTP server vs the Python API, same model.

    python benchmarks/bench_server.py [-m model.glmq] [-n 64] [--reps 3] [--threads N]

Both sides generate the same seeded reply from an empty KV cache (the server's prefix reuse is
defeated by a fresh model reset before each run), streamed piece by piece; medians of --reps.
Prints one row per side and the server's overhead per token. A third row sends the same request
with a JSON-schema ``response_format`` (a different reply, the same number of tokens): its extra
time per token is the grammar mask's cost (llguidance).
"""
import argparse
import json
import socket
import statistics
import sys
import threading
import time

import glmcpu
from glmcpu.generate import SamplingParams
from glmcpu.requests import GenerationRequest, run


# a seeded high-temperature reply: the same tokens on both sides, and it rarely ends before n
SAMPLING = {"temperature": 2.0, "top_p": 1.0, "seed": 1}


def direct(model, ids, n):
    """Model-side timing, run in a fresh thread as the server runs each request (with numba's omp
    layer, forward passes from the main thread measured ~10x slower on a loaded 2-core VM)."""
    out = []
    t = threading.Thread(target=lambda: out.append(_direct(model, ids, n)))
    t.start()
    t.join()
    return out[0]


def _direct(model, ids, n):
    model.reset()
    req = GenerationRequest(ids, SamplingParams(max_new_tokens=n, **SAMPLING), reuse_cache=False)
    t0 = time.perf_counter()
    first = None
    for _ in run(model, req):
        first = first or time.perf_counter()
    end = time.perf_counter()
    return first - t0, req.result.completion_tokens, end - first


SCHEMA = {"type": "json_schema", "json_schema": {"name": "poem", "schema": {
    "type": "object", "properties": {"poem": {"type": "string"}}, "required": ["poem"]}}}


def over_http(http, model, prompt, n, response_format=None):
    import httpx  # noqa: F401  (the server extra)
    model.reset()
    body = {"model": "bench", "prompt": prompt, "max_tokens": n, **SAMPLING, "stream": True,
            "stream_options": {"include_usage": True}}
    if response_format:
        body["response_format"] = response_format
    t0 = time.perf_counter()
    first, tokens = None, 0
    with http.stream("POST", "/v1/completions", json=body) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if ev.get("usage"):
                tokens = ev["usage"]["completion_tokens"]
            elif ev["choices"][0]["text"]:
                first = first or time.perf_counter()
    end = time.perf_counter()
    return first - t0, tokens, end - first


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("-n", type=int, default=64, help="new tokens per run")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("-p", "--prompt", default="床前明月光")
    a = ap.parse_args(argv)
    import httpx
    import uvicorn
    from glmcpu.server import create_app

    model = glmcpu.load(a.model or glmcpu.demo_model_path(), n_ctx=max(512, a.n + 64), threads=a.threads)
    ids = model.tokenizer.encode(a.prompt, add_special_tokens=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(model, "bench", log=lambda line: None), host="127.0.0.1",
                                           port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    rows = {"python": [], "http": [], "http+json": []}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as http:
        direct(model, ids, a.n)  # warm up every path (numba loads its cached kernels on first use)
        over_http(http, model, a.prompt, a.n)
        over_http(http, model, a.prompt, a.n, SCHEMA)
        for _ in range(a.reps):  # alternate the sides so load changes hit all of them
            rows["python"].append(direct(model, ids, a.n))
            rows["http"].append(over_http(http, model, a.prompt, a.n))
            rows["http+json"].append(over_http(http, model, a.prompt, a.n, SCHEMA))
    server.should_exit = True
    thread.join()
    print(f"model {model.path} ({model.family}), prompt {len(ids)} tokens, {a.n} new, median of {a.reps}")
    speed = {}
    for side, runs in rows.items():
        ttft = statistics.median(r[0] for r in runs)
        tps = statistics.median((r[1] - 1) / r[2] for r in runs if r[1] > 1 and r[2] > 0)
        speed[side] = tps
        print(f"{side:8s} ttft {ttft * 1000:8.1f} ms   decode {tps:7.2f} tok/s   tokens {runs[-1][1]}")
    print(f"server overhead per token: {(speed['python'] / speed['http'] - 1) * 100:+.1f}%")
    print(f"grammar mask per token: {(1 / speed['http+json'] - 1 / speed['http']) * 1000:+.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
