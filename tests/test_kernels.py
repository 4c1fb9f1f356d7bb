"""Each numba kernel equals a plain numpy reference and compiles to exactly one signature."""
import numpy as np
import pytest

from glmcpu import kernels as K

RNG = np.random.default_rng(0)


def _ro(a):
    a = np.ascontiguousarray(a)
    a.setflags(write=False)  # weights are read-only views of the mmap at run time
    return a


def _f16(shape):
    w = RNG.standard_normal(shape).astype(np.float16)
    return _ro(w.view(np.uint16)), w.astype(np.float64)


@pytest.mark.parametrize("n_out,n_in", [(1, 1), (7, 33), (130, 64), (257, 96)])
def test_matvec_and_matmul(n_out, n_in):
    w32 = _ro(RNG.standard_normal((n_out, n_in)).astype(np.float32))
    w16, w16_ref = _f16((n_out, n_in))
    row_buf = np.zeros((8, 128), np.float32)
    for T in (1, 2, 7, 64):
        x = RNG.standard_normal((T, n_in)).astype(np.float32)
        out = np.zeros((T, n_out), np.float32)
        for w, ref_w in ((w32, w32.astype(np.float64)), (w16, w16_ref)):
            ref = x.astype(np.float64) @ ref_w.T
            if w.dtype == np.float32:
                K.matmul_f32(out, x, w)
            else:
                K.matmul_f16(out, row_buf, x, w)
            np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
            if T == 1:
                o1 = np.zeros(n_out, np.float32)
                (K.matvec_f32 if w.dtype == np.float32 else K.matvec_f16)(o1, x[0], w)
                np.testing.assert_allclose(o1, ref[0], rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_f16_widening_is_exact_including_specials():
    bits = _ro(np.arange(65536, dtype=np.uint16).reshape(256, 256))
    out = np.zeros((256, 256), np.float32)
    K.dequant_rows_f16(out, bits)
    ref = bits.view(np.float16).astype(np.float32)
    np.testing.assert_array_equal(out, ref)  # NaNs compare equal in assert_array_equal


def test_embed():
    w32 = _ro(RNG.standard_normal((50, 12)).astype(np.float32))
    w16, ref16 = _f16((50, 12))
    ids = np.array([0, 49, 7, 7], np.int64)
    out = np.zeros((4, 12), np.float32)
    K.embed_f32(out, w32, ids)
    np.testing.assert_array_equal(out, w32[ids])
    K.embed_f16(out, w16, ids)
    np.testing.assert_array_equal(out, ref16[ids].astype(np.float32))


def test_rmsnorm():
    x = RNG.standard_normal((5, 64)).astype(np.float32)
    w = _ro(RNG.standard_normal(64).astype(np.float32))
    out = np.zeros_like(x)
    K.rmsnorm(out, x, w, np.float32(1e-5))
    xd = x.astype(np.float64)
    ref = w * xd / np.sqrt((xd ** 2).mean(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_rope_rotates_first_half_in_interleaved_pairs():
    T, H, D, pos0 = 3, 5, 16, 4
    x = RNG.standard_normal((T, H, D)).astype(np.float32)
    theta = 10000.0 ** (-np.arange(0, D // 2, 2) / (D // 2))
    ang = np.outer(np.arange(16), theta)
    cos, sin = _ro(np.cos(ang).astype(np.float32)), _ro(np.sin(ang).astype(np.float32))
    ref = x.astype(np.float64).copy()
    for t in range(T):
        for h in range(3):  # only the first 3 heads are rotated
            for i in range(D // 4):
                a = ang[pos0 + t, i]
                x0, x1 = x[t, h, 2 * i], x[t, h, 2 * i + 1]
                ref[t, h, 2 * i] = x0 * np.cos(a) - x1 * np.sin(a)
                ref[t, h, 2 * i + 1] = x1 * np.cos(a) + x0 * np.sin(a)
    K.rope_inplace(x, cos, sin, pos0 + np.arange(x.shape[0]), 3)
    np.testing.assert_allclose(x, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("T,pos0,n_bidir", [(1, 0, 0), (1, 40, 0), (7, 0, 0), (6, 10, 0), (7, 0, 5), (6, 3, 8)])
def test_attention_matches_causal_softmax(T, pos0, n_bidir):
    H, G, D, n_ctx = 6, 2, 16, 64
    q = RNG.standard_normal((T, H + 2 * G, D)).astype(np.float32)
    kc = RNG.standard_normal((G, n_ctx, D)).astype(np.float32)
    vc = RNG.standard_normal((G, n_ctx, D)).astype(np.float32)
    out = np.zeros((T, H, D), np.float32)
    scale = np.float32(1 / np.sqrt(D))
    K.attention(out, np.zeros((3, H // G + 1, max(n_ctx + 1, 8 * D)), np.float32), q, kc[None], vc[None],
                np.zeros(T, np.int64), pos0 + np.arange(T), scale, n_bidir)
    for t in range(T):
        for h in range(H):
            g = h // (H // G)
            n = max(pos0 + t + 1, n_bidir)
            s = kc[g, :n].astype(np.float64) @ q[t, h] * scale
            p = np.exp(s - s.max())
            p /= p.sum()
            np.testing.assert_allclose(out[t, h], p @ vc[g, :n], rtol=1e-5, atol=1e-5)


def test_swiglu():
    x = RNG.standard_normal((4, 20)).astype(np.float32)
    out = np.zeros((4, 10), np.float32)
    K.swiglu(out, x)
    a, b = x[:, :10].astype(np.float64), x[:, 10:]
    np.testing.assert_allclose(out, a / (1 + np.exp(-a)) * b, rtol=1e-5, atol=1e-6)


def test_each_kernel_compiled_once_by_a_model_run(converted):
    """Running f32 and f16 models (prefill + decode) compiles each kernel to a single signature
    (fresh process, so other tests' calls do not count)."""
    import json
    import subprocess
    import sys
    code = (
        "import json, numpy as np, glmcpu\n"
        "from glmcpu import kernels as K\n"
        f"for p in {[converted('glm4-tiny', t) for t in ('f32', 'f16', 'q8_0', 'q4_0', 'q4_1')]!r}:\n"
        "    m = glmcpu.load(p)\n"
        "    m.forward(np.arange(20)); m.forward([3]); m.forward(np.arange(4), all_logits=False)\n"
        "print(json.dumps({n: len(getattr(K, n).signatures) for n in K.__all__ if hasattr(getattr(K, n), 'signatures')}))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    counts = json.loads(r.stdout.strip().splitlines()[-1])
    used = ["first_nonfinite", "matvec_f32", "matmul_f32", "matvec_f16", "matmul_f16", "embed_f32", "embed_f16",
            "rmsnorm", "rope_inplace", "attention", "swiglu", "quantize_act",
            "embed_q4", "embed_q8_0"]
    used += (["pair_act", "matvec_q4_avx2", "matmul_q4_avx2", "matmul_few_q4_avx2", "matvec_q8_0_avx2",
              "matmul_q8_0_avx2"]
             if K.avx2.available() else ["matvec_q4", "matmul_q4", "matvec_q8_0", "matmul_q8_0"])
    for name in used:
        assert counts[name] == 1, (name, counts)
    assert all(c <= 1 for c in counts.values()), counts
