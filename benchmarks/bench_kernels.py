"""Kernel benchmark: each kernel is first validated against its numpy reference, then timed at
the real ChatGLM3-6B matrix shapes for T = 1, 16, 128 tokens (GB/s of weights, GFLOP/s).

    python benchmarks/bench_kernels.py [--threads 2] [--quick] [--variants]

--variants also times the q4_0 matrix-vector layouts tried on the way to the current kernel
(the history below), so their figures can be reproduced. Measured on the 2-core AMD EPYC
(Zen 4, AVX-512) development machine, 2 threads, 27392 x 4096 q4_0 matrix (63 MB), where a
numba parallel sum reads 33 GB/s:

| variant | layout | activations | GB/s |
|---|---|---|---|
| v1 naive | row-major packed nibbles, scalar unpack | float32 | 1.5 |
| v2 int   | row-major, int32 sum per 32-block | int8 | 2.6 |
| v3 tiled | 32-row tiles, float32 lanes | float32 | 6.3 |
| v4 tiled-f | 128-row tiles, float32 lanes | float32 | 8.7 |
| v5 int16 | 128-row tiles, int16 lanes, fastmath | int8 | 29 |
| portable | 128-row tiles, int16 lanes, exact float order (bit-equal to the reference) | int8 | 21-28 |

On the Zen 3 (AVX2 only) machine of 2026-11-23, 2 threads, where the sum reads 27-30 GB/s: v5
17.4, portable 16.5, and the AVX2 kernel (kernels/avx2.py: 32 packed bytes -> nibble pairs ->
`vpmaddubsw` against paired int8 activations, through LLVM intrinsics) 22.8 GB/s; at T = 128 the
AVX2 matmul runs at 160-230 GFLOP/s where the portable one ran at 100-135.

K-quants (q4_k, q5_k, q6_k: ggml's rows as stored, kernels/kquant_avx2.py) and q5_0 have AVX2
kernels equal to the portable ones bit for bit (glmcpu.kquants.kernel_dot's float order); `--compare
q4_0,q4_k,q6_k,q5_0 --tokens 1,64` times them in alternation with q4_0. On the shared Zen 3 of
2026-11-24, 1 thread, with the first (class-pure, ggml-generic-order) kernels
(results/2026-11-24-kquant-avx2; later figures: docs/PERFORMANCE.md): decode q4_k 9.5 GB/s of weights where q4_0
reads 14.5 (portable q4_k: 0.2), q6_k 11; prefill q4_k 0.64-0.71x q4_0's tokens/s, q6_k 0.58-0.71x,
q5_0 decode 6.3 GB/s (portable 0.3-0.4) and prefill ~0.4x. The integer part needs a scale multiply
(vpmaddwd) per 64 weights besides vpmaddubsw, and each row's super-block scales and float terms
are scalar work q4_0's row-interleaved tiles do 8 rows at a time.

What made the difference: with rows interleaved in tiles, the innermost loop runs over 128 rows
(contiguous bytes) doing the same thing in every lane, so LLVM emits vpmovzxbw / vpmullw /
vpaddw on zmm registers with no horizontal sums; the 32 products of a 4-bit block fit int16
exactly (|q - 8| * |x| <= 8 * 127), so 32 lanes fit in one register.
"""
import argparse
import os
import sys
import time

import numpy as np
import numba
from numba import njit, prange

from glmcpu import kernels as K
from glmcpu import qtypes
from glmcpu import kquants as KQ
from glmcpu import quants as Q
from glmcpu.linear import Workspace
from glmcpu.kernels.f16 import f16_to_f32

KQ_BLOCK = {"q4_k": 144, "q5_k": 176, "q6_k": 210}      # ggml's rows: bytes per 256 weights
SHAPES_6B = {"attn_qkv": (4608, 4096), "attn_output": (4096, 4096), "ffn_up_gate": (27392, 4096),
             "ffn_down": (4096, 13696), "output": (65024, 4096)}
R, TB = 128, K.quant.TB


def _timeit(f, repeat):
    f()
    best = 1e9
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best


def random_weights(kind, n, k, rng):
    """Tiled arrays with random bytes (speed does not depend on the values)."""
    nt = -(-n // R)
    if kind in KQ_BLOCK or kind == "q5_0":  # ggml's rows; every f16 scale finite (0.01)
        per, bpb = (32, 22) if kind == "q5_0" else (256, KQ_BLOCK[kind])
        b = rng.integers(0, 256, (n, k // per, bpb), dtype=np.uint8)
        h = np.array([0.01], np.float16).view(np.uint8)
        for at in ((208,) if kind == "q6_k" else (0,) if kind == "q5_0" else (0, 2)):
            b[:, :, at:at + 2] = h
        return (b.reshape(n, -1),)
    if kind == "f16":
        w = (rng.standard_normal((n, k), dtype=np.float32) * 0.02).astype(np.float16).view(np.uint16)
        return (w,)
    per = 32 if kind == "q8_0" else 16
    qs = rng.integers(0, 256, (nt, k // 32, per, R), dtype=np.uint8)
    if kind == "q8_0":
        qs = qs.view(np.int8)
    d = (rng.random((nt, k // 32, R), dtype=np.float32) * 0.01).astype(np.float16).view(np.uint16)
    m = d.copy() if kind == "q4_1" else np.zeros((0, 0, 0), np.uint16)
    return qs, d, m


class Runner:
    """Calls the kernel of a type for a [T, k] input into out [T, n], with preallocated scratch."""

    def __init__(self, kind, arrays, n, k, T, n_ranges):
        self.kind, self.a, self.n, self.T = kind, arrays, n, T
        self.x = np.random.default_rng(1).standard_normal((T, k), dtype=np.float32)
        self.out = np.zeros((T, n), np.float32)
        self.xq, self.xd, self.xs = np.zeros((T, k), np.int8), np.zeros((T, k // 32), np.float32), np.zeros((T, k // 32), np.int32)
        self.acc1, self.p16_1, self.p32_1 = np.zeros((n_ranges, R), np.float32), np.zeros((n_ranges, R), np.int16), np.zeros((n_ranges, R), np.int32)
        self.acc, self.p16, self.p32 = np.zeros((n_ranges, TB, R), np.float32), np.zeros((n_ranges, TB, R), np.int16), np.zeros((n_ranges, TB, R), np.int32)
        self.w = np.zeros((n_ranges, 32, R), np.int16)
        self.row_buf = np.zeros((n_ranges, k), np.float32)
        self.rd32 = np.zeros((n_ranges, k // 32), np.float32)       # q5_0: a row's block scales
        self.xdt = np.zeros((k // 32, T), np.float32), np.zeros((k // 32, T), np.int32)   # q5_0, AVX2
        self.scr8 = np.zeros((n_ranges, 8), np.float32)
        self.avx2 = K.avx2.available(R)       # the 4-bit kernels glmcpu.linear picks here
        self.xp = np.zeros((T, k // 2), np.int16)
        self.w8 = np.zeros((n_ranges, 32 * R), np.uint8)
        self.acc8, self.xw8 = np.zeros((n_ranges, min(T, 256), R), np.float32), np.zeros((n_ranges, TB * 32), np.int16)  # q8_0 AVX2
        if kind in KQ_BLOCK:
            self.kq = Workspace(T, k, n_ranges // 4, R).kquant(k)[0]                 # portable scratch
            self.aq, self.ad, self.asum = np.zeros((T, k), np.int8), np.zeros((T, k // 256), np.float32), \
                np.zeros((T, k // 16), np.int32)
            KA, p = K.kquant_avx2, K.kquant_avx2.PAD
            self.tile = (np.zeros((n_ranges, KA.RT * 256), np.uint8), np.zeros((n_ranges, KA.RT * 8), np.int32),
                         np.zeros((n_ranges, KA.RT * 8), np.int32), np.zeros((n_ranges, 2 * KA.RT), np.float32),
                         np.zeros((n_ranges, KA.TB * KA.RT), np.float32))
            self.perm = (np.zeros((T, k + p), np.int8), np.zeros((T, k + p), np.uint8), np.zeros((T, k // 32), np.int32),
                         np.zeros((k // 256, T), np.float32), np.zeros((k // 32, T), np.float32))

    def __call__(self):
        a, T, n = self.a, self.T, self.n
        if self.kind in KQ_BLOCK:
            self.kquant()
            return
        if self.kind == "q5_0":
            K.quantize_act(self.xq, self.xd, self.xs, self.x)
            if self.avx2:
                xdt, xst = self.xdt
                if T >= 8:
                    K.kquant_avx2.transpose_act(xdt, xst, self.xd, self.xs)
                K.matmul_q5_0_avx2(self.out, a[0], self.xq, self.xd, self.xs, xdt, xst, self.scr8)
            else:
                K.matmul_q5_0(self.out, self.row_buf.view(np.int32), self.rd32, a[0], self.xq, self.xd)
            return
        if self.kind == "f16":
            if T == 1:
                K.matvec_f16(self.out[0], self.x[0], a[0])
            else:
                K.matmul_f16(self.out, self.row_buf, self.x, a[0])
            return
        K.quantize_act(self.xq, self.xd, self.xs, self.x)
        qs, d, m = a
        if self.kind == "q8_0":
            if self.avx2:     # kernels/q8_avx2.py, as glmcpu.linear picks them
                if T == 1:
                    K.matvec_q8_0_avx2(self.out[0], self.acc1, self.p32_1, self.xq, self.xd, qs, d, n)
                else:
                    K.matmul_q8_0_avx2(self.out, self.acc8, self.p32, self.w, self.xw8, self.xq, self.xd, qs, d, n)
            elif T == 1:
                K.matvec_q8_0(self.out[0], self.acc1, self.p32_1, self.xq, self.xd, qs, d, n)
            else:
                K.matmul_q8_0(self.out, self.acc, self.p32, self.w, self.xq, self.xd, qs, d, n)
        elif self.avx2:
            K.pair_act(self.xp, self.xq)
            if T == 1:
                K.matvec_q4_avx2(self.out[0], self.acc1, self.p16_1, self.xp, self.xd, self.xs, qs, d, m, n)
            elif T <= TB:
                K.matmul_few_q4_avx2(self.out, self.acc, self.p16, self.xp, self.xd, self.xs, qs, d, m, n)
            else:
                K.matmul_q4_avx2(self.out, self.acc, self.p16, self.w8,
                                 self.xp, self.xd, self.xs, qs, d, m, n)
        elif T == 1:
            K.matvec_q4(self.out[0], self.acc1, self.p16_1, self.xq, self.xd, self.xs, qs, d, m, n)
        else:
            K.matmul_q4(self.out, self.acc, self.p16, self.w, self.xq, self.xd, self.xs, qs, d, m, n)


    def kquant(self):
        """q8_K activations, then the K-quant kernels glmcpu.linear picks here (AVX2 or portable)."""
        num = int(self.kind[1])
        K.quantize_q8_K(self.aq, self.ad, self.asum, self.x)
        if not self.avx2:
            K.matmul_kquant(self.out, *self.kq, self.a[0], self.aq, self.ad, self.asum, num)
            return
        xq2, xqu, asum2, adT, a2T = self.perm
        if self.T == 1:
            K.kquant_avx2.pair_sums(asum2, self.asum)
            K.matvec_kquant_avx2(self.out[0], self.tile[1], self.a[0], self.aq, self.ad, self.asum, asum2, num)
        else:
            K.permute_q8_K(xq2, xqu, adT, a2T, self.aq, self.ad, self.asum)
            K.matmul_kquant_avx2(self.out, *self.tile, self.a[0], xq2, xqu, adT, a2T, num)


def validate(kinds, n_ranges):
    """Each kernel equals its reference on a ragged shape before anything is timed."""
    rng = np.random.default_rng(0)
    n, k, gs = 300, 256, 64
    w = rng.standard_normal((n, k), dtype=np.float32)
    for kind in kinds:
        for T in (1, 7):
            x = rng.standard_normal((T, k), dtype=np.float32)
            if kind == "q5_0":
                wb = Q.quantize_q5_0(w)
                r = Runner(kind, (wb,), n, k, T, n_ranges)
                r.x[:] = x
                r()
                assert np.array_equal(r.out, Q.matmul_ref("q5_0", wb, None, None, 32, x)), kind
                continue
            if kind in KQ_BLOCK:   # glmcpu.kquants.kernel_dot, bit for bit
                name = kind[:2] + "_K"
                wb = KQ.QUANTIZE[name](w)
                r = Runner(kind, (wb,), n, k, T, n_ranges)
                r.x[:] = x
                r()
                ref = KQ.kernel_dot(name, wb, KQ.quantize_q8_K(x))
                assert np.array_equal(r.out.view(np.uint32), ref.view(np.uint32)), kind
                continue
            if kind == "f16":
                w16 = w.astype(np.float16)
                r = Runner(kind, (w16.view(np.uint16),), n, k, T, n_ranges)
                r.x[:] = x
                r()
                ref = x.astype(np.float64) @ w16.astype(np.float64).T
                assert np.abs(r.out - ref).max() <= 1e-5 * np.abs(ref).max(), kind
                continue
            qt = qtypes.get(kind)
            q, d, *m = qt.quantize(w, gs)                      # row-major reference: quants, scales[, mins]
            m = m[0] if m else None
            arrays = tuple(qt.encode(w, "w", gs))              # the stored (tiled) parts
            if not qt.has_min:  # the Runner takes (quants, scales, mins), mins empty without them
                arrays += (np.zeros((0, 0, 0), np.uint16),)
            r = Runner(kind, arrays, n, k, T, n_ranges)
            r.x[:] = x
            r()
            assert np.array_equal(r.out, Q.matmul_ref(kind, q, d, m, gs, x)), kind
    print(f"validated against the numpy reference: {', '.join(kinds)} (T = 1 and 7, ragged rows)")


# ---------------------------------------------------------------- earlier q4_0 matvec variants

@njit(cache=True, parallel=True, fastmath=True)
def v1_naive(out, x, qs, d):
    n, nb = qs.shape[0], d.shape[1]
    for i in prange(n):
        acc = np.float32(0)
        for b in range(nb):
            s = np.float32(0)
            for j in range(16):
                q = qs[i, b * 16 + j]
                s += np.float32(np.int32(q & 15) - 8) * x[b * 32 + j] + np.float32(np.int32(q >> 4) - 8) * x[b * 32 + 16 + j]
            acc += s * f16_to_f32(d[i, b])
        out[i] = acc


@njit(cache=True, parallel=True, fastmath=True)
def v2_int(out, xq, xd, xs, qs, d):
    n, nb = qs.shape[0], d.shape[1]
    for i in prange(n):
        acc = np.float32(0)
        for b in range(nb):
            s = np.int32(0)
            for j in range(16):
                q = qs[i, b * 16 + j]
                s += np.int32(q & 15) * np.int32(xq[b * 32 + j]) + np.int32(q >> 4) * np.int32(xq[b * 32 + 16 + j])
            acc += np.float32(s - 8 * xs[b]) * (xd[b] * f16_to_f32(d[i, b]))
        out[i] = acc


@njit(cache=True, parallel=True, fastmath=True)
def v3_tiled_float(out, acc, part, x, qs, d):
    n_tiles, nb, _, r_ = qs.shape
    for ti in prange(n_tiles):
        a = acc[ti]
        p = part[ti]
        for r in range(r_):
            a[r] = 0
        for b in range(nb):
            for r in range(r_):
                p[r] = 0
            for j in range(16):
                x0 = x[b * 32 + j]
                x1 = x[b * 32 + 16 + j]
                for r in range(r_):
                    q = qs[ti, b, j, r]
                    p[r] += np.float32(np.int32(q & 15) - 8) * x0 + np.float32(np.int32(q >> 4) - 8) * x1
            for r in range(r_):
                a[r] += p[r] * f16_to_f32(d[ti, b, r])
        for r in range(r_):
            out[ti * r_ + r] = a[r]


@njit(cache=True, parallel=True, fastmath=True)
def v5_int16_fastmath(out, acc, part, xq, xd, qs, d):
    n_tiles, nb, _, r_ = qs.shape
    for ti in prange(n_tiles):
        a = acc[ti]
        p = part[ti]
        for r in range(r_):
            a[r] = 0
        for b in range(nb):
            for r in range(r_):
                p[r] = 0
            for j in range(16):
                x0 = np.int16(xq[b * 32 + j])
                x1 = np.int16(xq[b * 32 + 16 + j])
                for r in range(r_):
                    q = qs[ti, b, j, r]
                    p[r] = np.int16(p[r] + (np.int16(q & 15) - 8) * x0 + (np.int16(q >> 4) - 8) * x1)
            s = xd[b]
            for r in range(r_):
                a[r] += np.float32(p[r]) * (s * f16_to_f32(d[ti, b, r]))
        for r in range(r_):
            out[ti * r_ + r] = a[r]


def bench_variants(repeat):
    n, k = 27392, 4096
    rng = np.random.default_rng(0)
    x = rng.standard_normal(k, dtype=np.float32)
    xq, xd = Q.quantize_act(x[None])
    xq, xd = xq[0], xd[0]
    xs = xq.reshape(-1, 32).astype(np.int32).sum(1).astype(np.int32)
    out = np.zeros(n, np.float32)
    qs_rm = rng.integers(0, 256, (n, k // 2), dtype=np.uint8)
    d_rm = (rng.random((n, k // 32), dtype=np.float32) * 0.01).astype(np.float16).view(np.uint16)
    nbytes = qs_rm.nbytes + d_rm.nbytes
    rows = [("v1 naive", lambda: v1_naive(out, x, qs_rm, d_rm)),
            ("v2 int", lambda: v2_int(out, xq, xd, xs, qs_rm, d_rm))]
    for r_, name in ((32, "v3 tiled, 32 rows"), (128, "v4 tiled, 128 rows")):
        qs_t = rng.integers(0, 256, (n // r_, k // 32, 16, r_), dtype=np.uint8)
        d_t = (rng.random((n // r_, k // 32, r_), dtype=np.float32) * 0.01).astype(np.float16).view(np.uint16)
        acc = np.zeros((n // r_, r_), np.float32)
        rows.append((name + ", float lanes", lambda q=qs_t, dd=d_t, a=acc: v3_tiled_float(out, a, a.copy(), x, q, dd)))
    qs_t = rng.integers(0, 256, (n // 128, k // 32, 16, 128), dtype=np.uint8)
    d_t = (rng.random((n // 128, k // 32, 128), dtype=np.float32) * 0.01).astype(np.float16).view(np.uint16)
    acc, part = np.zeros((n // 128, 128), np.float32), np.zeros((n // 128, 128), np.int16)
    rows.append(("v5 int16 lanes, fastmath", lambda: v5_int16_fastmath(out, acc, part, xq, xd, qs_t, d_t)))
    r = Runner("q4_0", (qs_t, d_t, np.zeros((0, 0, 0), np.uint16)), n, k, 1, 4 * numba.get_num_threads())
    avx2 = r.avx2
    r.avx2 = False
    rows.append(("matvec_q4 (portable: int16 lanes, exact float order)", r))
    if avx2:
        r2 = Runner("q4_0", (qs_t, d_t, np.zeros((0, 0, 0), np.uint16)), n, k, 1, 4 * numba.get_num_threads())
        rows.append(("matvec_q4_avx2 (vpmaddubsw)", r2))
    print(f"\nq4_0 matvec variants, {n} x {k} ({nbytes / 1e6:.0f} MB), {numba.get_num_threads()} threads")
    print("| variant | ms | GB/s |\n|---|---|---|")
    for name, f in rows:
        t = _timeit(f, repeat)
        print(f"| {name} | {t * 1e3:.2f} | {nbytes / t / 1e9:.1f} |")


def compare(kinds, shapes, tokens, rounds, n_ranges, rng):
    """The kinds timed in alternation (round after round, each kernel once per round, so a noisy
    neighbour slows them alike): median and best ms per call, GB/s of weight bytes, tokens/s."""
    print(f"\n{numba.get_num_threads()} threads, alternating {', '.join(kinds)}, {rounds} rounds, medians"
          f"\n| matrix | shape | T | kind | MB | median ms | best ms | GB/s | tok/s |\n|---|---|---|---|---|---|---|---|---|")
    for name, (n, k) in shapes.items():
        skip = [kind for kind in kinds if kind in KQ_BLOCK and k % 256]
        for kind in skip:    # llama.cpp's mixes (glmcpu.convert.mixes) store these as q5_0 / q8_0
            print(f"| {name} | {n}x{k} | - | {kind} | - | rows of {k} are no multiple of 256 | | | |")
        here = [kind for kind in kinds if kind not in skip]
        arrays = {kind: random_weights(kind, n, k, rng) for kind in here}
        nbytes = {kind: sum(a.nbytes for a in arrays[kind]) for kind in here}
        for T in tokens:
            runners = {kind: Runner(kind, arrays[kind], n, k, T, n_ranges)
                       for kind in here}
            times = {kind: [] for kind in here}
            for f in runners.values():
                f()                                                     # warm-up
            for _ in range(rounds):
                for kind, f in runners.items():
                    t0 = time.perf_counter()
                    f()
                    times[kind].append(time.perf_counter() - t0)
            for kind in here:
                med, best = float(np.median(times[kind])), min(times[kind])
                mb = nbytes[kind]
                print(f"| {name} | {n}x{k} | {T} | {kind} | {mb / 1e6:.1f} | {med * 1e3:.2f} | {best * 1e3:.2f} | "
                      f"{mb / med / 1e9:.1f} | {T / med:.1f} |", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="small shapes (smoke test)")
    ap.add_argument("--variants", action="store_true", help="also time the earlier q4_0 matvec variants")
    ap.add_argument("--kinds", default="f16,q8_0,q4_0,q4_1,q4_k,q5_k,q6_k")
    ap.add_argument("--compare", default=None, metavar="KINDS",
                    help="time these kinds in alternation (medians of --repeat rounds) instead of one by one")
    ap.add_argument("--tokens", default=None, help="token counts, comma-separated (default 1,16,128)")
    ap.add_argument("--portable", action="store_true",
                    help="time the portable 4-bit and K-quant kernels even where the AVX2 ones would be used")
    args = ap.parse_args(argv)
    if args.portable:
        os.environ["GLMCPU_SIMD"] = "off"
    if args.threads:
        numba.set_num_threads(args.threads)
    threads = numba.get_num_threads()
    n_ranges = 4 * threads
    kinds = args.kinds.split(",")
    validate(kinds, n_ranges)
    shapes = {"small": (512, 256)} if args.quick else SHAPES_6B
    tokens = (1, 4) if args.quick else (1, 16, 128)
    if args.tokens:
        tokens = tuple(int(t) for t in args.tokens.split(","))
    rng = np.random.default_rng(0)
    if args.compare:
        compare(args.compare.split(","), shapes, tokens, args.repeat, n_ranges, rng)
        return 0
    print(f"\n{threads} threads, 4-bit kernels: {'avx2' if K.avx2.available(R) else 'portable'}"
          f"\n| kind | matrix | shape | T | ms | GB/s | GFLOP/s |\n|---|---|---|---|---|---|---|")
    for kind in kinds:
        for name, (n, k) in shapes.items():
            if kind in KQ_BLOCK and k % 256:
                continue
            arrays = random_weights(kind, n, k, rng)
            nbytes = sum(a.nbytes for a in arrays)
            for T in tokens:
                r = Runner(kind, arrays, n, k, T, n_ranges)
                t = _timeit(r, args.repeat if T < 128 else max(1, args.repeat // 2))
                print(f"| {kind} | {name} | {n}x{k} | {T} | {t * 1e3:.2f} | {nbytes / t / 1e9:.1f} | {2 * n * k * T / t / 1e9:.1f} |",
                      flush=True)
    if args.variants:
        bench_variants(args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
