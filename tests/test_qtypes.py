"""The storage-type registry (glmcpu/qtypes.py): every type's ggml block mapping against the
gguf package's independent numpy port of ggml (gguf.quants), both directions, bit for bit."""
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants as G

from glmcpu import qtypes
from glmcpu.errors import GlmcpuError

RNG = np.random.default_rng(7)
GGML = {"f32": T.F32, "f16": T.F16, "bf16": T.BF16, "q8_0": T.Q8_0, "q4_0": T.Q4_0, "q4_1": T.Q4_1, "q5_0": T.Q5_0,
        "q5_1": T.Q5_1}
KQUANTS = {"q4_k": T.Q4_K, "q5_k": T.Q5_K, "q6_k": T.Q6_K}  # gguf.quants cannot quantize these


def rows(n, k):
    x = RNG.standard_normal((n, k)).astype(np.float32) * RNG.random((n, 1)).astype(np.float32)
    x[3, :32] = 0          # an all-zero block
    x[5, 40] = 100         # an outlier
    x[7, 64:96] = -2.5     # a constant block
    return x


def test_registry_covers_the_ggml_types():
    assert set(qtypes.NAMES) == set(GGML) | set(KQUANTS)
    for name, q in qtypes.QTYPES.items():
        t = GGML.get(name, KQUANTS.get(name))
        assert q.ggml_type == int(t), name
        el, nbytes = q.ggml_block
        assert (el, nbytes) == G.GGML_QUANT_SIZES[t], name
        assert qtypes.BY_GGML_TYPE[q.ggml_type] is q


@pytest.mark.parametrize("name", list(GGML))
@pytest.mark.parametrize("n", [8, 300])  # 300: a last tile of 44 rows
def test_ggml_blocks_both_ways(name, n):
    """encode(x) -> to_ggml equals ggml's bytes for x; from_ggml(ggml's bytes) equals encode(x);
    dequantize equals ggml's dequantize."""
    q = qtypes.get(name)
    x = rows(n, 256)
    gs = 32 if q.quantized else None
    ours = dict(zip(q.storage, q.encode(x, "w", gs)))
    theirs = G.quantize(x, GGML[name]).view(np.uint8).reshape(n, -1)
    np.testing.assert_array_equal(q.to_ggml(ours, x.shape, gs), theirs)
    back = dict(zip(q.storage, q.from_ggml(theirs, x.shape)))
    assert back.keys() == ours.keys()
    for role in ours:
        np.testing.assert_array_equal(back[role], ours[role], err_msg=role)
        assert back[role].dtype == ours[role].dtype, role
    np.testing.assert_array_equal(q.dequantize(ours, x.shape),
                                  G.dequantize(theirs, GGML[name]).astype(np.float32).reshape(x.shape))


@pytest.mark.parametrize("name", list(KQUANTS))
def test_kquant_entries_are_ggml_rows(name):
    """A K-quant's part is ggml's rows themselves: both mappings are the identity, and its
    dequantize equals the gguf package's."""
    q = qtypes.get(name)
    x = rows(8, 512)
    (blocks,) = q.encode(x, "w", None)
    assert blocks.shape == (8, 2 * q.ggml_block[1]) and blocks.dtype == np.uint8
    np.testing.assert_array_equal(q.to_ggml({"blocks": blocks}, x.shape, None), blocks)
    np.testing.assert_array_equal(q.from_ggml(blocks, x.shape)[0], blocks)
    np.testing.assert_array_equal(q.dequantize({"blocks": blocks}, x.shape),
                                  G.dequantize(blocks, KQUANTS[name]).astype(np.float32).reshape(x.shape))


@pytest.mark.parametrize("name", ["q8_0", "q4_0", "q4_1"])
def test_from_ggml_in_blocks_of_rows(name):
    """The converter hands from_ggml a block of rows at a time (whole tiles, then the rest):
    the concatenated parts equal the whole tensor's."""
    q = qtypes.get(name)
    x = rows(300, 64)
    raw = G.quantize(x, GGML[name]).view(np.uint8).reshape(300, -1)
    whole = q.from_ggml(raw, x.shape)
    pieces = [q.from_ggml(raw[r:r + 128], x.shape) for r in range(0, 300, 128)]
    for i, part in enumerate(whole):
        np.testing.assert_array_equal(np.concatenate([p[i] for p in pieces]), part)


def test_wider_groups_are_refused_for_ggml():
    q = qtypes.get("q4_0")
    x = rows(8, 128)
    ours = dict(zip(q.storage, q.encode(x, "w", 64)))
    with pytest.raises(GlmcpuError, match="group size 64"):
        q.to_ggml(ours, x.shape, 64)


def test_unknown_type_names_the_choices():
    with pytest.raises(GlmcpuError, match="q4_0"):
        qtypes.get("q3_x")


def test_cli_choices_are_the_registry():
    from glmcpu import cli
    assert cli.DTYPES == list(qtypes.NAMES)
