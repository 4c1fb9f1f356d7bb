"""The AVX2 K-quant kernels (kernels/kquant_avx2.py) against the portable ones (kernels/kquant.py,
themselves equal to kquants.kernel_dot in test_kquant_types): bit for bit, per type, on ragged
shapes and adversarial bytes; the intrinsics' numpy twins against the intrinsics, lane for lane;
and a whole model in q4_k_m with GLMCPU_SIMD=off and on (the same logits, bit for bit)."""
import numpy as np
import pytest
from numba import njit

import glmcpu
from glmcpu import kernels as K
from glmcpu import kquants as KQ
from glmcpu.kernels import avx2 as A
from glmcpu.kernels import kquant_avx2 as KA
from helpers import random_checkpoint

AVX2 = K.avx2.available()
needs_avx2 = pytest.mark.skipif(not AVX2, reason="AVX2 kernels unavailable here (no AVX2, JIT off or "
                                                 "GLMCPU_SIMD=off): nothing to compare")
RNG = np.random.default_rng(15)
KINDS = {"q4_K": 4, "q5_K": 5, "q6_K": 6}
BPB = {4: 144, 5: 176, 6: 210}
NR = 3       # ranges: rows split unevenly between them


# ---------------------------------------------------------------- the intrinsics and their twins

@njit(cache=True)
def _run_bytes(op, out, a, off, b, shift, mask):
    """out[0:32] = the i8x32 result of op on loadq / load32 of a and b."""
    u = KA.loadq(a, off)
    v = KA.load32(b, 0)
    if op == 0:
        r = u
    elif op == 1:
        r = v
    elif op == 2:
        r = KA.nib_lo(u)
    elif op == 3:
        r = KA.nib_hi(u)
    elif op == 4:
        r = KA.hbits(u, shift, mask)
    elif op == 5:
        r = KA.or32(u, v)
    elif op == 6:
        r = KA.pair_lo(u, v)
    elif op == 7:
        r = KA.pair_hi(u, v)
    else:
        r = KA.add8(u, mask - 128)
    KA.store32(out, 0, r)


def _run_bytes_py(op, out, a, off, b, shift, mask):
    u, v = KA.loadq_py(a, off), KA.load32_py(b, 0)
    r = [u, v, KA.nib_lo_py(u), KA.nib_hi_py(u), KA.hbits_py(u, shift, mask), KA.or32_py(u, v),
         KA.pair_lo_py(u, v), KA.pair_hi_py(u, v), KA.add8_py(u, mask - 128)][op]
    KA.store32_py(out, 0, r)


@njit(cache=True)
def _run_dots(op, out, acc0, w1, w2, x, xoff, sp, spoff):
    """out[0:8] = the i32x8 result of a dot intrinsic, from a non-zero start (dot2_sc of acc0)."""
    acc = KA.zero8()
    A.store8(out, 0, acc)
    acc = KA.dot2_sc(acc, KA.load32(acc0, 0), KA.load32(acc0, 0), x, 64, sp, 0)   # any non-zero start
    u = KA.load32(w1, 0)
    v = KA.load32(w2, 0)
    if op == 0:
        acc = KA.dot_s(acc, u, x, xoff, sp, spoff)
    elif op == 1:
        acc = KA.dot_s2(acc, u, x, xoff, sp, spoff)
    elif op == 2:
        acc = KA.dot2_sc(acc, u, v, x, xoff, sp, spoff)
    elif op == 3:
        acc = KA.dot_su(acc, u, x.view(np.uint8), xoff, sp, spoff)
    else:
        acc = KA.dot_c128(acc, u, sp, spoff)
    A.store8(out, 0, acc)
    out[8] = KA.hsum8(acc)


def _run_dots_py(op, out, acc0, w1, w2, x, xoff, sp, spoff):
    acc = A.zero8_py()
    acc = KA.dot2_sc_py(acc, KA.load32_py(acc0, 0), KA.load32_py(acc0, 0), x, 64, sp, 0)
    u, v = KA.load32_py(w1, 0), KA.load32_py(w2, 0)
    if op == 0:
        acc = KA.dot_s_py(acc, u, x, xoff, sp, spoff)
    elif op == 1:
        acc = KA.dot_s2_py(acc, u, x, xoff, sp, spoff)
    elif op == 2:
        acc = KA.dot2_sc_py(acc, u, v, x, xoff, sp, spoff)
    elif op == 3:
        acc = KA.dot_su_py(acc, u, x.view(np.uint8), xoff, sp, spoff)
    else:
        acc = KA.dot_c128_py(acc, u, sp, spoff)
    A.store8_py(out, 0, acc)
    out[8] = KA.hsum8_py(acc)


@njit(cache=True)
def _run_k4(sp, w, off, a2, a2off):
    return KA.k4_scales(sp, 0, w, off, a2, a2off)


@njit(cache=True)
def _run_q6(sp, w, off, a, aoff):
    return KA.q6_scales(sp, 0, w, off, a, aoff)


@njit(cache=True)
def _run_f16x2(w, off):
    return KA.f16x2(w, off)


def _bytes(n, lo=0, hi=256, dtype=np.uint8):
    return RNG.integers(lo, hi, n).astype(dtype)


@needs_avx2
@pytest.mark.parametrize("op", range(9), ids=["loadq", "load32", "nib_lo", "nib_hi", "hbits", "or32",
                                              "pair_lo", "pair_hi", "add8"])
def test_byte_intrinsics_equal_their_twins(op):
    for trial in range(50):
        a, b = _bytes(100), _bytes(32)
        off, shift, mask = int(RNG.integers(0, 68)), int(RNG.integers(0, 8)), int(RNG.choice([1, 3, 255]))
        got, want = np.zeros(32, np.uint8), np.zeros(32, np.uint8)
        _run_bytes(op, got, a, off, b, shift, mask)
        _run_bytes_py(op, want, a, off, b, shift, mask)
        np.testing.assert_array_equal(got, want)
    if op == 0:   # Q order itself: byte 4v + k <- byte v + 8k
        _run_bytes_py(0, want, np.arange(32, dtype=np.uint8), 0, b, 0, 0)
        assert list(want) == [v + 8 * k for v in range(8) for k in range(4)]


@needs_avx2
@pytest.mark.parametrize("op", range(5), ids=["dot_s", "dot_s2", "dot2_sc", "dot_su", "dot_c128"])
@pytest.mark.parametrize("extreme", [False, True])
def test_dot_intrinsics_equal_their_twins(op, extreme):
    """Random operands, and extreme ones where vpmaddubsw saturates (255 * 127 * 2), vpmaddwd wraps
    (-32768 * -32768 * 2) and the int16 sums of dot2_sc wrap: the twins model it all (and hsum8,
    the lane sum, wraps as int32 does)."""
    for trial in range(50):
        if extreme:
            w1, w2 = np.full(32, 255, np.uint8), np.full(32, 255, np.uint8)
            x = np.full(200, RNG.choice([127, -128]), np.int8)
            sp = np.full(9, RNG.choice([-32768 * 65537, 32767 * 65537, -1]), np.int64).astype(np.int32)
        else:
            w1, w2, x = _bytes(32), _bytes(32), _bytes(200, -128, 128, np.int8)
            sp = _bytes(9, -2**31, 2**31, np.int32)
        acc0, xoff, spoff = _bytes(32), int(RNG.integers(0, 100)), int(RNG.integers(0, 8))
        got, want = np.zeros(9, np.int32), np.zeros(9, np.int32)      # the 8 lanes and their hsum8
        _run_dots(op, got, acc0, w1, w2, x, xoff, sp, spoff)
        _run_dots_py(op, want, acc0, w1, w2, x, xoff, sp, spoff)
        np.testing.assert_array_equal(got, want)


@needs_avx2
def test_scale_intrinsics_equal_their_twins():
    """k4_scales and q6_scales (the scale pairs they store, the minimum / correction sums they
    return) and f16x2 equal their twins, and the twins are ggml's get_scale_min_k4, the int8
    scales and IEEE half precision."""
    for trial in range(100):
        w, a2 = _bytes(40), _bytes(20, -5000, 5000, np.int32)
        off, a2off = int(RNG.integers(0, 28)), int(RNG.integers(0, 12))
        sg, sw = np.zeros(8, np.int32), np.zeros(8, np.int32)
        assert _run_k4(sg, w, off, a2, a2off) == KA.k4_scales_py(sw, 0, w, off, a2, a2off)
        np.testing.assert_array_equal(sg, sw)
        # and both are ggml's get_scale_min_k4 (kernels.kquant._scale_min_k4, scalar)
        if off >= 4:
            sc_m = [K.kquant._scale_min_k4(w[None, off - 4:], 0, 0, j) for j in range(8)]
            assert list(sw) == [sc_m[j][0] | sc_m[j][0] << 16 for j in range(8)]
            assert int(_run_k4(sg, w, off, a2, a2off)) == sum(int(m) * int(a2[a2off + j]) for j, (_, m) in enumerate(sc_m))
        a = _bytes(40, -2100, 2100, np.int32)
        off, aoff = int(RNG.integers(0, 24)), int(RNG.integers(0, 24))
        qg, qw = np.zeros(16, np.int32), np.zeros(16, np.int32)
        got = _run_q6(qg, w, off, a, aoff)
        assert got == KA.q6_scales_py(qw, 0, w, off, a, aoff)
        np.testing.assert_array_equal(qg, qw)
        sc = w[off: off + 16].view(np.int8).astype(np.int64)
        assert list(qg.view(np.int16)[0::2]) == list(sc) and list(qg.view(np.int16)[1::2]) == list(sc)
        assert int(got) == int(np.sum(sc * a[aoff: aoff + 16]))
        d2 = _run_f16x2(w, off)
        want2 = w[off: off + 4].copy().view(np.float16).astype(np.float32)
        assert [np.float32(v).view(np.uint32) for v in d2] == [np.float32(v).view(np.uint32) for v in KA.f16x2_py(w, off)]
        np.testing.assert_array_equal(np.array(d2, np.float32)[~np.isnan(want2)], want2[~np.isnan(want2)])


@njit(cache=True)
def _acc_k(accs, k):
    """A non-trivial i32x8: dot_s of the k-th 32 bytes of accs with bytes 256 + 32k (no lists of
    vector values in numba: their storage need not be 32-byte aligned)."""
    return KA.dot_s(KA.zero8(), KA.load32(accs, 32 * k), accs.view(np.int8), 256 + 32 * k, accs.view(np.int32), k)


@njit(cache=True)
def _run_scale8v(s, soff, d, a, aoff, accs):
    KA.scale8v(s, soff, d, a, aoff, _acc_k(accs, 0), _acc_k(accs, 1), _acc_k(accs, 2), _acc_k(accs, 3),
               _acc_k(accs, 4), _acc_k(accs, 5), _acc_k(accs, 6), _acc_k(accs, 7))


def _run_scale8v_py(s, soff, d, a, aoff, accs):
    v = [KA.load32_py(accs, 32 * k) for k in range(8)]
    z = A.zero8_py()
    acc = [KA.dot_s_py(z, v[k], accs.view(np.int8), 256 + 32 * k, accs.view(np.int32), k) for k in range(8)]
    KA.scale8v_py(s, soff, d, a, aoff, *acc)


@needs_avx2
def test_scale8v_equals_its_twin():
    """scale8v (eight horizontal sums by a vphaddd transpose, then the float step for eight tokens)
    equals its twin bit for bit, and the twin is kernel_dot's step token by token."""
    for trial in range(100):
        accs = _bytes(512)
        a = RNG.standard_normal(20).astype(np.float32) * np.float32(RNG.choice([1e-30, 1.0, 1e30]))
        s0 = RNG.standard_normal(20).astype(np.float32)
        d = np.float32(RNG.standard_normal())
        soff, aoff = int(RNG.integers(0, 12)), int(RNG.integers(0, 12))
        got, want = s0.copy(), s0.copy()
        _run_scale8v(got, soff, d, a, aoff, accs)
        _run_scale8v_py(want, soff, d, a, aoff, accs)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
        z = A.zero8_py()
        for k in range(8):
            acc = KA.dot_s_py(z, KA.load32_py(accs, 32 * k), accs.view(np.int8), 256 + 32 * k, accs.view(np.int32), k)
            with np.errstate(over="ignore", invalid="ignore"):
                step = np.float32(s0[soff + k] + np.float32(np.float32(d * a[aoff + k]) * np.float32(KA.hsum8_py(acc))))
            assert step.view(np.uint32) == want[soff + k].view(np.uint32)


@njit(cache=True)
def _run_mins8(s, soff, dm, a, aoff, mn, moff, mstride, a2, a2off, a2stride):
    KA.mins8(s, soff, dm, a, aoff, mn, moff, mstride, a2, a2off, a2stride)


@needs_avx2
def test_mins8_equals_its_twin():
    """mins8 (the minimums' term for eight tokens of one row) equals its twin bit for bit, and the
    twin is kernel_dot's step with the exact integer summ, token by token."""
    for trial in range(100):
        mn = _bytes(64, 0, 64, np.int32)
        a2 = _bytes(200, -4064, 4065, np.int32).astype(np.float32)
        a = RNG.standard_normal(20).astype(np.float32) * np.float32(RNG.choice([1e-30, 1.0, 1e30]))
        s0 = RNG.standard_normal(20).astype(np.float32)
        dm = np.float32(RNG.standard_normal())
        soff, aoff, moff, a2off = (int(RNG.integers(0, 12)) for _ in range(4))
        mstride, a2stride = int(RNG.integers(1, 7)), int(RNG.integers(8, 20))
        got, want = s0.copy(), s0.copy()
        _run_mins8(got, soff, dm, a, aoff, mn, moff, mstride, a2, a2off, a2stride)
        KA.mins8_py(want, soff, dm, a, aoff, mn, moff, mstride, a2, a2off, a2stride)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
        for k in range(8):
            summ = sum(int(mn[moff + j * mstride]) * int(a2[a2off + j * a2stride + k]) for j in range(8))
            with np.errstate(over="ignore", invalid="ignore"):
                step = np.float32(s0[soff + k] - np.float32(np.float32(dm * a[aoff + k]) * np.float32(summ)))
            assert step.view(np.uint32) == want[soff + k].view(np.uint32)


# ---------------------------------------------------------------- the kernels against the portable ones

def _weights(kind, n, k, case):
    """q-type bytes [n, k / 256 * block] for a test case: quantized Gaussian rows, or raw bytes with
    the adversarial corners the kernels must survive (every f16 scale finite)."""
    name = {4: "q4_K", 5: "q5_K", 6: "q6_K"}[kind]
    if case == "quantized":
        x = RNG.standard_normal((n, k)).astype(np.float32)
        x[0, :256] = 0                     # an all-zero super-block
        x[min(2, n - 1), 3] = 40           # an outlier
        return KQ.QUANTIZE[name](x)
    bpb = BPB[kind]
    b = RNG.integers(0, 256, (n, k // 256, bpb), dtype=np.uint8)
    if case == "max":                      # every quant and scale at its largest
        b[:] = 255
    nb = k // 256
    d = RNG.choice([0.0, 1e-4, 0.5, 60000.0, -3.0], size=(n, nb)).astype(np.float16)
    one = np.ones((n, nb), np.float16)
    if case == "max":
        d = one
    at = 208 if kind == 6 else 0
    b[:, :, at:at + 2] = d.view(np.uint8).reshape(n, nb, 2)
    if kind == 6 and case == "max":
        b[:, :, 192:208] = 0x80            # every scale -128
    if kind != 6:
        b[:, :, 2:4] = (one if case == "max" else np.roll(d, 1)).view(np.uint8).reshape(n, nb, 2)   # dmin
    b[0, 0] = 0                            # an all-zero block: d = 0, q = 0
    return b.reshape(n, -1)


def _acts(T, k, case):
    x = RNG.standard_normal((T, k)).astype(np.float32)
    if case == "huge":
        x *= np.float32(1e30)
    elif case == "tiny":
        x *= np.float32(1e-30)
    elif case == "signs":                  # one sign per token: every q8 at +-127 in some blocks
        x = np.abs(x) * np.where(np.arange(T) % 2, -1, 1).astype(np.float32)[:, None]
    x[0, :256] = 0                         # an all-zero activation block
    return x


def _portable(kind, w, x):
    T, k = x.shape
    aq, ad, asum = np.zeros((T, k), np.int8), np.zeros((T, k // 256), np.float32), np.zeros((T, k // 16), np.int32)
    K.quantize_q8_K(aq, ad, asum, x)
    out = np.full((T, w.shape[0]), np.nan, np.float32)
    K.matmul_kquant(out, np.zeros((NR, k), np.int32), np.zeros((NR, k // 256), np.float32),
                    np.zeros((NR, k // 256), np.float32), np.zeros((NR, k // 16), np.int32), w, aq, ad, asum, kind)
    return out, (aq, ad, asum)


def _avx2(kind, w, act, T, k):
    aq, ad, asum = act
    pad = KA.PAD
    xq2, xqu = np.zeros((T, k + pad), np.int8), np.zeros((T, k + pad), np.uint8)
    adT, a2T = np.zeros((k // 256, T), np.float32), np.zeros((k // 32, T), np.float32)
    K.permute_q8_K(xq2, xqu, adT, a2T, aq, ad, asum)
    tile = (np.zeros((NR, KA.RT * 256), np.uint8), np.zeros((NR, KA.RT * 8), np.int32),
            np.zeros((NR, KA.RT * 8), np.int32), np.zeros((NR, 2 * KA.RT), np.float32),
            np.zeros((NR, KA.TB * KA.RT), np.float32))
    out = np.full((T, w.shape[0]), np.nan, np.float32)
    K.matmul_kquant_avx2(out, *tile, w, xq2, xqu, adT, a2T, kind)
    if T > 1:
        return out, None
    o1 = np.full(w.shape[0], np.nan, np.float32)
    asum2 = np.zeros((1, k // 32), np.int32)
    KA.pair_sums(asum2, asum)
    K.matvec_kquant_avx2(o1, tile[1], w, aq, ad, asum, asum2, kind)
    return out, o1


@needs_avx2
@pytest.mark.parametrize("name", list(KINDS))
@pytest.mark.parametrize("n,k", [(37, 512), (1, 256), (33, 1280), (50, 256)])
@pytest.mark.parametrize("T", [1, 2, 7, 64, 300])
def test_avx2_kernels_equal_the_portable_ones(name, n, k, T):
    """matvec (T = 1) and matmul (any T) equal kernels.kquant.matmul_kquant bit for bit: ragged rows
    (not a multiple of the 16-row tile), token counts around the 8-token register tile and the
    32-token block, Gaussian activations."""
    kind = KINDS[name]
    w = _weights(kind, n, k, "quantized")
    want, act = _portable(kind, w, _acts(T, k, "normal"))
    got, got1 = _avx2(kind, w, act, T, k)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    if got1 is not None:
        np.testing.assert_array_equal(got1.view(np.uint32), want[0].view(np.uint32))


@needs_avx2
@pytest.mark.parametrize("name", list(KINDS))
@pytest.mark.parametrize("wcase", ["random", "max"])
@pytest.mark.parametrize("xcase", ["normal", "huge", "tiny", "signs"])
@pytest.mark.parametrize("T", [1, 9])
def test_avx2_kernels_on_adversarial_bytes(name, wcase, xcase, T):
    """Raw bytes (every quant, 6-bit scale and minimum, negative q6_K scales down to -128), every
    quant and scale at its maximum, huge / tiny / one-signed activations, an all-zero block on each
    side: still the portable kernel's bits (infinities and NaNs included)."""
    kind, n, k = KINDS[name], 21, 768
    w = _weights(kind, n, k, wcase)
    want, act = _portable(kind, w, _acts(T, k, xcase))
    got, got1 = _avx2(kind, w, act, T, k)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    if got1 is not None:
        np.testing.assert_array_equal(got1.view(np.uint32), want[0].view(np.uint32))


def test_permuted_activations():
    """permute_q8_K's layouts, from their definitions (runs with or without AVX2)."""
    T, k = 3, 512
    aq = RNG.integers(-127, 128, (T, k)).astype(np.int8)
    asum = aq.reshape(T, -1, 16).astype(np.int32).sum(-1).astype(np.int32)
    ad = RNG.random((T, k // 256)).astype(np.float32)
    xq2, xqu = np.zeros((T, k + 64), np.int8), np.zeros((T, k + 64), np.uint8)
    adT, a2T, asum2 = np.zeros((k // 256, T), np.float32), np.zeros((k // 32, T), np.float32), np.zeros((T, k // 32), np.int32)
    K.permute_q8_K(xq2, xqu, adT, a2T, aq, ad, asum)
    KA.pair_sums(asum2, asum)
    q = np.array([v + 8 * kk for v in range(8) for kk in range(4)])
    chunks = aq.reshape(T, -1, 32)
    np.testing.assert_array_equal(xqu[:, :k].reshape(T, -1, 32), (chunks[:, :, q].astype(np.int32) + 128).astype(np.uint8))
    lo = np.array([[v, v + 8, 32 + v, 40 + v] for v in range(8)]).reshape(-1)
    pairs = aq.reshape(T, -1, 64)
    np.testing.assert_array_equal(xq2[:, :k].reshape(T, -1, 64)[:, :, :32], pairs[:, :, lo])
    np.testing.assert_array_equal(xq2[:, :k].reshape(T, -1, 64)[:, :, 32:], pairs[:, :, lo + 16])
    np.testing.assert_array_equal(asum2, chunks.astype(np.int32).sum(-1))
    np.testing.assert_array_equal(a2T, asum2.T.astype(np.float32))
    np.testing.assert_array_equal(adT, ad.T)


# ---------------------------------------------------------------- a whole model

@pytest.fixture(scope="module")
def kmodel(tmp_path_factory):
    from glmcpu.convert import convert
    d = tmp_path_factory.mktemp("kavx2")
    # ffn 640 is no multiple of 256: ffn_down falls back to q5_0 / q8_0, as in ChatGLM3-6B (13696)
    ckpt = random_checkpoint(str(d / "ckpt"), family="chatglm3", hidden=256, layers=2, heads=4, groups=2, ffn=640)
    out = str(d / "q4_k_m.glmq")
    convert(ckpt, out, dtype="q4_k_m", progress=False)
    return out


@needs_avx2
def test_model_logits_same_with_simd_off_and_on(kmodel, monkeypatch):
    """q4_k_m (q4_K, q6_K and, for the 640-wide ffn_down, q5_0 matrices): a 40-token prefill (a
    32-token block and a ragged one) and two decode steps give the same logits, bit for bit, on the
    portable and the AVX2 kernels."""
    from glmcpu.file import ModelFile
    types = {i["type"] for i in ModelFile(kmodel).tensor_types.values() if len(i["shape"]) == 2}
    assert {"q4_k", "q6_k", "q5_0"} <= types, types
    ids = [int(i) for i in RNG.integers(100, 60000, 40)]

    def run():
        m = glmcpu.load(kmodel, n_ctx=64, threads=2)
        arch = getattr(m, "arch", None) or getattr(m, "_impl", None)
        return np.concatenate([m.forward(ids), m.forward([ids[0]]), m.forward([ids[1]])]), arch.ws.avx2
    monkeypatch.setenv("GLMCPU_SIMD", "off")
    off, used_off = run()
    monkeypatch.delenv("GLMCPU_SIMD")
    on, used_on = run()
    assert (used_off, used_on) == (False, True)
    np.testing.assert_array_equal(on.view(np.uint32), off.view(np.uint32))


_NOJIT_CHILD = """
import json, sys
import numpy as np
sys.path.insert(0, {here!r})
import test_kquant_avx2 as T
from glmcpu import kernels as K
res = {{"jit": bool(K.JIT)}}
for name, kind in T.KINDS.items():
    w = T._weights(kind, 5, 512, "quantized")
    for n_tok in (1, 3):
        want, act = T._portable(kind, w, T._acts(n_tok, 512, "normal"))
        got, got1 = T._avx2(kind, w, act, n_tok, 512)
        res[f"{{name}} T={{n_tok}}"] = bool(np.array_equal(got.view(np.uint32), want.view(np.uint32)) and
                                       (got1 is None or np.array_equal(got1.view(np.uint32), want[0].view(np.uint32))))
print(json.dumps(res))
"""


def test_jit_off_avx2_kernels_equal_the_portable_ones():
    """With NUMBA_DISABLE_JIT=1 the AVX2 kernels run in Python on the intrinsics' numpy twins (any CPU)
    and still equal the portable kernels bit for bit."""
    import json
    import os
    import subprocess
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    r = subprocess.run([sys.executable, "-c", _NOJIT_CHILD.format(here=here)], capture_output=True, text=True,
                       timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res.pop("jit") is False
    assert res and all(res.values()), res


# ---------------------------------------------------------------- q5_0

@njit(cache=True)
def _run_q5(w, off, x, xoff):
    v = KA.q5_0_vals(w, off)
    return KA.dot32(v, x, xoff)


@njit(cache=True)
def _run_q5x8(out, w, off, x, xoff, stride, xs, xd, d):
    """q5_0_term8 on a non-zero start (q5_0_term8 of the first block) and a dot32x8 of the block at off."""
    v = KA.q5_0_vals(w, off)
    acc = KA.q5_0_term8(KA.fzero8(), KA.dot32x8(v, x, 0, 1), xs, 0, xd, 0, d)
    KA.fstore8(out, 0, KA.q5_0_term8(acc, KA.dot32x8(v, x, xoff, stride), xs, 1, xd, 2, d))


def _run_q5x8_py(out, w, off, x, xoff, stride, xs, xd, d):
    v = KA.q5_0_vals_py(w, off)
    acc = KA.q5_0_term8_py(KA.fzero8_py(), KA.dot32x8_py(v, x, 0, 1), xs, 0, xd, 0, d)
    KA.fstore8_py(out, 0, KA.q5_0_term8_py(acc, KA.dot32x8_py(v, x, xoff, stride), xs, 1, xd, 2, d))


@njit(cache=True)
def _run_q5b8(out, w, off, x, xoff, xs, xd, boff):
    KA.fstore8(out, 0, KA.q5_0_blocks8(w, off, x, xoff, xs, xd, boff))


@njit(cache=True)
def _run_q5rows(s, soff, w, woff, x, xoff, xs, xd, dd, ddoff):
    a = KA.dot4x4(KA.zero8(), w, woff, x, xoff)
    a = KA.dot4x4(a, w, woff + 128, x, xoff + 16)
    KA.q5_rows_term(s, soff, a, xs, xd, dd, ddoff)


def _run_q5rows_py(s, soff, w, woff, x, xoff, xs, xd, dd, ddoff):
    a = KA.dot4x4_py(A.zero8_py(), w, woff, x, xoff)
    a = KA.dot4x4_py(a, w, woff + 128, x, xoff + 16)
    KA.q5_rows_term_py(s, soff, a, xs, xd, dd, ddoff)


@needs_avx2
def test_q5_0_intrinsics_equal_their_twins():
    for trial in range(100):
        w, x = _bytes(60), _bytes(400, -128, 128, np.int8)
        off, xoff = int(RNG.integers(0, 38)), int(RNG.integers(0, 48))
        assert _run_q5(w, off, x, xoff) == KA.dot32_py(KA.q5_0_vals_py(w, off), x, xoff)
        stride = int(RNG.integers(1, 44))
        xs, xd = _bytes(10, -5000, 5000, np.int32), RNG.standard_normal(10).astype(np.float32)
        d = np.float32(RNG.choice([0.0, 1e-3, 7.5, 6e4]))
        got, want = np.zeros(8, np.float32), np.zeros(8, np.float32)
        _run_q5x8(got, w, off, x, xoff, stride, xs, xd, d)
        _run_q5x8_py(want, w, off, x, xoff, stride, xs, xd, d)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
        # eight blocks of one row: random bytes, so some f16 scales are inf or NaN
        w8 = _bytes(8 * 22 + 40)
        boff = int(RNG.integers(0, 3))
        got, want = np.zeros(8, np.float32), np.zeros(8, np.float32)
        _run_q5b8(got, w8, off, x, xoff, xs, xd, boff)
        want[:] = KA.q5_0_blocks8_py(w8, off, x, xoff, xs, xd, boff)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
        # the tiled matmul's steps: 8 rows x 32 values (0..31) interleaved, one token
        wt = _bytes(300, 0, 32)
        dd = RNG.standard_normal(12).astype(np.float32)
        s0 = RNG.standard_normal(12).astype(np.float32)
        woff, soff = int(RNG.integers(0, 40)), int(RNG.integers(0, 4))
        xsv, xdv = int(RNG.integers(-4064, 4065)), np.float32(RNG.standard_normal() * RNG.choice([1e-30, 1, 1e30]))
        got, want = s0.copy(), s0.copy()
        _run_q5rows(got, soff, wt, woff, x, xoff, xsv, xdv, dd, 2)
        _run_q5rows_py(want, soff, wt, woff, x, xoff, xsv, xdv, dd, 2)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
        rows = wt[woff: woff + 256].reshape(8, 8, 4).transpose(1, 0, 2).reshape(8, 32).astype(np.int64)
        isum = rows @ x[xoff: xoff + 32].astype(np.int64) - 16 * xsv
        with np.errstate(over="ignore", invalid="ignore"):
            ref = s0[soff: soff + 8] + isum.astype(np.float32) * (xdv * dd[2:10])
        np.testing.assert_array_equal(want[soff: soff + 8].view(np.uint32), ref.view(np.uint32))
    # the values themselves: ggml's q5_0 layout, from glmcpu.quants' reference quantizer
    from glmcpu import quants as Q
    blk = Q.quantize_q5_0(RNG.standard_normal((1, 32)).astype(np.float32))
    want = np.rint(Q.dequantize_q5_0(blk, 32)[0] / np.float32(blk[0, :2].copy().view(np.float16)[0])) + 16
    np.testing.assert_array_equal(KA.q5_0_vals_py(blk, 0), want.astype(np.uint8))


@needs_avx2
@pytest.mark.parametrize("n,k", [(37, 512), (1, 32), (21, 13696 // 4)])
@pytest.mark.parametrize("T", [1, 2, 7, 8, 19, 64, 300])
@pytest.mark.parametrize("xcase", ["normal", "huge", "tiny", "nan"])
def test_q5_0_avx2_equals_the_portable_kernel(n, k, T, xcase):
    """matmul_q5_0_avx2, matmul_q5_0_tiled_avx2 (any T) and for T = 1 matvec_q5_0_avx2 (eight blocks
    a step) equal kernels.kquant.matmul_q5_0 bit for bit (a NaN activation block included)."""
    from glmcpu import quants as Q
    w = Q.quantize_q5_0(RNG.standard_normal((n, k)).astype(np.float32) * np.float32(RNG.random()))
    w[0, :22] = 0                                              # an all-zero block
    x = RNG.standard_normal((T, k)).astype(np.float32)
    x *= {"normal": 1, "huge": 1e30, "tiny": 1e-30, "nan": 1}[xcase]
    if xcase == "nan":
        x[-1, 5] = np.nan
    xq, xd, xs = np.zeros((T, k), np.int8), np.zeros((T, k // 32), np.float32), np.zeros((T, k // 32), np.int32)
    K.quantize_act(xq, xd, xs, x)
    want, got = np.full((T, n), 7.0, np.float32), np.full((T, n), 7.0, np.float32)
    K.matmul_q5_0(want, np.zeros((NR, k), np.int32), np.zeros((NR, k // 32), np.float32), w, xq, xd)
    xdt, xst = np.zeros((k // 32, T + 3), np.float32), np.zeros((k // 32, T + 3), np.int32)
    KA.transpose_act(xdt, xst, xd, xs)
    K.matmul_q5_0_avx2(got, w, xq, xd, xs, xdt, xst, np.zeros((NR, 8), np.float32))
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    if T == 1:
        one = np.full(n, 7.0, np.float32)
        K.matvec_q5_0_avx2(one, w, xq, xd, xs, np.zeros((NR, 8), np.float32))
        np.testing.assert_array_equal(one.view(np.uint32), want[0].view(np.uint32))
    tile = (np.zeros((NR, KA.RT5 * 32), np.uint8), np.zeros((NR, KA.RT5 * 32), np.uint8),
            np.zeros((NR, KA.RT5), np.float32), np.zeros((NR, KA.TB5 * KA.RT5), np.float32))
    tiled = np.full((T, n), 7.0, np.float32)
    KA.matmul_q5_0_tiled_avx2(tiled, *tile, w, xq, xd, xs)
    np.testing.assert_array_equal(tiled.view(np.uint32), want.view(np.uint32))
