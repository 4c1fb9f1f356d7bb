"""The numba K-quant quantizers (kernels/kquant_quantize.py, through glmcpu.kquants.quantize_fast)
against the numpy reference (glmcpu.kquants.QUANTIZE, itself ggml's bytes: test_kquants.py).
What is checked against what:
- byte identity with the reference on random rows (five distributions, row scales from 1e-6 to
  1e4, widths 256..4096, seeds) and on adversarial rows (zeros, signed zeros, outliers, constants,
  1e-30, 1e30, float32's largest values, negative-only, mixed and sparse blocks, subnormals,
  levels exactly at rounding ties, f16 overflow and f16 subnormal scales), chunk edges included;
- byte identity with ggml's C directly: the SHA-256 digests of test_kquants.GGML;
- the float16 conversion against numpy's on a sweep of float32 bit patterns;
- a whole q4_k_m conversion (q4_K, q6_K and q5_0 / q8_0 fallbacks) gives the same file as with
  the reference quantizer.
"""
import json
import os
import shutil

import numpy as np
import pytest
from numba import njit

from glmcpu import kquants as KQ
from glmcpu.errors import GlmcpuError
from glmcpu.kernels import kquant_quantize as KK
from helpers import golden, write_safetensors
from test_kquants import CASES, GGML, _case, _h

KINDS = ["q4_K", "q5_K", "q6_K", "q8_K"]
F32 = np.float32


def _same(kind, x):
    got = KQ.quantize_fast(kind, x)
    want = KQ.QUANTIZE[kind](x, threads=2)
    assert got.dtype == np.uint8 and got.shape == want.shape
    if not np.array_equal(got, want):
        blocks = np.flatnonzero((got != want).reshape(-1, KQ.BLOCK_BYTES[kind]).any(axis=1))
        raise AssertionError(f"{kind}: {blocks.size} super-blocks differ from the reference, first "
                             f"{blocks[:5]} (of {got.size // KQ.BLOCK_BYTES[kind]})")


# ---------------------------------------------------------------- random rows

def _random(dist, rows, n, seed):
    rng = np.random.default_rng(seed)
    if dist == "normal":
        x = rng.standard_normal((rows, n))
    elif dist == "uniform":
        x = rng.uniform(-1, 1, (rows, n))
    elif dist == "heavy":                   # Student t, 2 degrees of freedom: many outliers
        x = rng.standard_t(2, (rows, n))
    elif dist == "positive":                # all > 0: the minimum search clamps at 0
        x = rng.lognormal(0, 1, (rows, n))
    elif dist == "offset":                  # a common offset: large minimums
        x = rng.standard_normal((rows, n)) * 0.1 + 3
    scale = 10.0 ** rng.uniform(-6, 4, (rows, 1))
    return (x * scale).astype(F32)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dist", ["normal", "uniform", "heavy", "positive", "offset"])
def test_random_rows_equal_reference(kind, dist):
    for seed, (rows, n) in enumerate([(128, 256), (48, 768), (32, 4096), (17, 2816)]):
        _same(kind, _random(dist, rows, n, seed + 100 * len(dist)))


# ---------------------------------------------------------------- adversarial rows

def _adversarial():
    """name -> float32 [rows, n]."""
    rng = np.random.default_rng(5)
    g = rng.standard_normal((4, 1024)).astype(F32)
    c = {}
    c["zeros"] = np.zeros((3, 512), F32)
    z = np.zeros((2, 512), F32)
    z[0, ::3] = -0.0
    z[1, 1::2] = -0.0
    c["signed-zeros"] = z
    x = g * F32(1e-3)
    x[0, 5], x[1, 300], x[2, 1023], x[3, 0] = 50, -50, 1e4, -1e-1
    c["outlier"] = x
    x = np.zeros((4, 1024), F32)
    x[np.arange(4), [0, 31, 255, 700]] = [1.0, -2.5, 7e-3, 3e5]
    c["one-nonzero"] = x
    c["constant"] = np.stack([np.full(512, v, F32) for v in (0.375, -2.5, 1e-20, 6e4)])
    c["tiny"] = g * F32(1e-30)
    c["huge"] = g * F32(1e30)                           # x * x overflows in the weights
    c["float-max"] = np.sign(g) * F32(3.4e38)            # max - min overflows
    c["f16-overflow"] = g * F32(3e8)                     # d and dmin beyond f16's 65504
    c["f16-subnormal"] = g * F32(2.0 ** -22)
    c["subnormal"] = g * F32(1e-39)                      # float32 subnormal inputs
    c["min-subnormal"] = np.where(g > 0, F32(1.4e-45), F32(-1.4e-45)).astype(F32)
    c["negative"] = -np.abs(g)
    x = g.reshape(4, 32, 32).copy()
    x[:, 0::4] = np.abs(x[:, 0::4])
    x[:, 1::4] = -np.abs(x[:, 1::4])
    x[:, 3::8] = 0
    x[:, 5::16] = 1e-38
    c["mixed-blocks"] = x.reshape(4, 1024)
    c["sparse"] = np.where(rng.random((4, 1024)) < 0.05, g, F32(0))
    c["ints"] = rng.integers(-8, 8, (4, 1024)).astype(F32)
    c["half-ints"] = (rng.integers(-64, 64, (4, 1024)) + 0.5).astype(F32)
    c["ties-q4"] = (rng.integers(0, 31, (4, 1024)) * F32(0.5)).astype(F32)    # levels at x.5 of a 0..15 grid
    c["ties-q6"] = (rng.integers(-64, 63, (4, 1024)) * F32(0.5) + F32(0.25)).astype(F32)
    c["two-values"] = np.where(g > 0, F32(1), F32(-1)).astype(F32)
    c["step"] = np.repeat(np.arange(32, dtype=F32), 32).reshape(1, 1024)
    c["ramp"] = np.linspace(-1, 1, 4096, dtype=F32).reshape(2, 2048)
    big = g[:2].copy()
    big[:, ::64] *= F32(1e6)
    c["wide-range"] = big
    return c


ADVERSARIAL = _adversarial()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_rows_equal_reference(kind, name):
    _same(kind, ADVERSARIAL[name])


@pytest.mark.parametrize("kind", KINDS)
def test_ggml_digests(kind):
    """The kernels give ggml's own bytes (the digests test_kquants.py checks the reference against)."""
    for case in CASES:
        assert _h(KQ.quantize_fast(kind, _case(case))) == GGML[(kind, case)], case


@pytest.mark.parametrize("kind", KINDS)
def test_chunk_edges_and_one_signature(kind):
    """Row counts around the chunk size (a last partial chunk), one super-block, a non-contiguous
    input; every kernel compiled once (stable dtypes)."""
    x = _random("normal", 2 * KK.CHUNK + 3, 512, 7)
    for rows in (1, KK.CHUNK - 1, KK.CHUNK, KK.CHUNK + 1, 2 * KK.CHUNK + 3):
        _same(kind, x[:rows])
        _same(kind, x[:rows, :256])
    _same(kind, np.asfortranarray(x))
    want = KQ.quantize_fast(kind, x).reshape(-1, KQ.BLOCK_BYTES[kind])
    xb = x.reshape(-1, 256).view()
    xb.flags.writeable = False               # as quantize_fast passes it (one signature)
    for chunk in (1, 3, 64):                 # the search's lanes grouped differently: same bytes
        out = np.zeros_like(want)
        if kind == "q4_K":
            KK.quantize_k45(out, xb, 15, F32(-1.0), F32(0.1), 20, chunk)
        elif kind == "q5_K":
            KK.quantize_k45(out, xb, 31, F32(-0.5), F32(0.1), 15, chunk)
        elif kind == "q6_K":
            KK.quantize_q6_K(out, xb, chunk)
        else:
            KK.quantize_q8_K_rows(out, xb)
        np.testing.assert_array_equal(out, want)
    kernel = {"q6_K": KK.quantize_q6_K, "q8_K": KK.quantize_q8_K_rows}.get(kind, KK.quantize_k45)
    assert len(kernel.signatures) == 1


def test_bad_input_is_one_clear_error():
    with pytest.raises(GlmcpuError, match="multiple of 256"):
        KQ.quantize_fast("q4_K", np.zeros((2, 100), F32))
    with pytest.raises(GlmcpuError, match="NaN or infinity"):
        KQ.quantize_fast("q6_K", np.full((1, 256), np.inf, F32))
    with pytest.raises(GlmcpuError, match="unknown K-quant"):
        KQ.quantize_fast("q3_K", np.zeros((1, 256), F32))


def test_jit_off_answers_with_the_reference(monkeypatch):
    """With NUMBA_DISABLE_JIT=1 the kernels would crawl as plain Python: the reference answers."""
    from glmcpu.kernels import nojit
    monkeypatch.setattr(nojit, "JIT", False)
    monkeypatch.setattr(KK, "quantize_k45", None)        # not reached
    x = _random("normal", 3, 512, 1)
    np.testing.assert_array_equal(KQ.quantize_fast("q4_K", x), KQ.QUANTIZE["q4_K"](x))


# ---------------------------------------------------------------- float16 and nearest_int

@njit
def _f16_all(out, x):
    for i in range(x.size):
        out[i] = KK.f32_to_f16_bits(x[i])


@njit
def _nearest_all(out, x):
    for i in range(x.size):
        out[i] = KK.nearest_int(x[i])


def test_f16_rounding_equals_numpy():
    """Every 4099th float32 bit pattern (all exponents, both signs) and the ties of each f16 binade."""
    bits = np.arange(0, 2 ** 32, 4099, dtype=np.uint64).astype(np.uint32)
    e = np.arange(0x33000000, 0x47800000, 1 << 23, dtype=np.uint32)            # f16 subnormal to overflow
    ties = (e[:, None] + np.uint32(0x1000) + (np.arange(8, dtype=np.uint32) << 13)[None, :]).ravel()
    bits = np.concatenate([bits, ties, ties | np.uint32(0x80000000), ties - np.uint32(1), ties + np.uint32(1),
                           np.uint32([0x477FEFFF, 0x477FF000, 0x477FF001, 0x7F800000, 0x33000000, 0x33000001])])
    x = bits.view(F32)
    x = x[~np.isnan(x)]                   # a NaN never reaches the conversion (finite inputs)
    got = np.empty(x.size, np.uint16)
    _f16_all(got, x)
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(got, want)


def test_nearest_int_equals_reference():
    rng = np.random.default_rng(3)
    v = np.concatenate([rng.standard_normal(100000) * 10.0 ** rng.uniform(-3, 9, 100000),
                        np.arange(-64, 64) + 0.5, [0.0, -0.0, np.nan, np.inf, -np.inf, 3.4e38]]).astype(F32)
    got = np.empty(v.size, np.int32)
    with np.errstate(invalid="ignore"):
        want = KQ.nearest_int(v)
    _nearest_all(got, v)
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------- a whole conversion

@pytest.fixture(scope="module")
def ckpt256(tmp_path_factory):
    """The golden chatglm3-tiny's config at a K-quant width (hidden 256, ffn 768), the golden's
    small vocabulary, random weights."""
    from glmcpu import families
    d = tmp_path_factory.mktemp("kq") / "ckpt"
    shutil.copytree(golden("chatglm3-tiny"), d)
    os.remove(d / "model.safetensors")
    cfg = json.load(open(d / "config.json"))
    cfg.update(hidden_size=256, ffn_hidden_size=768, num_layers=4, num_attention_heads=4,
               multi_query_group_num=2, kv_channels=64)
    json.dump(cfg, open(d / "config.json", "w"))
    rng = np.random.default_rng(8)
    tensors = {}
    for name, shape in families.checkpoint_shapes(families.get("chatglm3"), cfg).items():
        a = rng.standard_normal(shape).astype(F32) * F32(0.05)
        if name.endswith("norm.weight"):
            a += 1
        tensors[name] = ("F32", a)
    write_safetensors(str(d / "model.safetensors"), tensors)
    return str(d)


def test_convert_q4_k_m_same_file_as_reference(ckpt256, tmp_path, monkeypatch):
    from glmcpu.convert import convert
    from glmcpu.file import ModelFile
    fast = str(tmp_path / "fast.glmq")
    convert(ckpt256, fast, dtype="q4_k_m", progress=False)
    types = {i["type"] for n, i in ModelFile(fast).tensor_types.items() if len(i["shape"]) == 2}
    assert {"q4_k", "q6_k"} <= types
    monkeypatch.setattr(KQ, "quantize_fast", lambda kind, x: KQ.QUANTIZE[kind](x))
    ref = str(tmp_path / "ref.glmq")
    convert(ckpt256, ref, dtype="q4_k_m", progress=False)
    with open(fast, "rb") as f, open(ref, "rb") as g:
        assert f.read() == g.read()
