"""q8_0 kernels, portable vs AVX2 (kernels/q8_avx2.py), with q4_0 AVX2 beside them, at the
ChatGLM3-6B matrix shapes, in one run: alternating rounds (each kernel once per round, so a noisy
neighbour slows them alike), medians; with the read bandwidth and the vpmaddwd rate of the same
run, measured before and after (the machine is shared).

    python benchmarks/bench_q8_avx2.py [--threads 2] [--rounds 15] [--tokens 1,16,128]

Decode (T = 1) is reported as GB/s of weight bytes (quants + scales) and as a fraction of the
read bandwidth (the roofline), both glmcpu.bench.read_bandwidth's (2 GiB, best of 5, before and
after) and that of a sum over as many bytes timed in the same rounds ("read (sum)": on a shared
machine the fairer roofline); prefill as GOP/s (2 n k T / time) and as a fraction of the
vpmaddwd peak (16 multiply-adds = 32 operations per instruction, the q8_0 kernel's inner loop:
two instructions per 32 weights x activations).
"""
import argparse
import os
import platform
import sys
import time

import numpy as np
import numba
from numba import njit, prange

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_kernels import R, Runner, random_weights  # noqa: E402
from glmcpu import kernels as K  # noqa: E402
from glmcpu.bench import read_bandwidth  # noqa: E402
from glmcpu.kernels.q8_avx2 import bcast32, madd16, store8, zero8  # noqa: E402

SHAPES = {"attn_output": (4096, 4096), "ffn_up_gate": (27392, 4096), "ffn_down": (4096, 13696)}


@njit(cache=True, parallel=True)
def _pmaddwd_peak(out, w, x, n, mask):
    """8 independent vpmaddwd + vpaddd chains per thread over L1-resident operands (8 accumulators,
    2 broadcasts and the loaded vectors fit the 16 ymm registers: no spills)."""
    for c in prange(out.shape[0]):
        a0, a1, a2, a3 = zero8(), zero8(), zero8(), zero8()
        a4, a5, a6, a7 = zero8(), zero8(), zero8(), zero8()
        b0 = bcast32(x, 0)
        b1 = bcast32(x, 2)
        for i in range(n):
            o = (i * 16) & mask      # a runtime mask: LLVM cannot hoist the loads
            a0 = madd16(a0, w, o, b0)
            a1 = madd16(a1, w, o + 16, b0)
            a2 = madd16(a2, w, o + 32, b0)
            a3 = madd16(a3, w, o + 48, b0)
            a4 = madd16(a4, w, o, b1)
            a5 = madd16(a5, w, o + 16, b1)
            a6 = madd16(a6, w, o + 32, b1)
            a7 = madd16(a7, w, o + 48, b1)
        for k, a in enumerate((a0, a1, a2, a3, a4, a5, a6, a7)):
            store8(out[c], 8 * k, a)


@njit(cache=True, parallel=True, fastmath=True)
def _read_sum(a):
    """glmcpu.bench.read_bandwidth's kernel: a parallel float32 sum (what reading costs)."""
    s = np.float32(0.0)
    for i in prange(a.size):
        s += a[i]
    return s


class ReadSum:
    """The read roofline in the alternation: a sum over as many bytes as the q8_0 matrix holds."""

    def __init__(self, nbytes):
        self.a = (np.ones(nbytes // 4, np.float32),)

    def __call__(self):
        _read_sum(self.a[0])


def pmaddwd_rate(threads, n=50_000_000, repeat=5):
    """Measured vpmaddwd instructions per second on ``threads`` threads (best of ``repeat``)."""
    out, w, x = np.zeros((threads, 64), np.int32), np.ones(320, np.int16), np.ones(8, np.int16)
    _pmaddwd_peak(out, w, x, 1000, 255)
    best = 1e9
    for _ in range(repeat):
        t0 = time.perf_counter()
        _pmaddwd_peak(out, w, x, n, 255)
        best = min(best, time.perf_counter() - t0)
    return threads * n * 8 / best


def conditions(threads):
    load = os.getloadavg()
    bw = read_bandwidth(threads)
    peak = pmaddwd_rate(threads)
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; read bandwidth {bw:.1f} GB/s; "
          f"vpmaddwd {peak / 1e9:.2f} G/s = {32 * peak / 1e9:.0f} GOP/s ({threads} threads)", flush=True)
    return bw, 32 * peak / 1e9


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--tokens", default="1,16,128")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    args = ap.parse_args(argv)
    numba.set_num_threads(args.threads)
    n_ranges = 4 * args.threads
    if not K.avx2.available(R):
        print("AVX2 kernels unavailable here (no AVX2, JIT off, or GLMCPU_SIMD=off)")
        return 1
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, {platform.processor() or platform.machine()}, "
          f"numba {numba.__version__}, {args.threads} threads, {args.rounds} rounds, alternating, medians")
    bw0, peak0 = conditions(args.threads)
    rng = np.random.default_rng(0)
    print("| matrix | shape | T | kernel | MB | median ms | best ms | GB/s | GOP/s |\n|---|---|---|---|---|---|---|---|---|")
    rows = []
    for name in args.shapes.split(","):
        n, k = SHAPES[name]
        w8, w4 = random_weights("q8_0", n, k, rng), random_weights("q4_0", n, k, rng)
        for T in (int(t) for t in args.tokens.split(",")):
            runners = {"q8_0 portable": Runner("q8_0", w8, n, k, T, n_ranges),
                       "q8_0 avx2": Runner("q8_0", w8, n, k, T, n_ranges),
                       "q4_0 avx2": Runner("q4_0", w4, n, k, T, n_ranges)}
            if T == 1:     # the roofline of this moment: reading as many bytes, in the same rounds
                runners["read (sum)"] = ReadSum(sum(a.nbytes for a in w8))
            runners["q8_0 portable"].avx2 = False
            runners["q8_0 portable"]()
            runners["q8_0 avx2"]()
            for f in runners.values():
                f()                                                     # warm-up
            assert np.array_equal(runners["q8_0 portable"].out.view(np.uint32), runners["q8_0 avx2"].out.view(np.uint32))
            times = {kn: [] for kn in runners}
            rounds = args.rounds if T < 128 else max(3, args.rounds // 3)
            for _ in range(rounds):
                for kn, f in runners.items():
                    t0 = time.perf_counter()
                    f()
                    times[kn].append(time.perf_counter() - t0)
            for kn, f in runners.items():
                mb = sum(a.nbytes for a in f.a) / 1e6
                med, best = float(np.median(times[kn])), min(times[kn])
                rows.append((name, T, kn, mb / med / 1e3, 2 * n * k * T / med / 1e9))
                print(f"| {name} | {n}x{k} | {T} | {kn} | {mb:.1f} | {med * 1e3:.2f} | {best * 1e3:.2f} | "
                      f"{mb / med / 1e3:.1f} | {2 * n * k * T / med / 1e9:.1f} |", flush=True)
    bw1, peak1 = conditions(args.threads)
    bw, peak = max(bw0, bw1), max(peak0, peak1)
    print(f"\nagainst the better of the two measurements (read bandwidth {bw:.1f} GB/s, vpmaddwd peak {peak:.0f} GOP/s):")
    print("| matrix | T | kernel | GB/s | % of read bandwidth | GOP/s | % of vpmaddwd peak |\n|---|---|---|---|---|---|---|")
    for name, T, kn, gbs, gops in rows:
        print(f"| {name} | {T} | {kn} | {gbs:.1f} | {100 * gbs / bw:.0f}% | {gops:.1f} | {100 * gops / peak:.0f}% |")
    print("\ndecode against the read (sum) of the same rounds (median GB/s over median GB/s):")
    print("| matrix | kernel | GB/s | read (sum) GB/s | % |\n|---|---|---|---|---|")
    reads = {name: gbs for name, T, kn, gbs, _ in rows if kn == "read (sum)"}
    for name, T, kn, gbs, _ in rows:
        if T == 1 and kn != "read (sum)":
            print(f"| {name} | {kn} | {gbs:.1f} | {reads[name]:.1f} | {100 * gbs / reads[name]:.0f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
