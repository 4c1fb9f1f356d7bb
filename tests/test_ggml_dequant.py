"""Dequantizers of the ggml types a GGUF may hold, glmcpu does not store, and requantizes with
--dtype (convert/ggml_dequant.py), against the gguf package's independent numpy port of ggml. (The
stored types' dequantizers are tested through the registry in test_qtypes.py.)"""
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants as G

from glmcpu.convert import ggml_dequant

RNG = np.random.default_rng(3)


def _rows():
    x = RNG.standard_normal((6, 512)).astype(np.float32) * RNG.random((6, 1)).astype(np.float32)
    x[1, :64] = 0          # all-zero blocks
    x[2, 3] = 50           # an outlier
    x[3, 256:300] = -1.25  # constant runs
    return x


@pytest.mark.parametrize("name", sorted(ggml_dequant.DEQUANTIZE))
def test_dequantize_equals_ggml(name):
    x = _rows()
    raw = G.quantize(x, getattr(T, name)).view(np.uint8)
    ours = ggml_dequant.DEQUANTIZE[name](raw, x.shape[1])
    ref = G.dequantize(raw, getattr(T, name)).astype(np.float32).reshape(x.shape)
    assert ours.dtype == np.float32 and ours.shape == x.shape
    np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))
