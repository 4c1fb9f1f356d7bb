"""The activation, norm and softmax kernels at the extremes of float32 (huge and tiny inputs, large
logits) against float64 numpy references; NaN and infinity propagate instead of being hidden; the
guard that finds them; fastmath limited to the safe flags."""
import json
import os
import shutil

import numpy as np
import pytest

import glmcpu
from glmcpu import kernels as K
from glmcpu.convert import convert
from glmcpu.errors import GlmcpuError
from helpers import golden, max_rel, read_raw_tensors, reference_logits, write_safetensors

F32_MAX = float(np.finfo(np.float32).max)


def _close(got, ref, rtol, floor=0.0):
    """|got - ref| <= rtol |ref| + floor elementwise (ref float64); where ref is beyond the float32
    range, got is the infinity of its sign, and everywhere else got is finite."""
    got64 = got.astype(np.float64)
    over = np.abs(ref) > F32_MAX
    assert (got64[over] == np.sign(ref[over]) * np.inf).all(), (got[over], ref[over])
    assert np.isfinite(got64[~over]).all(), got[~over & ~np.isfinite(got64)]
    err = np.abs(got64[~over] - ref[~over])
    tol = np.broadcast_to(rtol * np.abs(ref) + floor, ref.shape)[~over]
    bad = err > tol
    assert not bad.any(), f"got {got[~over][bad][:5]}, want {ref[~over][bad][:5]}"


def _sigmoid64(t):
    """float64 sigmoid through logaddexp, accurate for any t."""
    return np.exp(-np.logaddexp(0.0, -t))


# ---------------------------------------------------------------- activations

EXTREMES = np.array([-F32_MAX, -1e30, -1e4, -200, -104, -100, -95, -89, -88.8, -87, -30, -10, -1, -1e-30, -1e-45,
                     0.0, 1e-45, 1e-30, 1, 10, 30, 87, 88.8, 89, 100, 1e4, 1e19, 1e30, F32_MAX], np.float32)


def test_swiglu_is_exact_to_rounding_at_the_extremes():
    """silu(a) * b for a from -FLT_MAX to FLT_MAX: a / (1 + exp(-a)) overflows exp below -88.7 and
    returned -0 where the value is, e.g., -89 e^-89 = -3.9e-37; now every result is within float32
    rounding of the float64 value, or within 1e-40 of it (deep denormals, where float32 has only
    a few bits left)."""
    a = EXTREMES
    for b in (np.ones_like(a), np.full_like(a, -3.5), np.float32(1e-20) * np.ones_like(a)):
        x = np.concatenate([a, b])[None, :]
        out = np.full((1, a.size), np.nan, np.float32)
        K.swiglu(out, x)
        a64 = a.astype(np.float64)
        ref = a64 * _sigmoid64(a64) * b.astype(np.float64)
        _close(out[0], ref, 2e-6, floor=1e-40)


def test_gelu_tanh_is_exact_to_rounding_at_the_extremes():
    """0.5 a (1 + tanh z) cancels to 0 for a below about -9 (1 + tanh z is 0 in float32) and a^2
    overflows for |a| > 1.8e19; computed as a * sigmoid(2 z) it keeps its relative accuracy.
    Tolerance: exp of an argument 2z known to float32 rounding carries |2z| ulps of relative error."""
    a = np.concatenate([EXTREMES, np.linspace(-12, 12, 97, dtype=np.float32)])
    x = a[None, :].copy()
    K.gelu_tanh(x)
    a64 = a.astype(np.float64)
    z2 = 2 * np.sqrt(2 / np.pi) * a64 * (1 + 0.044715 * a64 * a64)
    ref = a64 * _sigmoid64(z2)
    rtol = 2e-6 + 1.2e-7 * np.minimum(np.abs(z2), 200)
    _close(x[0], ref, rtol, floor=1e-40)
    moderate = np.abs(a64) < 5                      # and it is ChatGLM-6B's gelu_impl
    tanh_form = 0.5 * a64 * (1 + np.tanh(np.sqrt(2 / np.pi) * a64 * (1 + 0.044715 * a64 ** 2)))
    _close(x[0][moderate], tanh_form[moderate], 2e-6, floor=1e-12)


# ---------------------------------------------------------------- norms

def _rows(n, rng):
    base = rng.standard_normal(n)
    return {"huge": 1e30 * base, "max": np.where(np.arange(n) == 3, F32_MAX, base),
            "big": 2e19 * base, "tiny": 1e-30 * base, "denormal": 1e-44 * np.sign(base),
            "zeros": 0 * base, "constant": np.full(n, 7.25), "offset": 1e4 + 1e-3 * base, "normal": base}


@pytest.mark.parametrize("n", [64, 4096])
@pytest.mark.parametrize("eps", [1e-5, 1.5625e-07])
def test_rmsnorm_at_the_extremes(n, eps):
    """The float32 sum of squares overflowed above |x| ~ 1e19 / sqrt(n) (inf -> the row became 0)."""
    rng = np.random.default_rng(0)
    rows = _rows(n, rng)
    x = np.stack([r.astype(np.float32) for r in rows.values()])
    w = (1 + 0.5 * rng.standard_normal(n)).astype(np.float32)
    out = np.full_like(x, np.nan)
    K.rmsnorm(out, x, w, np.float32(eps))
    x64, e64 = x.astype(np.float64), np.float64(np.float32(eps))
    ref = w * (x64 / np.sqrt((x64 * x64).mean(-1, keepdims=True) + e64))
    for i, name in enumerate(rows):
        _close(out[i], ref[i], 1e-6, floor=1e-6 * np.abs(ref[i]).max() + 1e-44)


@pytest.mark.parametrize("n", [64, 4096])
def test_layernorm_at_the_extremes(n):
    """(x - mean)^2 overflowed in float32 above ~1e19; large offsets with a small spread, constant
    rows and zero rows come out as the float64 LayerNorm says."""
    rng = np.random.default_rng(1)
    rows = _rows(n, rng)
    x = np.stack([r.astype(np.float32) for r in rows.values()])
    w = (1 + 0.5 * rng.standard_normal(n)).astype(np.float32)
    b = (0.1 * rng.standard_normal(n)).astype(np.float32)
    out = np.full_like(x, np.nan)
    K.layernorm(out, x, w, b, np.float32(1e-5))
    x64 = x.astype(np.float64)
    mu = x64.mean(-1, keepdims=True)
    ref = (x64 - mu) / np.sqrt(((x64 - mu) ** 2).mean(-1, keepdims=True) + np.float64(np.float32(1e-5))) * w + b
    for i, name in enumerate(rows):
        _close(out[i], ref[i], 1e-6, floor=1e-6 * np.abs(ref[i]).max() + 1e-7)


# ---------------------------------------------------------------- softmax (in attention)

@pytest.mark.parametrize("magnitude,scale", [(1000, 1.0), (1000, 1 / 64), (30, 1 / 4), (3, 1.0)])
def test_attention_softmax_with_large_logits(magnitude, scale):
    """Scores up to 1.6e7 (exp would overflow at 89 without the max subtracted). q and k hold
    integers and scale is a power of two, so the float32 scores are exact and the float64
    softmax is the exact reference for what the kernel does with them."""
    rng = np.random.default_rng(2)
    T, H, G, D, n_ctx, pos0 = 4, 4, 2, 16, 32, 20
    q = rng.integers(-magnitude, magnitude + 1, (T, H + 2 * G, D)).astype(np.float32)
    kc = rng.integers(-magnitude, magnitude + 1, (G, n_ctx, D)).astype(np.float32)
    vc = rng.standard_normal((G, n_ctx, D)).astype(np.float32)
    out = np.full((T, H, D), np.nan, np.float32)
    K.attention(out, np.zeros((3, H // G + 1, max(n_ctx + 1, 8 * D)), np.float32), q, kc[None], vc[None],
                np.zeros(T, np.int64), pos0 + np.arange(T), np.float32(scale), 0)
    for t in range(T):
        for h in range(H):
            g, n = h // (H // G), pos0 + t + 1
            s = kc[g, :n].astype(np.float64) @ q[t, h].astype(np.float64) * scale
            p = np.exp(s - s.max())
            ref = p @ vc[g, :n] / p.sum()
            _close(out[t, h], ref, 1e-5, floor=1e-6 * np.abs(ref).max())


# ---------------------------------------------------------------- NaN / inf are not hidden

def test_nan_and_inf_propagate_through_the_kernels():
    """A NaN or inf input gives a non-finite output where it should (so the forward's guard can
    see it): nothing folds x * 0 to 0 or assumes finite values."""
    x = np.zeros((2, 64), np.float32)
    x[0, 5] = np.nan
    x[1, 7] = np.inf
    w = np.ones(64, np.float32)
    out = np.zeros_like(x)
    for norm in ("rmsnorm", "layernorm"):
        out[:] = 0
        if norm == "rmsnorm":
            K.rmsnorm(out, x, w, np.float32(1e-5))
        else:
            K.layernorm(out, x, w, w, np.float32(1e-5))
        assert np.isnan(out[0]).all(), norm                 # a NaN spoils its whole row
        assert np.isnan(out[1, 7]), norm                    # inf / inf
    z = np.zeros((1, 64), np.float32)                       # eps 0 and a zero row: 0 / 0, not an exception
    K.rmsnorm(out[:1], z, w, np.float32(0.0))
    assert np.isnan(out[0]).all()
    K.layernorm(out[:1], z, w, w, np.float32(0.0))
    assert np.isnan(out[0]).all()
    h = np.zeros((2, 128), np.float32)
    h[0, 3] = np.nan                                        # gate
    h[1, 64 + 9] = np.nan                                   # up, with gate 0: silu(0) * NaN
    o = np.zeros((2, 64), np.float32)
    K.swiglu(o, h)
    assert np.isnan(o[0, 3]) and np.isnan(o[1, 9]) and np.isfinite(np.delete(o.ravel(), [3, 64 + 9])).all()
    g = x.copy()
    K.gelu_tanh(g)
    assert np.isnan(g[0, 5]) and g[1, 7] == np.inf
    # weights: a NaN or inf weight met by a zero activation still gives NaN
    w16 = np.zeros((3, 64), np.float16)
    w16[1, 0], w16[2, 0] = np.nan, np.inf
    xz = np.zeros((1, 64), np.float32)
    for f16 in (False, True):
        o = np.zeros((1, 3), np.float32)
        if f16:
            K.matvec_f16(o[0], xz[0], w16.view(np.uint16))
        else:
            K.matvec_f32(o[0], xz[0], w16.astype(np.float32))
        assert o[0, 0] == 0 and np.isnan(o[0, 1:]).all(), (f16, o)
    for T in (1, 3):
        o = np.zeros((T, 3), np.float32)
        K.matmul_f16(o, np.zeros((2, 64), np.float32), np.zeros((T, 64), np.float32), w16.view(np.uint16))
        assert (o[:, 0] == 0).all() and np.isnan(o[:, 1:]).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_quantized_linear_does_not_turn_nan_into_numbers(bad):
    """int8 activation quantization used to turn a NaN into -128 (a finite, wrong activation); now
    the block's scale is non-finite, its quants 0, and every output of the matmul is NaN."""
    from glmcpu import quants as Q
    n, k, T, R = 130, 128, 3, 128
    rng = np.random.default_rng(3)
    x = rng.standard_normal((T, k)).astype(np.float32)
    x[1, 40] = bad
    xq, xd, xs = np.zeros((T, k), np.int8), np.zeros((T, k // 32), np.float32), np.zeros((T, k // 32), np.int32)
    K.quantize_act(xq, xd, xs, x)
    assert not np.isfinite(xd[1, 1]) and (xq[1, 32:64] == 0).all() and xs[1, 1] == 0
    rq, rd = Q.quantize_act(x[[0, 2]])                     # the other rows: as before, bit for bit
    np.testing.assert_array_equal(xq[[0, 2]], rq)
    np.testing.assert_array_equal(xd[[0, 2]], rd)
    q, d = Q.quantize_q4_0(rng.standard_normal((n, k)).astype(np.float32), 32)
    qt = Q.tile(q, R, 16).reshape(-1, k // 32, 16, R)
    dt = Q.tile(d.view(np.uint16), R, 1).reshape(-1, k // 32, R)
    out = np.zeros((T, n), np.float32)
    K.matmul_q4(out, np.zeros((2, K.quant.TB, R), np.float32), np.zeros((2, K.quant.TB, R), np.int16),
                np.zeros((2, 32, R), np.int16), xq, xd, xs, qt, dt, np.zeros((0, 0, 0), np.uint16), n)
    assert np.isnan(out[1]).all() and np.isfinite(out[[0, 2]]).all()
    assert K.has_nonfinite(out) and not K.has_nonfinite(out[[0, 2]])


def test_has_nonfinite():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 1000)).astype(np.float32)
    x[0, :4] = [F32_MAX, -F32_MAX, 1e-45, -0.0]             # extreme but finite
    assert K.has_nonfinite(x) is False
    assert K.has_nonfinite(x[:, ::3]) is False              # non-contiguous views too
    assert K.has_nonfinite(np.zeros(0, np.float32)) is False
    for bad in (np.nan, np.inf, -np.inf):
        for where in ((0, 0), (2, 517), (4, 999)):
            y = x.copy()
            y[where] = bad
            assert K.has_nonfinite(y) is True, (bad, where)
            assert K.first_nonfinite(y.reshape(-1)) == where[0] * 1000 + where[1]
    assert K.has_nonfinite(np.array([np.nan], np.float32)) and K.has_nonfinite(np.full((2, 2, 2), np.inf, np.float32))


def test_kernels_use_only_the_safe_fastmath_flags():
    """reassoc and contract reorder and fuse sums; nnan / ninf / nsz / arcp / afn (all in
    fastmath=True) let LLVM assume away exactly the values the tests above feed in."""
    import importlib
    import inspect
    from numba.core.registry import CPUDispatcher
    mods = [importlib.import_module("glmcpu.kernels." + m)
            for m in ("matmul", "norm", "act", "attention", "quant", "avx2", "rope", "guard")]
    kernels = [(n, f) for mod in mods for n, f in inspect.getmembers(mod) if isinstance(f, CPUDispatcher)]
    assert len(kernels) >= 25
    for name, f in kernels:
        fm = f.targetoptions.get("fastmath", False)
        assert fm in (False, None) or set(fm) <= {"reassoc", "contract"}, (name, fm)


# ---------------------------------------------------------------- a whole model

def _scaled_glm4_tiny(tmp_path, name, factor):
    """glm4-tiny in float32 with checkpoint tensor ``name`` multiplied by ``factor``, converted
    to an f32 model file: (its path, the float32 checkpoint tensors)."""
    from helpers import _f32
    src = golden("glm4-tiny")
    tensors = {n: _f32(dt, a).astype(np.float32) for n, (dt, a) in read_raw_tensors(src).items()}
    tensors[name] *= np.float32(factor)
    d = tmp_path / "scaled"
    d.mkdir()
    shutil.copy(os.path.join(src, "config.json"), d / "config.json")
    write_safetensors(str(d / "model.safetensors"), {n: ("F32", a) for n, a in tensors.items()})
    path = str(tmp_path / "scaled.glmq")
    convert(str(d), path, dtype="f32", progress=False)
    return path, tensors

def test_huge_hidden_states_model_matches_float64_reference(tmp_path):
    """glm4-tiny with its first MLP output scaled by 1e25: the residual stream holds values ~1e25,
    whose squares overflow float32 in the next layer's RMSNorm (which then returned zeros); the
    logits must still match the float64 reference forward and be finite."""
    src = golden("glm4-tiny")
    path, tensors = _scaled_glm4_tiny(tmp_path, "transformer.encoder.layers.0.mlp.dense_4h_to_h.weight", 1e25)
    e = np.load(os.path.join(src, "expected.npz"))
    ids = np.concatenate([e["prompt_ids"], e["decode_ids"][:3]])
    cfg = json.load(open(os.path.join(src, "config.json")))
    ref = reference_logits(cfg, {n: ("F32", a) for n, a in tensors.items()}, ids, "glm4")
    m = glmcpu.load(path, n_ctx=64, kv="f32")
    got = m.forward(ids)
    assert not K.has_nonfinite(got)
    assert max_rel(got, ref) <= 1e-5


def test_forward_refuses_nan_logits_instead_of_sampling_garbage(tmp_path):
    """Weights so large that the forward overflows: forward raises a clear error and the cache
    keeps only what it had before the call."""
    path, _ = _scaled_glm4_tiny(tmp_path, "transformer.encoder.layers.0.mlp.dense_h_to_4h.weight", 1e20)
    m = glmcpu.load(path, n_ctx=64)
    with pytest.raises(GlmcpuError, match="NaN or infinite logits"):
        m.forward([1, 2, 3])
    assert m.n_past == 0 and m.tokens == []
