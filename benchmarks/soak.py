"""Soak test: a multi-turn chat for a set time, recording RSS, open file descriptors and threads.

    python benchmarks/soak.py --minutes 30 [-m MODEL] [--every 200] [--json out.json]
    python benchmarks/soak.py --server 4 --minutes 10 ...   # through `glmcpu serve`, 4 clients at once

With ``--server N`` the server runs in this process (uvicorn on a free 127.0.0.1 port) and N client
threads chat with it over HTTP at the same time, each its own conversation: streamed and whole
replies alternate, every fifth request asks for a JSON-schema reply (llguidance), and a client
starts a new conversation after 6 turns. The samples are of the serving process.

Each conversation runs turns until the context is nearly full (so the oldest turns get dropped,
the KV cache is rewound and reused), then starts over; sampling is seeded per conversation. A
sample (tokens so far, RSS, fds, threads) is taken every ``--every`` generated tokens. After a
warm-up (the first 10% of the run, at least 2 samples) RSS must stay within ``--rss-tol-mb`` of the
warm-up's maximum, and fds and threads must not grow; the script exits 1 otherwise.
"""
import argparse
import json
import os
import sys
import time

import glmcpu

PROMPTS = ["床前明月光", "写一首关于秋天的诗", "春眠不觉晓", "hello, tell me a story", "白日依山尽，黄河入海流",
           "给我讲一个笑话", "What is the meaning of life?", "海上生明月"]


def _status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


def rss_mb():
    return _status("VmRSS") / 1024


def n_threads():
    """OS threads of the process (numba's worker threads included, unlike threading.active_count)."""
    return _status("Threads")


def n_fds():
    return len(os.listdir("/proc/self/fd"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", help="model file (default: the built-in demo model)")
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--every", type=int, default=200, help="sample every N generated tokens")
    ap.add_argument("--rss-tol-mb", type=float, default=10.0)
    ap.add_argument("--json", help="write the samples and the verdict here")
    ap.add_argument("--server", type=int, default=0, metavar="N", help="soak the HTTP server with N clients")
    args = ap.parse_args(argv)
    path = args.model or glmcpu.demo_model_path()
    m = glmcpu.load(path, n_ctx=args.ctx)
    t0, deadline = time.time(), time.time() + 60 * args.minutes
    if args.server:
        samples, tokens, conv = soak_server(m, args, t0, deadline)
    else:
        samples, tokens, conv = soak_chat(m, args, t0, deadline)
    return verdict(path, args, samples, tokens, conv)


def _sample(t0, tokens, conv):
    s = {"t": round(time.time() - t0, 1), "tokens": tokens, "rss_mb": round(rss_mb(), 1), "fds": n_fds(),
         "threads": n_threads(), "conversations": conv}
    print(json.dumps(s), flush=True)
    return s


def soak_server(m, args, t0, deadline):
    import threading
    import socket
    import httpx
    import uvicorn
    from glmcpu.server import create_app
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(m, "soak", max_queue=args.server, log=lambda line: None),
                                           host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    lock = threading.Lock()
    state = {"tokens": 0, "conv": 0, "next": 0, "errors": 0}
    samples = []
    schema = {"type": "json_schema", "json_schema": {"name": "poem", "schema": {
        "type": "object", "properties": {"title": {"type": "string", "maxLength": 12}}, "required": ["title"]}}}

    def client(k):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as http:
            n = 0
            while time.time() < deadline:
                with lock:
                    state["conv"] += 1
                    conv = state["conv"]
                messages = []
                for turn in range(6):
                    if time.time() >= deadline:
                        return
                    n += 1
                    messages.append({"role": "user", "content": PROMPTS[(conv + turn) % len(PROMPTS)]})
                    body = {"model": "soak", "messages": messages, "max_tokens": 48, "temperature": 0.8,
                            "seed": conv * 100 + turn}
                    if n % 5 == 0:
                        body["response_format"] = schema
                    if n % 2:
                        body["stream"], body["stream_options"] = True, {"include_usage": True}
                        reply, used = "", 0
                        with http.stream("POST", "/v1/chat/completions", json=body) as r:
                            for line in r.iter_lines():
                                if line.startswith("data: {"):
                                    ev = json.loads(line[6:])
                                    if ev.get("usage"):
                                        used = ev["usage"]["completion_tokens"]
                                    elif ev.get("choices"):
                                        reply += ev["choices"][0]["delta"].get("content") or ""
                        ok = r.status_code == 200
                    else:
                        r = http.post("/v1/chat/completions", json=body)
                        ok = r.status_code == 200
                        reply = r.json()["choices"][0]["message"]["content"] if ok else ""
                        used = r.json()["usage"]["completion_tokens"] if ok else 0
                    messages.append({"role": "assistant", "content": reply})
                    with lock:
                        state["errors"] += not ok
                        state["tokens"] += used
                        if state["tokens"] >= state["next"]:
                            samples.append(_sample(t0, state["tokens"], state["conv"]))
                            state["next"] = state["tokens"] + args.every

    clients = [threading.Thread(target=client, args=(k,)) for k in range(args.server)]
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    server.should_exit = True
    thread.join()
    if state["errors"]:
        print(json.dumps({"request_errors": state["errors"]}), flush=True)
    return samples, state["tokens"], state["conv"]


def soak_chat(m, args, t0, deadline):
    samples, tokens, next_sample, conv = [], 0, 0, 0
    while time.time() < deadline:
        conv += 1
        messages = []
        m.reset()
        for turn in range(64):
            if time.time() >= deadline:
                break
            messages.append({"role": "user", "content": PROMPTS[(conv + turn) % len(PROMPTS)]})
            reply = "".join(m.chat(messages, max_new_tokens=64, temperature=0.8, seed=conv * 100 + turn,
                                   notify=lambda msg: None))
            messages.append({"role": "assistant", "content": reply})
            tokens += m.last_stats.get("new_tokens", 0)
            if tokens >= next_sample:
                samples.append(_sample(t0, tokens, conv))
                next_sample = tokens + args.every
    return samples, tokens, conv


def verdict(path, args, samples, tokens, conv):
    warm = max(2, len(samples) // 10)
    base, rest = samples[:warm], samples[warm:]
    peak_warm = max(s["rss_mb"] for s in base) if base else float("nan")
    growth = max((s["rss_mb"] for s in rest), default=peak_warm) - peak_warm
    fd_growth = max((s["fds"] for s in rest), default=0) - max((s["fds"] for s in base), default=0)
    th_growth = max((s["threads"] for s in rest), default=0) - max((s["threads"] for s in base), default=0)
    ok = len(rest) > 0 and growth <= args.rss_tol_mb and fd_growth <= 0 and th_growth <= 0
    result = {"model": os.path.basename(path), "minutes": args.minutes, "server_clients": args.server,
              "tokens": tokens, "conversations": conv,
              "samples": len(samples), "warmup_samples": warm, "rss_after_warmup_mb": peak_warm,
              "rss_growth_mb": round(growth, 1), "rss_tol_mb": args.rss_tol_mb, "fd_growth": fd_growth,
              "thread_growth": th_growth, "ok": ok}
    print(json.dumps(result))
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"verdict": result, "samples": samples}, f, indent=1)
        os.replace(tmp, args.json)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
