"""The AVX2 q8_0 kernels (kernels/q8_avx2.py) equal the portable ones bit for bit, their
intrinsics equal their numpy twins lane for lane, and a q8_0 model gives the same logits with
GLMCPU_SIMD=off and on."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from numba import njit

import glmcpu
from glmcpu import kernels as K
from glmcpu import quants as Q
from glmcpu.kernels import avx2 as A
from glmcpu.kernels import q8_avx2 as QA
from helpers import golden

HERE = os.path.dirname(os.path.abspath(__file__))
AVX2 = K.avx2.available()
needs_avx2 = pytest.mark.skipif(not AVX2, reason="AVX2 kernels unavailable here (no AVX2, JIT off, or GLMCPU_SIMD=off)")
TB = K.quant.TB


def tiled(q, d, R):
    """Row-major q [n, k] int8, d [n, k/gs] float16 -> the stored tiles (qs, d bits)."""
    n, k = q.shape
    qt = Q.tile(q, R, 32).reshape(-1, k // 32, 32, R)
    dt = Q.tile(d.view(np.uint16), R, 1).reshape(-1, d.shape[1], R)
    for a in (qt, dt):
        a.setflags(write=False)       # weights are read-only views of the mmap at run time
    return qt, dt


def run_both(q, d, x, R=128, n_ranges=8, matmul_for_one=False, TA=256, TP=TB):
    """(portable, avx2) outputs [T, n] of W x for the q8_0 matrix (q, d): the matvec kernels for
    one token (unless matmul_for_one), the matmul kernels otherwise (AVX2 scratch for TA and TP
    tokens)."""
    n, k = q.shape
    T = x.shape[0]
    qt, dt = tiled(q, d, R)
    xq, xd, xs = np.zeros((T, k), np.int8), np.zeros((T, k // 32), np.float32), np.zeros((T, k // 32), np.int32)
    K.quantize_act(xq, xd, xs, x)
    outs = []
    for kernel in ("portable", "avx2"):
        out = np.full((T, n), 7.0, np.float32)
        acc1, p1 = np.zeros((n_ranges, R), np.float32), np.zeros((n_ranges, R), np.int32)
        acc, p, w = np.zeros((n_ranges, TB, R), np.float32), np.zeros((n_ranges, TB, R), np.int32), \
            np.zeros((n_ranges, 32, R), np.int16)
        if T == 1 and not matmul_for_one:
            f = K.matvec_q8_0 if kernel == "portable" else K.matvec_q8_0_avx2
            f(out[0], acc1, p1, xq, xd, qt, dt, n)
        elif kernel == "portable":
            K.matmul_q8_0(out, acc, p, w, xq, xd, qt, dt, n)
        else:
            K.matmul_q8_0_avx2(out, np.zeros((n_ranges, TA, R), np.float32), np.zeros((n_ranges, TP, R), np.int32), w,
                               np.zeros((n_ranges, TP * 32), np.int16), xq, xd, qt, dt, n)
        outs.append(out)
    return outs


def assert_bits(a, b):
    np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


def random_case(n, k, T, gs=32, seed=0):
    rng = np.random.default_rng(seed)
    q, d = Q.quantize_q8_0(rng.standard_normal((n, k)).astype(np.float32), gs)
    return q, d, rng.standard_normal((T, k)).astype(np.float32)


# ---------------------------------------------------------------- kernels vs portable

@needs_avx2
@pytest.mark.parametrize("T", [1, 2, 3, 7, 9, 10, 64, 300])
@pytest.mark.parametrize("n_out,n_in", [(1, 32), (31, 96), (130, 4096), (300, 320), (257, 1024)])
def test_equal_portable_and_reference(n_out, n_in, T):
    q, d, x = random_case(n_out, n_in, T, seed=n_out + n_in + T)
    port, avx = run_both(q, d, x)
    assert_bits(avx, port)
    assert_bits(avx, Q.matmul_ref("q8_0", q, d, None, 32, x))


@needs_avx2
@pytest.mark.parametrize("gs", [64, 128])
@pytest.mark.parametrize("R,n_ranges", [(32, 3), (64, 1), (96, 5), (128, 2)])
def test_group_sizes_tile_heights_and_ranges(gs, R, n_ranges):
    q, d, x = random_case(200, 512, 9, gs, seed=gs + R)
    for xs in (x[:1], x):
        port, avx = run_both(q, d, xs, R, n_ranges)
        assert_bits(avx, port)
        assert_bits(avx, Q.matmul_ref("q8_0", q, d, None, gs, xs))
    _, one = run_both(q, d, x[:1], R, n_ranges, matmul_for_one=True)    # the matmul at T = 1 too
    assert_bits(one, port[:1])


def _weights(kind, n, k, rng):
    """Adversarial int8 weights: the extremes every pair product and block sum can reach."""
    if kind == "random_full":    # any int8, -128 included (ggml's quantizer gives -127..127; a GGUF may hold -128)
        return rng.integers(-128, 128, (n, k), dtype=np.int8)
    if kind == "alternating":
        q = np.full((n, k), 127, np.int8)
        q[:, 1::2] = -128
        return q
    return np.full((n, k), {"max": 127, "min": -127, "minus128": -128, "zero": 0}[kind], np.int8)


def _activations(kind, T, k, rng):
    x = rng.standard_normal((T, k)).astype(np.float32)
    if kind == "same_sign":       # every block quantizes to +-127: the largest block sums
        return np.repeat(np.where(np.arange(T) % 2, -1.0, 1.0).astype(np.float32)[:, None], k, 1)
    if kind == "huge":
        return (x * np.float32(3e37)).astype(np.float32)
    if kind == "tiny":            # amax / 127 is subnormal and 1 / xd overflows: the blocks quantize to zero
        return (x * np.float32(1e-38)).astype(np.float32)
    if kind == "zero":
        return np.zeros_like(x)
    if kind == "mixed":           # per 32-block magnitudes from 1e-30 to 1e30, some blocks zero
        scale = 10.0 ** rng.integers(-30, 31, (T, k // 32)).astype(np.float32)
        scale[:, ::5] = 0
        return (x.reshape(T, k // 32, 32) * scale[:, :, None]).reshape(T, k).astype(np.float32)
    if kind == "nonfinite":       # NaN / inf blocks: scale NaN or inf, zero quants, NaN rows in the output
        x[0, 5], x[-1, 40] = np.nan, np.inf
        x[min(1, T - 1), 70] = -np.inf
        return x
    return x


@needs_avx2
@pytest.mark.parametrize("T", [1, 5, 12, 33])
@pytest.mark.parametrize("wkind", ["random_full", "alternating", "max", "min", "minus128", "zero"])
@pytest.mark.parametrize("xkind", ["normal", "same_sign", "huge", "tiny", "zero", "mixed", "nonfinite"])
def test_adversarial_weights_and_activations(wkind, xkind, T):
    rng = np.random.default_rng(len(wkind) * 31 + len(xkind))
    n, k = 161, 256
    q = _weights(wkind, n, k, rng)
    d = (rng.random((n, k // 32)) * 0.02).astype(np.float16)
    x = _activations(xkind, T, k, rng)
    port, avx = run_both(q, d, x)
    assert_bits(avx, port)      # NaNs included, payload and all
    if xkind == "nonfinite":
        assert np.isnan(avx[0]).all()
    if xkind == "tiny":          # quantize_act makes these all-zero blocks (never -128, nor infinities)
        xq = np.ones((T, k), np.int8)
        K.quantize_act(xq, np.zeros((T, k // 32), np.float32), np.zeros((T, k // 32), np.int32), x)
        assert not xq.any()


@needs_avx2
@pytest.mark.parametrize("TA,TP", [(1, 1), (5, 3), (16, 16), (64, 7), (300, 16)])
def test_scratch_sizes(TA, TP):
    """Any token blocking of the matmul's scratch (TA tokens of float sums, TP of integer sums)."""
    q, d, x = random_case(150, 256, 37, seed=TA + TP)
    port, avx = run_both(q, d, x, TA=TA, TP=TP)
    assert_bits(avx, port)


@needs_avx2
def test_special_scales():
    """Scales inf, NaN, 0, subnormal and the f16 maximum go through the same float32 expression."""
    rng = np.random.default_rng(5)
    n, k = 140, 128
    q = rng.integers(-128, 128, (n, k), dtype=np.int8)
    d = (rng.random((n, k // 32)) * 0.02).astype(np.float16)
    d[3, 0], d[4, 1], d[5, 2], d[6, 3], d[7, 0], d[130, 1] = np.inf, np.nan, 0, 1e-7, 65504, -np.inf
    for T in (1, 6):
        port, avx = run_both(q, d, rng.standard_normal((T, k)).astype(np.float32))
        assert_bits(avx, port)


@needs_avx2
def test_each_kernel_compiles_once():
    for T in (1, 7):
        run_both(*random_case(40, 64, T))
    assert len(QA.matvec_q8_0_avx2.signatures) == 1
    assert len(QA.matmul_q8_0_avx2.signatures) == 1


# ---------------------------------------------------------------- intrinsics vs numpy twins

INTRINSICS = ["zero8", "load8", "store8", "bcast_x8", "madd_q8_lo", "madd_q8_hi", "store8x2",
              "interleave_q8", "bcast32", "madd16", "add8", "prefetch", "widen32"]


def _chain(suffix):
    """A function calling every intrinsic once, each result stored where the test can see it, with
    the intrinsics themselves (suffix "") or their numpy twins ("_py")."""
    (zero8, load8, store8, bcast_x8, madd_q8_lo, madd_q8_hi, store8x2, interleave_q8, bcast32, madd16,
     add8, prefetch, widen32) = (getattr(QA if hasattr(QA, name + "_py") else A, name + suffix) for name in INTRINSICS)

    def chain(out, acc_in, q, off0, off1, xq, xoff, w16, xw):
        prefetch(q, off0 + 10 ** 6)          # a hint, far past the end: no fault, no effect
        acc = load8(acc_in, 0)
        b = bcast_x8(xq, xoff)
        lo = madd_q8_lo(acc, q, off0, off1, b)
        hi = madd_q8_hi(acc, q, off0, off1, b)
        store8(out, 0, lo)
        store8(out, 8, hi)
        store8x2(out, 16, lo, hi)
        store8(out, 32, b)
        store8(out, 40, zero8())
        interleave_q8(w16, 2, q, off0, off1)
        c = bcast32(xw, 2)
        store8(out, 48, c)
        m = madd16(acc, w16, 2, c)
        store8(out, 56, m)
        store8(out, 64, add8(m, lo))
        widen32(w16, 34, xq, xoff // 2)
    return chain


@pytest.mark.skipif(not K.JIT, reason="the intrinsics run only with the JIT on")
@needs_avx2
def test_intrinsics_equal_twins_lane_for_lane():
    jit, py = njit(_chain("")), _chain("_py")
    rng = np.random.default_rng(0)
    for trial in range(50):
        q = rng.integers(-128, 128, (3, 64), dtype=np.int8)
        if trial % 5 == 0:
            q[:] = -128 if trial % 10 == 0 else 127
        xq = rng.integers(-128, 128, (2, 40), dtype=np.int8)
        xw = rng.integers(-32768, 32768, 20, dtype=np.int16)
        acc = rng.integers(-2 ** 31, 2 ** 31, 8, dtype=np.int64).astype(np.int32)
        if trial % 7 == 0:        # vpaddd wraps at 2^31; the twins must too
            acc[:] = np.int32(2 ** 31 - 1) if trial % 14 else np.int32(-2 ** 31)
        off0, off1, xoff = int(rng.integers(0, 80)), int(rng.integers(0, 80)), int(rng.integers(0, 78))
        res = []
        for f in (jit, py):
            out, w16 = np.zeros(72, np.int32), np.zeros(66, np.int16)
            f(out, acc, q, off0, off1, xq, xoff, w16, xw)
            res.append((out, w16))
        for what, a, b in (("out", res[0][0], res[1][0]), ("w16", res[0][1], res[1][1])):
            np.testing.assert_array_equal(a, b, err_msg=f"{what}, trial {trial}")
    # the twins against the definitions, on one case
    out = res[1][0]
    pairs = np.stack([q.reshape(-1)[off0: off0 + 16], q.reshape(-1)[off1: off1 + 16]], 1).astype(np.int64)
    x0, x1 = xq.reshape(-1)[xoff: xoff + 2].astype(np.int64)
    rows = (acc.astype(np.int64)[[0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7, 4, 5, 6, 7]]
            + pairs[:, 0] * x0 + pairs[:, 1] * x1).astype(np.int32)
    np.testing.assert_array_equal(out[16:32], rows)
    np.testing.assert_array_equal(res[1][1][2:34].reshape(16, 2), pairs)


def test_twins_run_the_kernels_with_the_jit_off():
    """NUMBA_DISABLE_JIT=1: the kernels run on the twins in Python and equal matmul_ref; the
    model would not pick them (available() is False there)."""
    code = f"""
import json, sys
import numpy as np
sys.path.insert(0, {HERE!r})
from test_q8_avx2 import random_case, tiled
from glmcpu import kernels as K, quants as Q
from glmcpu.kernels import q8_avx2 as QA
q, d, x = random_case(130, 128, 5, gs=64, seed=3)
q[0, :40] = -128
qt, dt = tiled(q, d, 128)
T, k, nr, TB = 5, 128, 3, K.quant.TB
xq, xd, xs = np.zeros((T, k), np.int8), np.zeros((T, k // 32), np.float32), np.zeros((T, k // 32), np.int32)
K.quantize_act(xq, xd, xs, x)
o1, oT = np.zeros(130, np.float32), np.zeros((T, 130), np.float32)
QA.matvec_q8_0_avx2(o1, np.zeros((nr, 128), np.float32), np.zeros((nr, 128), np.int32), xq[:1], xd[:1], qt, dt, 130)
QA.matmul_q8_0_avx2(oT, np.zeros((nr, 3, 128), np.float32), np.zeros((nr, 2, 128), np.int32),
                    np.zeros((nr, 32, 128), np.int16), np.zeros((nr, 2 * 32), np.int16), xq, xd, qt, dt, 130)
ref = Q.matmul_ref("q8_0", q, d, None, 64, x)
print(json.dumps({{"jit": K.JIT, "available": K.avx2.available(), "matvec": bool(np.array_equal(o1.view(np.uint32), ref[0].view(np.uint32))),
                  "matmul": bool(np.array_equal(oT.view(np.uint32), ref.view(np.uint32))), "twin": QA.madd16 is QA.madd16_py}}))
"""
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {
        "jit": False, "available": False, "matvec": True, "matmul": True, "twin": True}


# ---------------------------------------------------------------- the model

def _logits(path):
    """Prefill, two decode steps, and a two-slot batch (a decode row and a prompt chunk)."""
    e = np.load(os.path.join(golden("glm4-tiny"), "expected.npz"))
    ids = [int(t) for t in e["prompt_ids"]]
    m = glmcpu.load(path, n_ctx=64, threads=2, kv="f32", n_slots=2)
    out = [m.forward(ids), m.forward([ids[0]]), m.forward([ids[1]])]
    out.append(m.forward_batch([(0, [ids[2]]), (1, ids[:5])]))
    return np.concatenate(out), bool(m.arch.ws.avx2)


@needs_avx2
def test_model_logits_equal_with_simd_off_and_on(converted, monkeypatch):
    path = converted("glm4-tiny", "q8_0")
    monkeypatch.setenv("GLMCPU_SIMD", "off")
    port, port_avx2 = _logits(path)
    monkeypatch.delenv("GLMCPU_SIMD")
    avx, avx_avx2 = _logits(path)
    assert (port_avx2, avx_avx2) == (False, True)
    assert_bits(avx, port)
