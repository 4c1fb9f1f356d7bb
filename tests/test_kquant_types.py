"""q4_k / q5_k / q6_k as storage types: the kernels (kernels/kquant.py) against ggml's numpy
reference (glmcpu/kquants.py, itself checked against ggml and gguf.quants in test_kquants.py),
the Q4_K_M / Q5_K_M mix rule, and whole models converted to them (and through GGUF)."""
import os

import numpy as np
import pytest

import glmcpu
from glmcpu import kernels as K
from glmcpu import kquants as KQ
from glmcpu import quants as Q
from glmcpu import qtypes
from glmcpu.convert import convert
from glmcpu.convert.gguf_export import export
from glmcpu.convert.mixes import mix_type, use_more_bits
from glmcpu.file import ModelFile
from helpers import max_rel, random_checkpoint

RNG = np.random.default_rng(11)
KINDS = {"q4_k": ("q4_K", 4), "q5_k": ("q5_K", 5), "q6_k": ("q6_K", 6)}


def _weights(n, k):
    w = RNG.standard_normal((n, k)).astype(np.float32) * RNG.random((n, 1)).astype(np.float32)
    w[1, :256] = 0             # an all-zero super-block
    w[2, 7] = 30               # an outlier
    w[3, 256:] = -0.75         # constant
    return w


@pytest.mark.parametrize("T", [1, 2, 7, 64, 300])
def test_q8_K_activations_equal_ggml(T):
    x = RNG.standard_normal((T, 512)).astype(np.float32)
    x[0, :256] = 0
    aq, ad, asum = np.zeros((T, 512), np.int8), np.zeros((T, 2), np.float32), np.zeros((T, 32), np.int32)
    K.quantize_q8_K(aq, ad, asum, x)
    d, q, bsums = KQ._unpack_q8_K(KQ.quantize_q8_K(x).reshape(-1, 292))
    np.testing.assert_array_equal(aq.reshape(-1, 256), q)
    np.testing.assert_array_equal(ad.reshape(-1).view(np.uint32), d.view(np.uint32))
    np.testing.assert_array_equal(asum.reshape(-1, 16), bsums)


@pytest.mark.parametrize("name", list(KINDS))
@pytest.mark.parametrize("T", [1, 2, 7, 64, 300])
def test_kernels_equal_their_dot(name, T):
    """matmul_kquant equals kquants.kernel_dot bit for bit, on ragged row counts; and that differs
    from ggml's generic dot (vec_dot_*_q8_K, the same integers summed over eight float32 lanes)
    by float32 rounding only."""
    kind, num = KINDS[name]
    n, k = 37, 512
    w = KQ.QUANTIZE[kind](_weights(n, k))
    x = RNG.standard_normal((T, k)).astype(np.float32)
    aq, ad, asum = np.zeros((T, k), np.int8), np.zeros((T, 2), np.float32), np.zeros((T, 32), np.int32)
    K.quantize_q8_K(aq, ad, asum, x)
    scratch = (np.zeros((3, k), np.int32), np.zeros((3, 2), np.float32), np.zeros((3, 2), np.float32),
               np.zeros((3, 32), np.int32))
    out = np.zeros((T, n), np.float32)
    K.matmul_kquant(out, *scratch, w, aq, ad, asum, num)
    a = KQ.quantize_q8_K(x)
    ref = KQ.kernel_dot(kind, w, a)
    np.testing.assert_array_equal(out.view(np.uint32), ref.view(np.uint32))
    ggml = KQ.VEC_DOT[kind](w, a)
    assert max_rel(out, ggml) < 1e-5
    rows = np.array([0, 1, 2, 36])
    deq = np.zeros((4, k), np.float32)
    K.dequant_rows_kquant(deq, w, rows, num)
    np.testing.assert_array_equal(deq.view(np.uint32), KQ.DEQUANTIZE[kind](w[rows], k).view(np.uint32))


def test_more_bits_less_error():
    """On Gaussian rows the K-quants' round-trip error falls with their bits, and q4_K (4.5 bits)
    beats q4_0 (4.5 bits) and q4_1 (5 bits): the reason people download Q4_K_M."""
    x = RNG.standard_normal((256, 1024)).astype(np.float32)

    def err(name):
        q = qtypes.get(name)
        gs = 32 if q.grouped else None
        y = q.dequantize(dict(zip(q.storage, q.encode(x, "x", gs))), x.shape)
        return float(np.sqrt(np.mean((y - x) ** 2)))
    e = {n: err(n) for n in ("q4_0", "q4_1", "q4_k", "q5_k", "q6_k", "q8_0")}
    assert e["q4_k"] < e["q4_1"] < e["q4_0"]
    assert e["q6_k"] < e["q5_k"] < e["q4_k"]
    assert e["q8_0"] < e["q6_k"]


@pytest.mark.parametrize("T", [1, 2, 7, 64, 300])
def test_q5_0_kernel_equals_its_reference(T):
    """q5_0 (ggml's bytes, checked against gguf.quants in test_qtypes) runs on the int8 activations
    of the 32-block types; matmul_q5_0 equals glmcpu.quants.matmul_ref("q5_0") bit for bit."""
    w = Q.quantize_q5_0(_weights(37, 512))
    x = RNG.standard_normal((T, 512)).astype(np.float32)
    xq, xd, xs = np.zeros((T, 512), np.int8), np.zeros((T, 16), np.float32), np.zeros((T, 16), np.int32)
    K.quantize_act(xq, xd, xs, x)
    out = np.zeros((T, 37), np.float32)
    K.matmul_q5_0(out, np.zeros((3, 512), np.int32), np.zeros((3, 16), np.float32), w, xq, xd)
    np.testing.assert_array_equal(out.view(np.uint32), Q.matmul_ref("q5_0", w, None, None, 32, x).view(np.uint32))


@pytest.mark.parametrize("T", [1, 2, 7, 64, 300])
def test_q5_1_kernel_equals_its_reference(T):
    """q5_1 likewise (with its minimums: q4_1's formula on q - 16); rows of all-equal values (d = 0)
    and a NaN activation block included."""
    x_w = _weights(37, 512)
    x_w[5] = 0.25                   # a constant row: d = 0, every value is the minimum
    w = Q.quantize_q5_1(x_w)
    x = RNG.standard_normal((T, 512)).astype(np.float32)
    x[T - 1, 64:96] = np.nan if T > 1 else x[T - 1, 64:96]
    xq, xd, xs = np.zeros((T, 512), np.int8), np.zeros((T, 16), np.float32), np.zeros((T, 16), np.int32)
    K.quantize_act(xq, xd, xs, x)
    out = np.zeros((T, 37), np.float32)
    K.matmul_q5_1(out, np.zeros((3, 512), np.int32), np.zeros((3, 16), np.float32), np.zeros((3, 16), np.float32),
                  w, xq, xd, xs)
    with np.errstate(invalid="ignore"):
        want = Q.matmul_ref("q5_1", w, None, None, 32, x)
    np.testing.assert_array_equal(out.view(np.uint32), want.view(np.uint32))
    rows = np.zeros((37, 512), np.float32)
    K.dequant_rows_q5_1(rows, w, np.arange(37))
    np.testing.assert_array_equal(rows, Q.dequantize_q5_1(w, 512))


def test_mix_rule_is_llama_cpps():
    n = 28  # ChatGLM3-6B: use_more_bits gives layers 0-2, 5, 8, ..., 23, 24-27 q6_K
    more = [i for i in range(n) if use_more_bits(i, n)]
    assert more == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27]
    assert mix_type("q4_k_m", "output.weight", 4096, n, False) == ("q6_k", None)
    assert mix_type("q4_k_m", "token_embd.weight", 4096, n, False) == ("q4_k", None)
    assert mix_type("q4_k_m", "token_embd.weight", 4096, n, True) == ("q6_k", None)  # tied: the output's type
    assert mix_type("q5_k_m", "blk.5.attn_qkv.weight", 4096, n, False) == ("q6_k", None)
    assert mix_type("q5_k_m", "blk.6.attn_qkv.weight", 4096, n, False) == ("q5_k", None)
    assert mix_type("q4_k_m", "blk.3.ffn_up_gate.weight", 4096, n, False) == ("q4_k", None)
    kind, note = mix_type("q4_k_m", "blk.3.ffn_down.weight", 13696, n, False)  # GLM's ffn width
    assert kind == "q5_0" and "13696" in note                                   # llama.cpp's fallback
    assert mix_type("q4_k_m", "blk.2.ffn_down.weight", 13696, n, False)[0] == "q8_0"  # q6_K's fallback
    assert mix_type("q5_k_m", "blk.3.ffn_down.weight", 13696, n, False)[0] == "q5_1"  # q5_K's fallback


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("k256")
    return random_checkpoint(str(d / "ckpt"), family="chatglm3", hidden=256, layers=2, heads=4, groups=2, ffn=512)


@pytest.mark.parametrize("dtype", ["q4_k", "q5_k", "q6_k", "q4_k_m", "q5_0", "q5_1"])
def test_models_in_kquants(ckpt, dtype, tmp_path):
    """Converted to a K-quant, every matrix holds ggml's bytes for its type, the forward runs on
    the kernels (close to the f32 model), and a GGUF round trip keeps every bit and the logits."""
    out = str(tmp_path / f"{dtype}.glmq")
    convert(ckpt, out, dtype=dtype, progress=False)
    mf = ModelFile(out)
    types = {n: i["type"] for n, i in mf.tensor_types.items() if len(i["shape"]) == 2}
    if dtype == "q4_k_m":  # 2 layers: use_more_bits picks layer 1 only
        assert types["output.weight"] == "q6_k" and types["token_embd.weight"] == "q4_k"
        assert [types[f"blk.{i}.attn_qkv.weight"] for i in (0, 1)] == ["q4_k", "q6_k"]
        assert [types[f"blk.{i}.ffn_down.weight"] for i in (0, 1)] == ["q4_k", "q6_k"]
        assert types["blk.0.ffn_up_gate.weight"] == types["blk.1.attn_output.weight"] == "q4_k"
    else:
        assert set(types.values()) == {dtype}
    from glmcpu.convert.hf import Checkpoint
    src = Checkpoint(ckpt).tensors["transformer.encoder.layers.0.mlp.dense_4h_to_h.weight"]
    kind = types["blk.0.ffn_down.weight"]
    quantize = {"q5_0": Q.quantize_q5_0, "q5_1": Q.quantize_q5_1}.get(kind) or KQ.QUANTIZE[KINDS[kind][0]]
    np.testing.assert_array_equal(mf.tensor("blk.0.ffn_down.weight"), quantize(src.rows_f32()))
    ref_path = str(tmp_path / "f32.glmq")
    convert(ckpt, ref_path, dtype="f32", progress=False)
    ids = [64790, 64792, 30910, 1000, 2000, 34607, 55, 13]
    got = glmcpu.load(out, n_ctx=64).forward(ids)
    # the whole forward with every K-quant product computed by the numpy reference (ggml's dot)
    assert np.array_equal(glmcpu.load(out, n_ctx=64, mode="reference").forward(ids), got)
    assert max_rel(got, glmcpu.load(ref_path, n_ctx=64).forward(ids)) < 1.0  # the same model, roughly
    gg, back = str(tmp_path / "m.gguf"), str(tmp_path / "back.glmq")
    export(out, gg, progress=False)
    convert(gg, back, progress=False)
    mb = ModelFile(back)
    for name in mf.header:
        if name != "__metadata__" and not name.startswith("__pad"):
            np.testing.assert_array_equal(mb.tensor(name), mf.tensor(name), err_msg=name)
    assert np.array_equal(glmcpu.load(back, n_ctx=64).forward(ids), got)
    assert os.path.getsize(out) < os.path.getsize(ref_path)


@pytest.mark.parametrize("name", ["q4_k", "q5_k", "q6_k"])
def test_kquant_scale_overflow_is_refused(name):
    """A super-block scale beyond float16 (values ~1e15) is a clear error at conversion; large
    values whose scales still fit are stored, and dequantize to finite values."""
    from glmcpu import qtypes
    from glmcpu.errors import GlmcpuError
    q = qtypes.get(name)
    x = _weights(4, 512)
    with pytest.raises(GlmcpuError, match="'w': a super-block scale overflows float16"):
        q.encode(x * np.float32(1e15), "w", None)
    (b,) = q.encode(x * np.float32(1e5), "w", None)
    assert np.isfinite(q.dequantize({"blocks": b}, x.shape)).all()
