"""K-quants (glmcpu.kquants) against independent references. What is checked against what:

Byte identity with an independent implementation
- quantize q4_K / q5_K / q6_K / q8_K, dequantize q8_K and the three vec_dot: the SHA-256 of our
  output bytes equals that of ggml's own C on the same inputs (GGML below). The gguf package
  (0.19) cannot quantize K-quants and has no q8_K at all, so ggml's C is the reference here:
  ggml-org/ggml d99724f2 (src/ggml-quants.c quantize_row_<type>_ref and dequantize_row_q8_K,
  src/ggml-cpu/quants.c ggml_vec_dot_<type>_q8_K_generic), built with gcc 12.2 -O2 -DNDEBUG on
  x86-64, called through ctypes on the inputs of _case (integer-only generator: the same floats
  on every machine), output buffers zeroed first; the first 16 hex digits of the SHA-256.
- dequantize q4_K / q5_K / q6_K: bit for bit equal to gguf.quants.dequantize, on our bytes and
  on random bytes.
Second routes (properties, not identity)
- every stored level is the nearest one on its sub-block's grid as gguf decodes it;
- ggml's own error budgets (tests/test-quantize-fns.cpp) for round trip and dot product;
- the dot products against a float64 dot of the gguf-dequantized operands.
"""
import hashlib

import numpy as np
import pytest

from glmcpu import kquants as KQ
from glmcpu.errors import GlmcpuError

TYPES = ["q4_K", "q5_K", "q6_K"]
ALL = TYPES + ["q8_K"]


# ---------------------------------------------------------------- deterministic inputs

def _bits(n, seed):
    """n pseudo-random uint64 (splitmix64 of seed * 2^32 + i), integer arithmetic only."""
    z = (np.arange(n, dtype=np.uint64) + np.uint64(seed << 32)) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _noise(shape, seed):
    """Bell-shaped float32 (sum of four 16-bit uniforms, std ~1.15), exact: integers < 2^18 times 2^-15."""
    z = _bits(int(np.prod(shape)), seed)
    s = sum(((z >> np.uint64(16 * k)) & np.uint64(0xFFFF)).astype(np.int64) for k in range(4)) - 131070
    return (s.astype(np.float32) * np.float32(2.0 ** -15)).reshape(shape)


def _case(name):
    """The named input, float32 [rows, n]: adversarial ones are 2 x 512."""
    g = _noise((2, 512), hash_seed(name))
    if name == "normal":
        return _noise((8, 1024), 1) * np.float32(2.0 ** -6)
    if name == "range":       # each 32-block scaled by 2^k, k in -24..24
        k = (_bits(2 * 16, 2) % np.uint64(49)).astype(np.int64) - 24
        scale = np.ldexp(np.float32(1), k).astype(np.float32).reshape(2, 16, 1)
        return g * scale.repeat(32, 2).reshape(2, 512)
    if name == "zeros":
        return np.zeros((2, 512), np.float32)
    if name == "outlier":
        x = g * np.float32(2.0 ** -10)
        x[0, 37], x[1, 300] = 64, -64
        return x
    if name == "constant":
        x = np.full((2, 512), 0.375, np.float32)
        x[1] = -2.5
        return x
    if name == "tiny":        # ~1e-30
        return g * np.float32(2.0 ** -100)
    if name == "huge":        # ~1e30: x * x overflows in ggml's weights
        return g * np.float32(2.0 ** 100)
    if name == "negative":
        return -np.abs(g)
    if name == "mixed":       # blocks of one sign, of both, and of exact zeros
        x = g.reshape(2, 16, 32).copy()
        x[:, 0::4] = np.abs(x[:, 0::4])
        x[:, 1::4] = -np.abs(x[:, 1::4])
        x[:, 3::8] = 0
        return x.reshape(2, 512)
    if name == "sparse":
        return np.where(_bits(1024, 3).reshape(2, 512) % np.uint64(16) == 0, g, np.float32(0))
    if name == "ints":
        return ((_bits(1024, 4) % np.uint64(16)).astype(np.float32) - 8).reshape(2, 512)
    if name == "fp16-subnormal":   # scales below f16's normal range
        return g * np.float32(2.0 ** -22)
    raise KeyError(name)


def hash_seed(name):
    return sum(name.encode()) + 7


CASES = ["normal", "range", "zeros", "outlier", "constant", "tiny", "huge", "negative", "mixed",
         "sparse", "ints", "fp16-subnormal"]
DOT_CASES = ["normal", "range", "outlier", "mixed", "tiny", "huge", "ints"]


def _act(n):
    return _noise((3, n), 99)


def _h(a):
    """A short digest of the array's bytes. A NaN's sign and payload are the CPU's choice (IEEE 754
    leaves them open: x86 makes inf - inf 0xFFC00000, aarch64 0x7FC00000), so float NaNs are
    hashed as the quiet NaN 0x7FC00000 wherever they come from."""
    a = np.ascontiguousarray(a)
    if a.dtype == np.float32:
        a = np.where(np.isnan(a), np.uint32(0x7FC00000), a.view(np.uint32))
    return hashlib.sha256(a.tobytes()).hexdigest()[:16]


# ggml's C output: GGML[(kind, case)] = sha256 of quantize_row_<kind>_ref's bytes;
# GGML[("dq8", case)] of dequantize_row_q8_K of those q8_K bytes (float32);
# GGML[("dot-" + kind, case)] of the float32 [3, rows] of ggml_vec_dot_<kind>_q8_K_generic
# (weights: ggml's bytes of the case, activations: ggml's q8_K bytes of _act).
GGML = {
    ("q4_K", "normal"): "6e453e7304fd5a81",
    ("q5_K", "normal"): "d93b76fe3a63dfc4",
    ("q6_K", "normal"): "b57d506161b4c7a3",
    ("q8_K", "normal"): "5af3ae86e592a69d",
    ("dq8", "normal"): "b6b193859dc4b99e",
    ("q4_K", "range"): "ef2b5da2a2fb651e",
    ("q5_K", "range"): "86dec5d185fdebf7",
    ("q6_K", "range"): "d5ddae196eef8b43",
    ("q8_K", "range"): "c9de4fceecaae90e",
    ("dq8", "range"): "97d493fb31f36fd7",
    ("q4_K", "zeros"): "1a0295f4bf5986c5",
    ("q5_K", "zeros"): "2dd23156fbb26642",
    ("q6_K", "zeros"): "16d0edc8b7ad7705",
    ("q8_K", "zeros"): "4717e5fb82c0ee85",
    ("dq8", "zeros"): "ad7facb2586fc6e9",
    ("q4_K", "outlier"): "84e0252dfad490d0",
    ("q5_K", "outlier"): "ff24d59db3656904",
    ("q6_K", "outlier"): "38f84571c310cdf2",
    ("q8_K", "outlier"): "9a03612cea869a6b",
    ("dq8", "outlier"): "704a586e6c12e027",
    ("q4_K", "constant"): "904e1e67e48b6e71",
    ("q5_K", "constant"): "420c178ff4cff045",
    ("q6_K", "constant"): "9f993ffcac6f78d5",
    ("q8_K", "constant"): "56d22f438efff773",
    ("dq8", "constant"): "f61d07b058c58c9f",
    ("q4_K", "tiny"): "dffc7ca41aafd3ec",
    ("q5_K", "tiny"): "516e03a3c43cb29e",
    ("q6_K", "tiny"): "16d0edc8b7ad7705",
    ("q8_K", "tiny"): "e64ab882bcec4d71",
    ("dq8", "tiny"): "61b9a3519680ad2b",
    ("q4_K", "huge"): "03e55c717b9d884e",
    ("q5_K", "huge"): "b8b4beae27730098",
    ("q6_K", "huge"): "16d0edc8b7ad7705",
    ("q8_K", "huge"): "b42c0d54aa6361d0",
    ("dq8", "huge"): "898baca12de40c5c",
    ("q4_K", "negative"): "60e9d8bb4b153534",
    ("q5_K", "negative"): "3090d5ae54a3e67e",
    ("q6_K", "negative"): "04034b7fbe50eb05",
    ("q8_K", "negative"): "a4b81e9b6f6b573d",
    ("dq8", "negative"): "19bd63fc0962bd2f",
    ("q4_K", "mixed"): "3f59c504a412a055",
    ("q5_K", "mixed"): "a83742b493c3fc16",
    ("q6_K", "mixed"): "7635b8bb862fee6c",
    ("q8_K", "mixed"): "99a811624160acf5",
    ("dq8", "mixed"): "c2a19a97dce39e1f",
    ("q4_K", "sparse"): "48855c462d090c00",
    ("q5_K", "sparse"): "21a00db848d3296d",
    ("q6_K", "sparse"): "a80ba850daee4d87",
    ("q8_K", "sparse"): "32a2259839f433ee",
    ("dq8", "sparse"): "f90d2f628ba964f4",
    ("q4_K", "ints"): "d14b942aea3d885f",
    ("q5_K", "ints"): "55b8266cbf27500a",
    ("q6_K", "ints"): "8bd44008e5742602",
    ("q8_K", "ints"): "9014624ac96dc19c",
    ("dq8", "ints"): "6199d0e8e63622e7",
    ("q4_K", "fp16-subnormal"): "24d4b7192ff93ec9",
    ("q5_K", "fp16-subnormal"): "0776d2c972e02601",
    ("q6_K", "fp16-subnormal"): "19c724aea44a8470",
    ("q8_K", "fp16-subnormal"): "ccbd957b5968026c",
    ("dq8", "fp16-subnormal"): "c850e745b4108bcc",
    ("dot-q4_K", "normal"): "705a4b2123a38528",
    ("dot-q5_K", "normal"): "eecac4b4ec540653",
    ("dot-q6_K", "normal"): "df55f9a98bd64b04",
    ("dot-q4_K", "range"): "b5a5397ff39a1108",
    ("dot-q5_K", "range"): "d7e36045fe9486d5",
    ("dot-q6_K", "range"): "e00429a4b469a360",
    ("dot-q4_K", "outlier"): "640bac2fee65ea86",
    ("dot-q5_K", "outlier"): "b2bd259b4691a4a6",
    ("dot-q6_K", "outlier"): "83d4cf42fad8b0d2",
    ("dot-q4_K", "mixed"): "526c9164f9982cfc",
    ("dot-q5_K", "mixed"): "00f54d13706842d1",
    ("dot-q6_K", "mixed"): "0bc08f79ba9305e0",
    ("dot-q4_K", "tiny"): "9d908ecfb6b256de",
    ("dot-q5_K", "tiny"): "9d908ecfb6b256de",
    ("dot-q6_K", "tiny"): "9d908ecfb6b256de",
    ("dot-q4_K", "huge"): "3fbf182a570eb067",  # six NaNs (ggml on x86-64: 0xFFC00000, hashed as 0x7FC00000)
    ("dot-q5_K", "huge"): "3fbf182a570eb067",
    ("dot-q6_K", "huge"): "9d908ecfb6b256de",
    ("dot-q4_K", "ints"): "8c8244c8e603c067",
    ("dot-q5_K", "ints"): "48de481b5820cb06",
    ("dot-q6_K", "ints"): "f015f307b87c07b3",
}


# ---------------------------------------------------------------- byte identity with ggml

@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", ALL)
def test_quantize_bytes_equal_ggml(kind, case):
    x = _case(case)
    b = KQ.QUANTIZE[kind](x)
    assert b.dtype == np.uint8 and b.shape == (x.shape[0], x.shape[1] // 256 * KQ.BLOCK_BYTES[kind])
    assert _h(b) == GGML[(kind, case)], f"{kind} bytes of case {case!r} differ from ggml's"
    if kind == "q8_K":
        assert _h(KQ.dequantize_q8_K(b, x.shape[1])) == GGML[("dq8", case)]


@pytest.mark.parametrize("kind", ALL)
def test_other_numpy_routes_same_bytes(kind, monkeypatch):
    """The float shortcut of nearest_int is switched off (every level through ggml's bit trick),
    and the super-blocks go through the search in chunks of 3, on 2 threads: still ggml's bytes."""
    monkeypatch.setattr(KQ, "_small", lambda iscale, span: False)
    monkeypatch.setattr(KQ, "CHUNK", 3)
    for case in ("normal", "range", "mixed"):
        assert _h(KQ.QUANTIZE[kind](_case(case), threads=2)) == GGML[(kind, case)], case


def test_nearest_int_and_its_float_shortcut():
    """nearest_int is round-half-to-even below 2^22 (numpy's rint, an independent rounding); the
    search's float shortcut (_levels with small=True) agrees with the bit trick wherever _small
    allows it, and _small refuses spans that reach 2^21, overflow or are NaN."""
    z = _bits(4096, 6)
    mag = np.ldexp(np.float32(1), ((z % np.uint64(23)).astype(np.int64) - 1)).astype(np.float32)
    v = (_noise((4096,), 7) * mag).astype(np.float32)                # |v| up to ~2^22
    v = np.concatenate([v, np.float32([0.5, 1.5, 2.5, -0.5, -1.5, 4194302.5, -4194302.5])])
    inside = np.abs(v) < 2 ** 22
    np.testing.assert_array_equal(KQ.nearest_int(v)[inside], np.rint(v[inside]).astype(np.int64))
    w = v.reshape(1, -1)
    for lo, hi in ((0, 15), (-32, 31)):
        ok = np.abs(w[0]) < 2 ** 21
        fast = KQ._levels(w[:, ok].copy(), lo, hi, True)
        np.testing.assert_array_equal(fast, KQ._levels(w[:, ok].copy(), lo, hi, False))
    one = np.float32([1])
    assert KQ._small(one, np.float32([2 ** 21 - 1]))
    assert not KQ._small(one, np.float32([2 ** 21]))
    assert not KQ._small(np.float32([2 ** 100]), np.float32([2 ** 100]))   # overflows to inf
    assert not KQ._small(np.float32([np.nan]), np.float32([1]))


@pytest.mark.parametrize("kind", TYPES)
def test_vec_dot_equal_ggml(kind):
    for case in DOT_CASES:
        x = _case(case)
        a = KQ.quantize_q8_K(_act(x.shape[1]))
        s = KQ.VEC_DOT[kind](KQ.QUANTIZE[kind](x), a)
        assert s.dtype == np.float32 and s.shape == (3, x.shape[0])
        assert _h(s) == GGML[("dot-" + kind, case)], f"{kind} dot of case {case!r} differs from ggml's"
        # one activation row -> [rows]
        np.testing.assert_array_equal(KQ.VEC_DOT[kind](KQ.QUANTIZE[kind](x), a[1]), s[1])


# ---------------------------------------------------------------- dequantize: byte identity with gguf

def _gguf_dequantize(b, kind):
    from gguf import GGMLQuantizationType as T
    from gguf import quants as G
    with np.errstate(all="ignore"):          # inf scales (case "huge") give inf * 0 there too
        return G.dequantize(b, {"q4_K": T.Q4_K, "q5_K": T.Q5_K, "q6_K": T.Q6_K}[kind])


@pytest.mark.parametrize("kind", TYPES)
def test_dequantize_equal_gguf(kind):
    for case in CASES:
        x = _case(case)
        b = KQ.QUANTIZE[kind](x)
        ours = KQ.DEQUANTIZE[kind](b, x.shape[1])
        ref = _gguf_dequantize(b, kind)
        assert ours.dtype == np.float32 and ours.shape == x.shape
        np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32), err_msg=case)
    # random bytes, the f16 scales made finite (every other bit pattern is allowed)
    bb = KQ.BLOCK_BYTES[kind]
    r = np.frombuffer(_bits(2 * bb + 1, 5).tobytes(), np.uint8)[: 16 * bb].reshape(4, 4, bb).copy()
    for off in ((0, 2) if kind != "q6_K" else (208,)):
        r[:, :, off + 1] &= 0xFB                                     # f16 exponent < 31: finite
    b = r.reshape(4, 4 * bb)
    np.testing.assert_array_equal(KQ.DEQUANTIZE[kind](b, 1024).view(np.uint32),
                                  _gguf_dequantize(b, kind).view(np.uint32))


# ---------------------------------------------------------------- second routes

def _grid(b, kind):
    """The levels of every sub-block as gguf decodes the bytes: [rows, n_sub, 1, nlevels] float64."""
    from gguf import quants as G
    bb = KQ.BLOCK_BYTES[kind]
    blk = b.reshape(-1, bb)
    if kind == "q6_K":
        d = blk[:, 208:210].copy().view(np.float16).astype(np.float32)          # [B, 1]
        ds = (d * blk[:, 192:208].view(np.int8).astype(np.float32))             # [B, 16]
        return ds.astype(np.float64).reshape(b.shape[0], -1, 1, 1) * (np.arange(64) - 32)
    d = blk[:, 0:2].copy().view(np.float16).astype(np.float32)
    dmin = blk[:, 2:4].copy().view(np.float16).astype(np.float32)
    sc, m = G.Q4_K.get_scale_min(blk[:, 4:16])
    d1 = (d * sc.astype(np.float32)).astype(np.float64).reshape(b.shape[0], -1, 1, 1)
    m1 = (dmin * m.astype(np.float32)).astype(np.float64).reshape(b.shape[0], -1, 1, 1)
    nmax = 15 if kind == "q4_K" else 31
    return d1 * np.arange(nmax + 1) - m1


@pytest.mark.parametrize("kind", TYPES)
def test_levels_are_nearest_on_the_stored_grid(kind):
    """ggml's last pass re-rounds every element on the grid its stored scales give: the value gguf
    decodes is the grid point nearest to the input (up to float32 rounding of x / step)."""
    for case in CASES:
        if case == "huge":          # its f16 scales overflow to inf: no grid
            continue
        x = _case(case)
        b = KQ.QUANTIZE[kind](x)
        y = _gguf_dequantize(b, kind).astype(np.float64)
        g = _grid(b, kind)
        sub = 16 if kind == "q6_K" else 32
        xs = x.astype(np.float64).reshape(x.shape[0], -1, sub, 1)
        best = np.abs(xs - g).min(axis=3).reshape(x.shape)               # distance to the nearest level
        step = np.abs(g[..., 1] - g[..., 0]).repeat(sub, axis=2).reshape(x.shape)
        excess = np.abs(x.astype(np.float64) - y) - best
        assert (excess <= 1e-5 * step + 1e-45).all(), (case, excess.max())


def _ggml_test_data(n, offset):
    """test-quantize-fns.cpp's generate_data: 0.1 + 2 * cosf(i + offset)."""
    c = np.cos((np.arange(n) + offset).astype(np.float32)).astype(np.float64)
    return (0.1 + 2 * c).astype(np.float32)


# tests/test-quantize-fns.cpp: MAX_QUANTIZATION_TOTAL_ERROR, MAX_DOT_PRODUCT_ERROR
GGML_TOTAL_ERROR = 0.002
GGML_DOT_ERROR = 0.02


@pytest.mark.parametrize("kind", TYPES)
def test_ggml_error_budgets(kind):
    """ggml's own quantization test on its synthetic data (4096 values): total error
    sqrt(sum (x - y)^2) / n < 0.002 and dot product error |dot - exact| / n < 0.02."""
    n = 32 * 128
    x, x2 = _ggml_test_data(n, 0.0)[None], _ggml_test_data(n, 1.0)[None]
    b = KQ.QUANTIZE[kind](x)
    y = _gguf_dequantize(b, kind).astype(np.float64)
    assert np.sqrt(((x - y) ** 2).sum()) / n < GGML_TOTAL_ERROR
    dot = KQ.VEC_DOT[kind](b, KQ.quantize_q8_K(x2)[0])[0]
    exact = (x.astype(np.float64) * x2).sum()
    assert abs(dot - exact) / n < GGML_DOT_ERROR


@pytest.mark.parametrize("kind", TYPES)
def test_vec_dot_close_to_float64_dot_of_dequantized(kind):
    """The integer sums are exact, only float32 scaling and the 8-lane sum round: the result is
    within float32 rounding of the float64 dot of what gguf decodes and of the q8_K values."""
    for case in ("normal", "range", "outlier", "mixed", "ints"):
        x = _case(case)
        b = KQ.QUANTIZE[kind](x)
        a = KQ.quantize_q8_K(_act(x.shape[1]))
        w64 = _gguf_dequantize(b, kind).astype(np.float64)
        ab = a.reshape(3, -1, 292)
        d8 = ab[:, :, 0:4].copy().view(np.float32).astype(np.float64)            # [3, nb, 1]
        a64 = (ab[:, :, 4:260].view(np.int8) * d8).reshape(3, -1)
        ref = a64 @ w64.T
        mag = np.abs(a64) @ np.abs(w64).T
        got = KQ.VEC_DOT[kind](b, a).astype(np.float64)
        assert (np.abs(got - ref) <= 1e-5 * mag + 1e-30).all(), case


def test_q8_K_structure():
    """Per super-block: bsums are the sums of 16 quants; |q| <= 127; d * q is within d / 2 of x,
    the value of largest magnitude lands on +-127 exactly."""
    for case in CASES:
        if case in ("huge",):
            continue
        x = _case(case)
        blk = KQ.quantize_q8_K(x).reshape(-1, 292)
        d = blk[:, 0:4].copy().view(np.float32)[:, 0].astype(np.float64)
        q = blk[:, 4:260].view(np.int8).astype(np.int64)
        bs = blk[:, 260:292].copy().view("<i2").astype(np.int64)
        np.testing.assert_array_equal(bs, q.reshape(-1, 16, 16).sum(axis=2))
        assert (np.abs(q) <= 127).all()
        xb = x.reshape(-1, 256).astype(np.float64)
        assert (np.abs(d[:, None] * q - xb) <= np.abs(d)[:, None] * 0.5001 + 1e-45).all(), case
        amax = np.abs(xb).max(axis=1)
        live = amax > 0
        assert (np.abs(q).max(axis=1)[live] == 127).all()
        assert (d[~live] == 0).all() and (q[~live] == 0).all()


def test_registry_facts_match_gguf():
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
    for kind in ALL:
        t = T[kind.upper()] if kind != "q8_K" else T.Q8_K
        assert KQ.GGML_TYPE[kind] == int(t)
        assert GGML_QUANT_SIZES[t] == (KQ.QK_K, KQ.BLOCK_BYTES[kind])


# ---------------------------------------------------------------- bad input: one clear error

@pytest.mark.parametrize("kind", ALL)
def test_bad_input_is_one_clear_error(kind):
    q, dq = KQ.QUANTIZE[kind], KQ.DEQUANTIZE[kind]
    with pytest.raises(GlmcpuError, match="not a multiple of 256"):
        q(np.ones((2, 300), np.float32))
    x = np.ones((2, 256), np.float32)
    x[1, 5] = np.nan
    with pytest.raises(GlmcpuError, match="NaN or infinity"):
        q(x)
    x[1, 5] = np.inf
    with pytest.raises(GlmcpuError, match="NaN or infinity"):
        q(x)
    with pytest.raises(GlmcpuError, match="2-D"):
        q(np.ones(256, np.float32))
    bb = KQ.BLOCK_BYTES[kind]
    with pytest.raises(GlmcpuError, match=f"shape \\[rows, {bb}\\]"):
        dq(np.zeros((2, bb + 1), np.uint8), 256)
    with pytest.raises(GlmcpuError, match="multiple of 256"):
        dq(np.zeros((2, bb), np.uint8), 300)
    if kind != "q8_K":
        w = np.zeros((2, 2 * bb), np.uint8)
        with pytest.raises(GlmcpuError, match="activations must be q8_K bytes"):
            KQ.VEC_DOT[kind](w, np.zeros((1, 292), np.uint8))
        with pytest.raises(GlmcpuError, match="weights must be uint8"):
            KQ.VEC_DOT[kind](np.zeros((2, bb + 3), np.uint8), np.zeros((1, 292), np.uint8))
