"""Time to first token and decode speed through the HTTP server vs the Python API, same model.

    python benchmarks/bench_server.py [-m model.glmq] [-n 64] [--reps 3] [--threads N]
    python benchmarks/bench_server.py --parallel 8 [-m model.glmq] [-n 64] [--reps 3] [--threads N]
        [--prefill-chunk 128] [--prompt-tokens 100]

--parallel N: continuous batching (`glmcpu serve --parallel N`, a subprocess). Aggregate decode
tok/s with 1, 2, 4, ... N streams started together, measured by the clients while all of them
decode and by the server over its steps without prompt rows (GET /health), and the time to first
token of a new request alone vs
while 3 others stream (each prompt distinct, so no prefix is cached), over HTTP; a server with
one slot (--parallel 1, one request at a time) gives the reference row. Medians of --reps.

Both sides generate the same seeded reply from an empty KV cache (the server's prefix reuse is
defeated by a fresh model reset before each run), streamed piece by piece; medians of --reps.
Prints one row per side and the server's overhead per token. A third row sends the same request
with a JSON-schema ``response_format`` (a different reply, the same number of tokens): its extra
time per token is the grammar mask's cost (llguidance).
"""
import argparse
import json
import os
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


# ---------------------------------------------------------------- --parallel

POEM = "床前明月光，疑是地上霜。举头望明月，低头思故乡。春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。"


def serve(path, parallel, threads, n_ctx, prefill_chunk, log):
    """`glmcpu serve` in a subprocess (so that the clients here do not share its GIL) ->
    (base url, stop())."""
    import subprocess
    import httpx
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "glmcpu", "serve", "-m", path, "--port", str(port), "--ctx", str(n_ctx),
           "--parallel", str(parallel), "--prefill-chunk", str(prefill_chunk), "--max-queue", "64",
           "--model-name", "bench"] + (["--threads", str(threads)] if threads else [])
    proc = subprocess.Popen(cmd, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(base + "/health").status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start: {' '.join(cmd)}")
        time.sleep(0.2)

    def stop():
        proc.terminate()
        proc.wait(60)
    return base, stop


def step_stats(base):
    import httpx
    return httpx.get(base + "/health").json().get("steps", {})


class Stream:
    """One streamed completion in a thread: send time, first-text time, end time, tokens."""

    def __init__(self, base, prompt, n, seed):
        self.body = {"model": "bench", "prompt": prompt, "max_tokens": n, "temperature": 2.0, "top_p": 1.0,
                     "seed": seed, "stream": True, "stream_options": {"include_usage": True}}
        self.base, self.first, self.tokens, self.error, self.times = base, None, 0, None, []
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._go, daemon=True)
        self.thread.start()

    def _go(self):
        import httpx
        try:
            with httpx.Client(base_url=self.base, timeout=600) as http:
                self.t0 = time.perf_counter()
                with http.stream("POST", "/v1/completions", json=self.body) as r:
                    for line in r.iter_lines():
                        if not line.startswith("data: {"):
                            continue
                        ev = json.loads(line[6:])
                        if "error" in ev:
                            raise RuntimeError(ev["error"]["message"])
                        if ev.get("usage"):
                            self.tokens = ev["usage"]["completion_tokens"]
                        elif ev["choices"][0]["text"]:
                            self.times.append(time.perf_counter())
                            if self.first is None:
                                self.first = self.times[0]
                                self.started.set()
                self.end = time.perf_counter()
        except Exception as e:  # noqa: BLE001 - reported by the caller
            self.error = e
            self.started.set()

    def join(self):
        self.thread.join()
        if self.error or self.first is None:
            raise RuntimeError(f"stream failed: {self.error or 'no text'}")
        return self


class Prompts:
    """Distinct prompts of about n_tokens tokens (a fresh head each: nothing cached to reuse)."""

    def __init__(self, tok, n_tokens):
        text = POEM
        while len(tok.encode(text)) < n_tokens:
            text += POEM
        while len(tok.encode(text)) > n_tokens:
            text = text[:-1]
        self.text, self.i = text, 0

    def __call__(self):
        self.i += 1
        return f"第{self.i}首：{self.text}"


def streams_together(base, prompts, k, n, batched=False):
    """k streams started at once -> (aggregate decode tok/s while all k decode, tokens per stream,
    the server's decode-only steps: (ms per step, rows per second)). The first figure counts the
    streamed pieces between the last stream's first token and the first stream's end (each piece
    weighted by its stream's tokens per piece)."""
    before = step_stats(base) if batched else {}
    runs = [Stream(base, prompts(), n, seed=i) for i in range(k)]
    for r in runs:
        r.join()
    t0, t1 = max(r.first for r in runs), min(r.end for r in runs)
    tokens = sum(sum(t0 < t <= t1 for t in r.times) * (r.tokens / len(r.times)) for r in runs)
    decode = (0.0, 0.0)
    if batched:
        after = step_stats(base)
        d = {key: after.get(key, 0) - before.get(key, 0) for key in ("decode_steps", "decode_steps_rows",
                                                                      "decode_steps_s")}
        if d["decode_steps"]:
            decode = (d["decode_steps_s"] / d["decode_steps"] * 1000, d["decode_steps_rows"] / d["decode_steps_s"])
    return tokens / (t1 - t0) if t1 > t0 else 0.0, sum(r.tokens for r in runs) / k, decode


def ttft(base, prompts, busy, n_bg):
    """Time to first token of a new request alone (busy=0) or while ``busy`` others stream."""
    bg = [Stream(base, prompts(), n_bg, seed=100 + i) for i in range(busy)]
    for b in bg:
        b.started.wait()
    time.sleep(0.3)  # well into their decode
    r = Stream(base, prompts(), 4, seed=7).join()
    late = [b for b in bg if b.thread.is_alive()]
    for b in bg:
        b.join()
    return r.first - r.t0, len(late) == busy


def parallel_main(a):
    import platform
    import tempfile
    path = a.model or glmcpu.demo_model_path()
    n_ctx = a.prompt_tokens + max(a.n, 256) + 64
    counts = [k for k in (1, 2, 4, 8, 16) if k <= a.parallel]
    prompts = Prompts(glmcpu.load(path, n_ctx=16).tokenizer, a.prompt_tokens)
    log = tempfile.TemporaryFile()
    base, stop = serve(path, a.parallel, a.threads, n_ctx, a.prefill_chunk, log)
    base1, stop1 = serve(path, 1, a.threads, n_ctx, a.prefill_chunk, log)
    rows = {k: [] for k in counts}
    serial, alone, busy, late = [], [], [], []
    streams_together(base, prompts, min(2, a.parallel), 8)  # warm up
    streams_together(base1, prompts, 1, 8)
    t_start, load0 = time.time(), _load()
    for rep in range(a.reps):
        for k in counts:
            rows[k].append(streams_together(base, prompts, k, a.n, batched=True))
        serial.append(streams_together(base1, prompts, 1, a.n))
        t, _ = ttft(base, prompts, 0, 0)
        alone.append(t)
        t, ok = ttft(base, prompts, 3, max(a.n, 96))
        busy.append(t)
        late.append(ok)
        print(f"rep {rep + 1}: " + "  ".join(f"{k}x {rows[k][-1][0]:.2f}" for k in counts)
              + f"  serial {serial[-1][0]:.2f} tok/s; ttft alone {alone[-1] * 1000:.0f} ms, "
              f"with 3 streaming {busy[-1] * 1000:.0f} ms", flush=True)
    stop()
    stop1()
    med = statistics.median
    policy = os.environ.get("OMP_WAIT_POLICY", "unset (--parallel sets passive)")
    print(f"\nmodel {path}, threads {a.threads or 'default'}, prompts ~{a.prompt_tokens} tokens, {a.n} new per "
          f"stream, prefill chunk {a.prefill_chunk}, {a.parallel} slots, median of {a.reps} ({time.time() - t_start:.0f}"
          f" s; {platform.machine()}, {os.cpu_count()} CPUs, load at start {load0}, at end {_load()}; servers: "
          f"`glmcpu serve` subprocesses, OMP_WAIT_POLICY {policy})")
    one_stream, dec1 = med(r[0] for r in rows[1]), med(r[2][1] for r in rows[1])
    print(f"{'--parallel 1 server':22s} {med(r[0] for r in serial):7.2f} tok/s   (one stream, one request at a time)")
    for k in counts:
        tps = med(r[0] for r in rows[k])
        dec = med(r[2][1] for r in rows[k])
        print(f"{k:2d} streams together    {tps:7.2f} tok/s aggregate  {tps / one_stream:5.2f}x one stream   "
              f"(server decode-only steps: {med(r[2][0] for r in rows[k]):6.1f} ms, {dec:6.2f} tok/s = "
              f"{dec / dec1:4.2f}x; tokens per stream {med(r[1] for r in rows[k]):.0f})")
    print(f"ttft alone {med(alone) * 1000:8.1f} ms   while 3 stream {med(busy) * 1000:8.1f} ms   "
          f"ratio {med(busy) / med(alone):.2f}   (the 3 were still streaming in {sum(late)}/{len(late)} reps)")
    return 0


def _load():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("-n", type=int, default=64, help="new tokens per run")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("-p", "--prompt", default="床前明月光")
    ap.add_argument("--parallel", type=int, default=0, metavar="N",
                    help="continuous batching benchmark with up to N concurrent streams (see above)")
    ap.add_argument("--prefill-chunk", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=100, help="with --parallel: prompt length")
    a = ap.parse_args(argv)
    if a.parallel:
        return parallel_main(a)
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
