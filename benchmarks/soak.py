"""Soak test: a multi-turn chat for a set time, recording RSS, open file descriptors and threads.

    python benchmarks/soak.py --minutes 30 [-m MODEL] [--every 200] [--json out.json]

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
    args = ap.parse_args(argv)
    path = args.model or glmcpu.demo_model_path()
    m = glmcpu.load(path, n_ctx=args.ctx)
    t0, deadline = time.time(), time.time() + 60 * args.minutes
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
                samples.append({"t": round(time.time() - t0, 1), "tokens": tokens, "rss_mb": round(rss_mb(), 1),
                                "fds": n_fds(), "threads": n_threads(), "conversations": conv})
                print(json.dumps(samples[-1]), flush=True)
                next_sample = tokens + args.every
    warm = max(2, len(samples) // 10)
    base, rest = samples[:warm], samples[warm:]
    peak_warm = max(s["rss_mb"] for s in base) if base else float("nan")
    growth = max((s["rss_mb"] for s in rest), default=peak_warm) - peak_warm
    fd_growth = max((s["fds"] for s in rest), default=0) - max((s["fds"] for s in base), default=0)
    th_growth = max((s["threads"] for s in rest), default=0) - max((s["threads"] for s in base), default=0)
    ok = len(rest) > 0 and growth <= args.rss_tol_mb and fd_growth <= 0 and th_growth <= 0
    verdict = {"model": os.path.basename(path), "minutes": args.minutes, "tokens": tokens, "conversations": conv,
               "samples": len(samples), "warmup_samples": warm, "rss_after_warmup_mb": peak_warm,
               "rss_growth_mb": round(growth, 1), "rss_tol_mb": args.rss_tol_mb, "fd_growth": fd_growth,
               "thread_growth": th_growth, "ok": ok}
    print(json.dumps(verdict))
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"verdict": verdict, "samples": samples}, f, indent=1)
        os.replace(tmp, args.json)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
