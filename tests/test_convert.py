"""Converter: every checkpoint layout, config variants checked against the numpy reference,
atomic output, bounded memory."""
import json
import os
import shutil

import numpy as np
import pytest

import glmcpu
from glmcpu.convert import convert
from glmcpu.errors import GlmcpuError
from helpers import (golden, max_rel, read_raw_tensors, reference_logits, write_safetensors,
                     write_torch_zip)


def _expected(case):
    return np.load(os.path.join(golden(case), "expected.npz"))


def _check_against_golden(path, case, tol=1e-5):
    e = _expected(case)
    m = glmcpu.load(path, kv="f32")
    assert max_rel(m.forward(e["prompt_ids"]), e["prefill_logits"]) <= tol
    for i, tok in enumerate(e["decode_ids"]):
        assert max_rel(m.forward([int(tok)])[0], e["decode_logits"][i]) <= tol


def _copy_config(case, dst):
    os.makedirs(dst, exist_ok=True)
    shutil.copy(os.path.join(golden(case), "config.json"), dst)


def test_sharded_safetensors_bf16(tmp_path):
    tensors = read_raw_tensors(golden("glm4-tiny"))  # bfloat16 on disk
    names = list(tensors)
    src = tmp_path / "ckpt"
    _copy_config("glm4-tiny", src)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for fname, part in shards.items():
        write_safetensors(src / fname, {n: tensors[n] for n in part})
        weight_map.update({n: fname for n in part})
    (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    out = tmp_path / "m.glmq"
    convert(str(src), str(out), dtype="f32", progress=False)
    _check_against_golden(str(out), "glm4-tiny")


def test_single_pytorch_bin(tmp_path):
    tensors = read_raw_tensors(golden("chatglm3-tiny"))  # float32
    src = tmp_path / "ckpt"
    _copy_config("chatglm3-tiny", src)
    write_torch_zip(src / "pytorch_model.bin", tensors)
    out = tmp_path / "m.glmq"
    convert(str(src), str(out), dtype="f32", progress=False)
    _check_against_golden(str(out), "chatglm3-tiny")


def test_sharded_bin_f16_reads_without_torch(converted):
    # chatglm2-tiny-bin: two torch .bin shards + index, float16
    _check_against_golden(converted("chatglm2-tiny-bin", "f32"), "chatglm2-tiny-bin")


def _variant(tmp_path, family, mqa=True, rope_ratio=None, seed=0):
    """A random tiny checkpoint of the shared architecture with config changes."""
    cfg = json.load(open(os.path.join(golden("chatglm3-tiny"), "config.json")))
    cfg["_name_or_path"] = {"chatglm2": "THUDM/chatglm2-6b-32k", "chatglm3": "THUDM/chatglm3-6b-32k",
                            "glm4": "THUDM/glm-4-9b-chat"}[family]
    cfg["multi_query_attention"] = mqa
    if rope_ratio is not None:
        cfg["rope_ratio"] = rope_ratio
    rng = np.random.default_rng(seed)
    E, H, D, F, V = cfg["hidden_size"], cfg["num_attention_heads"], cfg["kv_channels"], cfg["ffn_hidden_size"], cfg["padded_vocab_size"]
    G = cfg["multi_query_group_num"] if mqa else H
    qkv = (H + 2 * G) * D
    t = {"transformer.embedding.word_embeddings.weight": (V, E),
         "transformer.encoder.final_layernorm.weight": (E,),
         "transformer.output_layer.weight": (V, E)}
    for i in range(cfg["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        t.update({p + "input_layernorm.weight": (E,), p + "post_attention_layernorm.weight": (E,),
                  p + "self_attention.query_key_value.weight": (qkv, E),
                  p + "self_attention.query_key_value.bias": (qkv,),
                  p + "self_attention.dense.weight": (E, H * D),
                  p + "mlp.dense_h_to_4h.weight": (2 * F, E), p + "mlp.dense_4h_to_h.weight": (E, F)})
    tensors = {}
    for n, shape in t.items():
        a = rng.standard_normal(shape).astype(np.float32)
        a = 1 + 0.1 * a if n.endswith("layernorm.weight") else a * (0.5 / np.sqrt(shape[-1]) if len(shape) == 2 else 0.3)
        tensors[n] = ("F32", a.astype(np.float32))
    src = tmp_path / f"{family}-{mqa}-{rope_ratio}"
    os.makedirs(src)
    (src / "config.json").write_text(json.dumps(cfg))
    write_safetensors(src / "model.safetensors", tensors)
    return str(src), cfg, tensors


@pytest.mark.parametrize("family,mqa,rope_ratio", [
    ("chatglm2", False, None),   # Megatron per-head [q|k|v] layout
    ("chatglm2", True, 16),      # ChatGLM2-6B-32k: positions / rope_ratio
    ("chatglm3", True, 50),      # ChatGLM3-6B-32k: base * rope_ratio
    ("glm4", False, 500),
])
def test_config_variants_match_numpy_reference(tmp_path, family, mqa, rope_ratio):
    src, cfg, tensors = _variant(tmp_path, family, mqa, rope_ratio)
    out = tmp_path / "m.glmq"
    convert(src, str(out), dtype="f32", progress=False)
    ids = np.random.default_rng(1).integers(0, cfg["padded_vocab_size"], 40)
    ref = reference_logits(cfg, tensors, ids, family)
    m = glmcpu.load(str(out), n_ctx=64, kv="f32")
    assert m.family == family
    got = np.concatenate([m.forward(ids[:25])] + [m.forward([t]) for t in ids[25:]])
    assert max_rel(got, ref) <= 2e-5


def test_rope_ratio_semantics_differ_by_family(tmp_path):
    """Sanity check that the two rope_ratio rules really are different computations."""
    src2, cfg2, t2 = _variant(tmp_path, "chatglm2", True, 16)
    ids = np.arange(30) % 300
    a = reference_logits(cfg2, t2, ids, "chatglm2")
    b = reference_logits(cfg2, t2, ids, "chatglm3")
    assert max_rel(a, b) > 1e-2


def test_family_override_and_ambiguity(tmp_path):
    src, cfg, _ = _variant(tmp_path, "chatglm3", True, 50)
    cfg.pop("_name_or_path")
    with open(os.path.join(src, "config.json"), "w") as f:
        json.dump(cfg, f)
    with pytest.raises(GlmcpuError, match="--family"):
        convert(src, str(tmp_path / "x.glmq"), progress=False)
    convert(src, str(tmp_path / "x.glmq"), family="chatglm2", progress=False)
    assert glmcpu.load(str(tmp_path / "x.glmq"), kv="f32").config.rope_pos_scale == 50


@pytest.mark.parametrize("key,value,msg", [
    ("quantization_bit", 4, "unsupported: quantization_bit=4"),
    ("rmsnorm", False, "unsupported: rmsnorm=false"),
    ("add_bias_linear", True, "unsupported: add_bias_linear=true"),
    ("apply_residual_connection_post_layernorm", True, "unsupported: apply_residual_connection_post_layernorm"),
    ("pre_seq_len", 128, "unsupported: pre_seq_len=128"),
    ("model_type", "llama", "unsupported: model_type 'llama'"),
])
def test_unsupported_config_flags(tmp_path, key, value, msg):
    src = tmp_path / "ckpt"
    shutil.copytree(golden("chatglm3-tiny"), src)
    os.chmod(src / "config.json", 0o644)
    cfg = json.load(open(src / "config.json"))
    cfg[key] = value
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GlmcpuError, match=msg.replace("(", r"\(")):
        convert(str(src), str(tmp_path / "x.glmq"), progress=False)
    assert not os.path.exists(tmp_path / "x.glmq")


def test_v1_unsupported_flags_refused(tmp_path):
    src = tmp_path / "v1"
    shutil.copytree(golden("chatglm1-tiny"), src)
    os.chmod(src / "config.json", 0o644)
    cfg = json.load(open(src / "config.json"))
    cfg["position_encoding_2d"] = False
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GlmcpuError, match="unsupported: position_encoding_2d=false"):
        convert(str(src), str(tmp_path / "x.glmq"), progress=False)
    with pytest.raises(GlmcpuError, match="does not describe a ChatGLM-6B"):
        convert(golden("chatglm3-tiny"), str(tmp_path / "x.glmq"), family="chatglm1", progress=False)


def test_interrupted_convert_leaves_nothing(tmp_path, monkeypatch):
    from glmcpu.convert import pipeline as conv_mod
    out = tmp_path / "m.glmq"
    out.write_bytes(b"previous file")
    calls = {"n": 0}
    real = conv_mod._write_tensor

    def boom(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(conv_mod, "_write_tensor", boom)
    with pytest.raises(KeyboardInterrupt):
        convert(golden("chatglm3-tiny"), str(out), progress=False)
    assert out.read_bytes() == b"previous file"
    assert os.listdir(tmp_path) == ["m.glmq"]  # no temp file left behind


def test_output_file_gets_the_umask_mode_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "m.glmq"
        convert(golden("chatglm3-tiny"), str(out), progress=False)
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644


def test_output_is_valid_safetensors_with_aligned_tensors(converted):
    from safetensors import safe_open
    from glmcpu.file import ModelFile
    path = converted("glm4-tiny", "f16")
    with safe_open(path, "np") as f:
        meta = f.metadata()
        assert meta["format"] == "glmcpu" and meta["family"] == "glm4"
        assert json.loads(meta["config"])["rope_ratio"] == 500
        np.testing.assert_array_equal(f.get_tensor("output_norm.weight"),
                                      ModelFile(path).tensor("output_norm.weight"))
    mf = ModelFile(path)
    for name, info in mf.header.items():
        if name != "__metadata__":
            assert (mf.data_start + info["data_offsets"][0]) % 64 == 0, name


def test_tokenizer_bytes_are_stored(tmp_path):
    from helpers import TOKENIZERS
    from glmcpu.file import ModelFile
    tok = os.path.join(TOKENIZERS, "glm-4-9b-chat", "tokenizer.model")
    out = tmp_path / "m.glmq"
    convert(golden("glm4-tiny"), str(out), tokenizer=tok, progress=False)
    mf = ModelFile(str(out))
    assert mf.tokenizer_bytes() == open(tok, "rb").read()
    assert mf.tokenizer_info["type"] == "tiktoken"
    with pytest.raises(GlmcpuError, match="not a GLM-4 tiktoken file"):
        convert(golden("glm4-tiny"), str(tmp_path / "y.glmq"),
                tokenizer=os.path.join(TOKENIZERS, "chatglm2-chatglm3", "tokenizer.model"), progress=False)


@pytest.mark.parametrize("dtype", ["f16", "q4_0"])
def test_convert_memory_is_bounded_by_a_block_not_the_model(tmp_path, dtype):
    """Peak Python/numpy allocations while converting an ~85 MB checkpoint stay far below its size."""
    import tracemalloc
    cfg = json.load(open(os.path.join(golden("chatglm3-tiny"), "config.json")))
    cfg.update(padded_vocab_size=16384, hidden_size=512, kv_channels=64, num_attention_heads=8,
               ffn_hidden_size=1024, num_layers=2)
    src, _, _ = None, None, None
    rng = np.random.default_rng(0)
    E, V = 512, 16384
    qkv = (8 + 4) * 64
    shapes = {"transformer.embedding.word_embeddings.weight": (V, E),
              "transformer.encoder.final_layernorm.weight": (E,), "transformer.output_layer.weight": (V, E)}
    for i in range(2):
        p = f"transformer.encoder.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (E,), p + "post_attention_layernorm.weight": (E,),
                       p + "self_attention.query_key_value.weight": (qkv, E),
                       p + "self_attention.query_key_value.bias": (qkv,),
                       p + "self_attention.dense.weight": (E, E),
                       p + "mlp.dense_h_to_4h.weight": (2048, E), p + "mlp.dense_4h_to_h.weight": (E, 1024)})
    src = tmp_path / "big"
    os.makedirs(src)
    (src / "config.json").write_text(json.dumps(cfg))
    write_safetensors(src / "model.safetensors",
                      {n: ("F32", rng.standard_normal(s, dtype=np.float32) * 0.02) for n, s in shapes.items()})
    model_bytes = os.path.getsize(src / "model.safetensors")
    largest = V * E * 4
    assert model_bytes > 80e6
    tracemalloc.start()
    convert(str(src), str(tmp_path / "big.glmq"), dtype=dtype, progress=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # a 2 MB block of rows and its temporaries, plus (q4_0) the scales held until the quants are written
    assert peak < 0.5 * largest, (peak, largest)
    assert peak < 0.2 * model_bytes
