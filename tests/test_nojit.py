"""NUMBA_DISABLE_JIT=1 (numba's switch for stepping through kernels in plain Python) runs the whole
forward and gives the JIT's results.

One subprocess with the JIT off loads and runs models and every kernel; this process (JIT on)
checks what it wrote: the f32 golden models against the official logits, a q4_0 model against the
same file run with the JIT, and each kernel against its JIT twin and, for the quantized ones, the
numpy reference (glmcpu.quants.matmul_ref) bit for bit, the AVX2 kernels included (their
intrinsics' numpy twins run in Python whatever this CPU has)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import glmcpu
from glmcpu import kernels as K
from glmcpu import quants as Q
from helpers import golden, max_rel

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN_F32 = ["glm4-tiny", "chatglm1-tiny"]   # GLM-4 (swiglu, rmsnorm, rope) and v1 (gelu, layernorm, 2-D rope)
Q4_IDS = 8      # q4_0 run: this many prompt tokens (matmul kernels), then two decode steps (matvec)

# Kernels whose JIT and Python runs must agree bit for bit: integer arithmetic and float32 done
# in the order written (no fastmath). The others (fastmath reassoc: vectorized sums in another
# order; exp / tanh from LLVM's libm instead of numpy's) agree to float32 rounding.
EXACT = {"f16_all", "embed_f32", "embed_f16", "rope", "rope_2d", "quantize_act_xq", "quantize_act_xd",
         "quantize_act_xs", "pair_act"}
EXACT_PREFIX = ("q4_0", "q4_1", "q8_0")


def _tile(kind, q, d, m, k, gs, R=128):
    """The kernels' row-tiled layout of a quantized matrix (q, d, m as matmul_ref takes them)."""
    per = 32 if kind == "q8_0" else 16
    qt = Q.tile(q, R, per).reshape(-1, k // 32, per, R)
    dt = Q.tile(d.view(np.uint16), R, 1).reshape(-1, k // gs, R)
    mt = Q.tile(m.view(np.uint16), R, 1).reshape(-1, k // gs, R) if m is not None else np.zeros((0, 0, 0), np.uint16)
    return qt, dt, mt


def quant_case(kind, extreme=False):
    """(n, k, gs, x, (q, d, m) untiled, (qs, d, m) tiled): a small quantized matrix (two row tiles,
    the second ragged) and activations. extreme: every nibble 15 (q8_0: 127) and activations of one
    sign per token, all quantized to +-127, so a 4-bit block's raw sum of q x is 32 * 15 * 127 =
    60960: beyond int16, where the AVX2 lanes wrap."""
    n, k, gs, T = 130, 128, 64, 5
    rng = np.random.default_rng(1)
    if extreme:
        half = lambda v: np.full((n, k // gs), v, np.float16)
        d, m = half(0.5), (half(-4.0) if kind == "q4_1" else None)
        q = np.full((n, k), 127, np.int8) if kind == "q8_0" else np.full((n, k // 2), 0xFF, np.uint8)
        x = np.repeat(np.array([1, -1, 1, -1, -1], np.float32)[:, None], k, 1)
    else:
        w = rng.standard_normal((n, k)).astype(np.float32)
        x = rng.standard_normal((T, k)).astype(np.float32)
        f = {"q8_0": Q.quantize_q8_0, "q4_0": Q.quantize_q4_0, "q4_1": Q.quantize_q4_1}[kind](w, gs)
        q, d, m = f[0], f[1], (f[2] if kind == "q4_1" else None)
    return n, k, gs, x, (q, d, m), _tile(kind, q, d, m, k, gs)


def kernel_outputs():
    """Every kernel on fixed small inputs, run in this process's mode (JIT on or off): name -> array."""
    rng = np.random.default_rng(0)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)
    out = {}
    bits = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    o = np.zeros((256, 256), np.float32)
    K.dequant_rows_f16(o, bits)
    out["f16_all"] = o
    w32, x1, x4 = f32(40, 64), f32(64), f32(4, 64)
    w16 = w32.astype(np.float16).view(np.uint16)
    for name, w in (("f32", w32), ("f16", w16)):
        o1, o4 = np.zeros(40, np.float32), np.zeros((4, 40), np.float32)
        if name == "f32":
            K.matvec_f32(o1, x1, w)
            K.matmul_f32(o4, x4, w)
        else:
            K.matvec_f16(o1, x1, w)
            K.matmul_f16(o4, np.zeros((3, 64), np.float32), x4, w)
        out["matvec_" + name], out["matmul_" + name] = o1, o4
        e = np.zeros((3, 64), np.float32)
        (K.embed_f32 if name == "f32" else K.embed_f16)(e, w, np.array([3, 0, 39]))
        out["embed_" + name] = e
    x, w, b = f32(3, 64), f32(64), f32(64)
    o = np.zeros_like(x)
    K.rmsnorm(o, x, w, np.float32(1e-5))
    out["rmsnorm"] = o.copy()
    K.layernorm(o, x, w, b, np.float32(1e-5))
    out["layernorm"] = o.copy()
    h = 4 * f32(3, 80)
    o = np.zeros((3, 40), np.float32)
    K.swiglu(o, h)
    out["swiglu"] = o
    K.gelu_tanh(h)
    out["gelu"] = h
    ang = np.outer(np.arange(16), 10000.0 ** (-np.arange(4) / 4))
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    q = f32(3, 6, 16)
    K.rope_inplace(q, cos, sin, np.arange(5, 8), 4)
    out["rope"] = q.copy()
    K.rope_2d_inplace(q, cos, sin, np.array([0, 1, 2]), np.array([0, 0, 1]), 6)
    out["rope_2d"] = q
    qkv, kc, vc = f32(3, 6 + 4, 16), f32(2, 16, 16), f32(2, 16, 16)
    o = np.zeros((3, 6, 16), np.float32)
    K.attention(o, np.zeros((2, 4, 128), np.float32), qkv, kc[None], vc[None], np.zeros(3, np.int64), np.arange(4, 7),
                np.float32(0.25), 0)
    out["attention"] = o
    out["has_nonfinite"] = np.array([K.has_nonfinite(a) for a in (x, np.array([1, np.inf], np.float32),
                                                                     np.array([[np.nan]], np.float32))])
    nr, TB = 3, K.quant.TB
    for kind in ("q4_0", "q4_1", "q8_0"):
        for extreme in (False, True):
            n, k, gs, xa, _, (qt, dt, mt) = quant_case(kind, extreme)
            R = qt.shape[-1]
            tag = f"{kind}{'_extreme' if extreme else ''}"
            T = xa.shape[0]
            xq, xd, xs = np.zeros((T, k), np.int8), np.zeros((T, k // 32), np.float32), np.zeros((T, k // 32), np.int32)
            K.quantize_act(xq, xd, xs, xa)
            if kind == "q4_0" and not extreme:
                out["quantize_act_xq"], out["quantize_act_xd"], out["quantize_act_xs"] = xq, xd, xs
            o1, oT = np.full(n, np.nan, np.float32), np.full((T, n), np.nan, np.float32)
            if kind == "q8_0":
                K.matvec_q8_0(o1, np.zeros((nr, R), np.float32), np.zeros((nr, R), np.int32), xq[:1], xd[:1], qt, dt, n)
                K.matmul_q8_0(oT, np.zeros((nr, TB, R), np.float32), np.zeros((nr, TB, R), np.int32),
                              np.zeros((nr, 32, R), np.int16), xq, xd, qt, dt, n)
            else:
                K.matvec_q4(o1, np.zeros((nr, R), np.float32), np.zeros((nr, R), np.int16),
                            xq[:1], xd[:1], xs[:1], qt, dt, mt, n)
                K.matmul_q4(oT, np.zeros((nr, TB, R), np.float32), np.zeros((nr, TB, R), np.int16),
                            np.zeros((nr, 32, R), np.int16), xq, xd, xs, qt, dt, mt, n)
                xp = np.zeros((T, k // 2), np.int16)
                K.pair_act(xp, xq)
                if kind == "q4_0" and not extreme:
                    out["pair_act"] = xp
                a1, aT = np.full(n, np.nan, np.float32), np.full((T, n), np.nan, np.float32)
                K.matvec_q4_avx2(a1, np.zeros((nr, R), np.float32), np.zeros((nr, R), np.int16),
                                 xp[:1], xd[:1], xs[:1], qt, dt, mt, n)
                K.matmul_q4_avx2(aT, np.zeros((nr, TB, R), np.float32), np.zeros((nr, TB, R), np.int16),
                                 np.zeros((nr, 32 * R), np.uint8), xp, xd, xs, qt, dt, mt, n)
                out[tag + "_matvec_avx2"], out[tag + "_matmul_avx2"] = a1, aT
            out[tag + "_matvec"], out[tag + "_matmul"] = o1, oT
            rows = np.zeros((3, k), np.float32)
            if kind == "q8_0":
                K.embed_q8_0(rows, qt, dt, np.array([0, 129, 64]))
            else:
                K.embed_q4(rows, qt, dt, mt, np.array([0, 129, 64]))
            out[tag + "_embed"] = rows
    return out


def q4_logits(path):
    """glm4-tiny in q4_0: a prefill of Q4_IDS prompt tokens (matmul kernels), two decode steps (matvec)."""
    e = np.load(os.path.join(golden("glm4-tiny"), "expected.npz"))
    m = glmcpu.load(path, n_ctx=64, threads=1, kv="f32")
    ids = [int(t) for t in e["prompt_ids"][:Q4_IDS]]
    arch = getattr(m, "arch", None) or getattr(m, "_impl", None)
    return np.concatenate([m.forward(ids), m.forward([ids[0]]), m.forward([ids[1]])]), bool(arch.ws.avx2)


def intrinsics():
    """Names of the numba intrinsics reachable from the kernel modules (none with the JIT off)."""
    import importlib
    import pkgutil
    from numba.core.extending import _Intrinsic
    names = []
    for mod in pkgutil.iter_modules(K.__path__):
        m = importlib.import_module(f"{K.__name__}.{mod.name}")
        names += [f"{mod.name}.{n}" for n, v in vars(m).items() if isinstance(v, _Intrinsic)]
    return sorted(names)


def forward_logits(paths):
    """{name: logits} of the runs the tests compare, and which kernels this process chose."""
    out, info = {}, {"jit": bool(K.JIT), "avx2_available": bool(K.avx2.available()), "intrinsics": intrinsics()}
    for case in GOLDEN_F32:
        e = np.load(os.path.join(golden(case), "expected.npz"))
        m = glmcpu.load(paths[case], n_ctx=64, threads=1, kv="f32")
        out[case] = np.concatenate([m.forward(e["prompt_ids"])] + [m.forward([int(t)]) for t in e["decode_ids"]])
    out["q4_0"], info["model_avx2"] = q4_logits(paths["q4_0"])
    return out, info


_CHILD = """
import json, sys
import numpy as np
sys.path.insert(0, {here!r})
from test_nojit import forward_logits, kernel_outputs
logits, info = forward_logits(json.loads({paths!r}))
np.savez({out!r} + "/logits.npz", **logits)
np.savez({out!r} + "/kernels.npz", **kernel_outputs())
print(json.dumps(info))
"""


@pytest.fixture(scope="module")
def nojit_run(converted, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("nojit"))
    paths = {case: converted(case, "f32") for case in GOLDEN_F32}
    paths["q4_0"] = converted("glm4-tiny", "q4_0")
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    code = _CHILD.format(here=HERE, paths=json.dumps(paths), out=out)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    return paths, info, np.load(out + "/logits.npz"), np.load(out + "/kernels.npz")


def test_jit_off_takes_the_portable_kernels(nojit_run):
    """The AVX2 kernels are not chosen, and no intrinsic is left for Python to trip over (with the
    JIT on they are all there: the test sees them)."""
    _, info, _, _ = nojit_run
    assert info == {"jit": False, "avx2_available": False, "model_avx2": False, "intrinsics": []}
    assert len(intrinsics()) >= 9 and "f16.f16_to_f32" in intrinsics()


@pytest.mark.parametrize("case", GOLDEN_F32)
def test_jit_off_forward_matches_official_logits(nojit_run, case):
    _, _, logits, _ = nojit_run
    e = np.load(os.path.join(golden(case), "expected.npz"))
    want = np.concatenate([e["prefill_logits"], e["decode_logits"]])
    assert max_rel(logits[case], want) <= 1e-5    # the f32 tolerance of test_golden


def test_jit_off_q4_0_equals_jit_run(nojit_run):
    """The 4-bit kernels themselves agree bit for bit (test below). What remains is float32
    rounding in the fastmath kernels (norms, attention, swiglu: sums reassociated by the JIT,
    libm vs numpy exp), ~1e-7 of the logits (measured 2e-7), which can at most flip an int8
    activation rounding here and there: 1e-5, the f32 golden tolerance, bounds both."""
    paths, _, logits, _ = nojit_run
    got, jit = logits["q4_0"], q4_logits(paths["q4_0"])[0]
    assert got.shape == (Q4_IDS + 2, 320)
    assert max_rel(got, jit) <= 1e-5
    assert (got.argmax(-1) == jit.argmax(-1)).all()


def test_jit_off_kernels_equal_jit_kernels(nojit_run):
    _, _, _, nojit = nojit_run
    jit = kernel_outputs()
    assert set(nojit.files) == set(jit)
    for name, want in jit.items():
        got = nojit[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        if name in EXACT or name.startswith(EXACT_PREFIX) or got.dtype.kind in "bi":
            # bits, so that NaN payloads and signed zeros count too
            np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8), err_msg=name)
        else:
            assert max_rel(got, want) <= 1e-6, name


@pytest.mark.parametrize("kind", ["q4_0", "q4_1", "q8_0"])
@pytest.mark.parametrize("extreme", [False, True])
def test_jit_off_quant_kernels_equal_reference(nojit_run, kind, extreme):
    """With the JIT off, the portable kernels and the AVX2 kernels (numpy twins of vpmaddubsw and
    the shuffles) equal glmcpu.quants.matmul_ref bit for bit, also where the int16 lanes wrap."""
    _, _, _, nojit = nojit_run
    n, k, gs, x, (q, d, m), _ = quant_case(kind, extreme)
    ref = Q.matmul_ref(kind, q, d, m, gs, x)
    tag = f"{kind}{'_extreme' if extreme else ''}"
    np.testing.assert_array_equal(nojit[tag + "_matmul"], ref)
    np.testing.assert_array_equal(nojit[tag + "_matvec"], ref[0])
    if kind != "q8_0":
        np.testing.assert_array_equal(nojit[tag + "_matmul_avx2"], ref)
        np.testing.assert_array_equal(nojit[tag + "_matvec_avx2"], ref[0])
