"""The Hugging-Face-native releases (transformers' GlmForCausalLM / Glm4ForCausalLM:
glm-4-9b-chat-hf, GLM-Edge, GLM-4-0414) reproduce the official logits, prefill and every decode
step, from both config layouts found in the wild."""
import json
import re
import os
import shutil

import numpy as np
import pytest

import glmcpu
from glmcpu.convert import convert
from glmcpu.errors import GlmcpuError, UnsupportedError
from helpers import golden, max_rel

HF_CASES = {"glm4-hf-tiny": "glm", "glm-edge-tiny-bf16": "glm", "glm4-0414-tiny-bf16-sharded": "glm4-0414"}
# f32: float32 rounding only. f16: the bf16 sources are exact in f16 (8 mantissa bits fit); the
# f32 source (glm4-hf-tiny) loses the bits f16 cannot hold.
TOL = {"f32": 1e-5, "f16": 5e-3}


def _variant(tmp_path, case, config_name):
    """The golden case with ``config_name`` as its config.json (weights linked, not copied)."""
    src, dst = golden(case), tmp_path / f"{case}-{config_name}"
    dst.mkdir()
    for f in os.listdir(src):
        if f.startswith("config") or f == "expected.npz":
            continue
        os.symlink(os.path.join(src, f), dst / f)
    shutil.copy(os.path.join(src, config_name), dst / "config.json")
    return str(dst)


def _run(m, e):
    """Prefill logits [T, V] and each decode step's logits [N, V] (one token at a time, cached)."""
    prefill = m.forward(e["prompt_ids"])
    steps = np.concatenate([m.forward([int(t)]) for t in e["decode_ids"]])
    return prefill, steps


@pytest.mark.parametrize("dtype", ["f32", "f16"])
@pytest.mark.parametrize("case", list(HF_CASES))
def test_hf_native_matches_official(case, dtype, converted):
    e = np.load(os.path.join(golden(case), "expected.npz"))
    m = glmcpu.load(converted(case, dtype), kv="f32")
    assert m.family == HF_CASES[case]
    prefill, steps = _run(m, e)
    assert max_rel(prefill, e["prefill_logits"]) <= TOL[dtype]
    for i in range(len(e["decode_ids"])):
        assert max_rel(steps[i], e["decode_logits"][i]) <= TOL[dtype], f"decode step {i}"


@pytest.mark.parametrize("case", list(HF_CASES))
def test_transformers_5_config_layout_gives_the_same_file_math(case, tmp_path):
    """config.as_saved_by_transformers-5.23.json (rope_parameters dict, dtype) -> same logits."""
    src = _variant(tmp_path, case, "config.as_saved_by_transformers-5.23.json")
    out = str(tmp_path / "m.glmq")
    convert(src, out, dtype="f32", progress=False)
    e = np.load(os.path.join(golden(case), "expected.npz"))
    prefill, steps = _run(glmcpu.load(out, kv="f32"), e)
    assert max_rel(prefill, e["prefill_logits"]) <= 1e-5
    assert max_rel(steps, e["decode_logits"]) <= 1e-5


@pytest.mark.parametrize("kind", ["q8_0", "q4_0", "q4_1"])
@pytest.mark.parametrize("case", list(HF_CASES))
def test_hf_native_quantized_equals_reference(case, kind, tmp_path):
    """Quantized files: the fast kernels equal the numpy reference forward on the same file."""
    e = np.load(os.path.join(golden(case), "expected.npz"))
    path = str(tmp_path / "m.glmq")
    convert(golden(case), path, dtype=kind, progress=False)
    runs = {mode: np.concatenate(_run(glmcpu.load(path, mode=mode, kv="f32"), e)) for mode in ("fast", "reference")}
    assert max_rel(runs["fast"], runs["reference"]) <= 1e-4


def test_tied_embeddings_and_partial_rotary(converted):
    """GLM-Edge: no lm_head in the checkpoint (tied), rotary over the whole head."""
    m = glmcpu.load(converted("glm-edge-tiny-bf16", "f32"), kv="f32")
    assert m.config.rope_dim == m.config.head_dim == 16
    assert m.config.qkv_bias is False and m.config.n_kv_head == 1
    h = glmcpu.load(converted("glm4-hf-tiny", "f32"), kv="f32")
    assert h.config.rope_dim == 8 and h.config.qkv_bias is True  # partial_rotary_factor absent: 0.5
    assert h.config.rope_base == 10000.0 and h.config.norm_eps == pytest.approx(1.5625e-07)
    assert glmcpu.load(converted("glm4-0414-tiny-bf16-sharded", "f32"), kv="f32").config.post_norms is True


def _with_config(tmp_path, case, **changes):
    src = _variant(tmp_path, case, "config.json")
    cfg = json.load(open(os.path.join(golden(case), "config.json")))
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    os.remove(os.path.join(src, "config.json"))
    with open(os.path.join(src, "config.json"), "w") as f:
        json.dump(cfg, f)
    return src


@pytest.mark.parametrize("changes,message", [
    ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "unsupported: rope_scaling"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, "unsupported: rope_parameters.rope_type"),
    ({"hidden_act": "gelu"}, "unsupported: hidden_act"),
    ({"quantization_config": {"quant_method": "awq"}}, "unsupported: quantization_config"),
    ({"num_key_value_heads": 3}, "unsupported: num_attention_heads=4 not a multiple"),
    ({"num_hidden_layers": "2"}, "invalid 'num_hidden_layers'"),
    ({"attention_bias": False}, r"unexpected tensor 'model\.layers\.0\.self_attn\.[qkv]_proj\.bias'"),
    ({"head_dim": 32}, "config and weights disagree"),
])
def test_unsupported_and_inconsistent_configs_are_refused(tmp_path, changes, message):
    src = _with_config(tmp_path, "glm4-hf-tiny", **changes)
    with pytest.raises(GlmcpuError, match=message if message.startswith("unexpected") else re.escape(message)):
        convert(src, str(tmp_path / "m.glmq"), progress=False)
    assert not os.path.exists(tmp_path / "m.glmq")


def test_missing_shard_tensor_is_named(tmp_path):
    """A layer split across shards: a missing shard is a clear error naming it."""
    src = _variant(tmp_path, "glm4-0414-tiny-bf16-sharded", "config.json")
    os.remove(os.path.join(src, "model-00003-of-00004.safetensors"))
    with pytest.raises(GlmcpuError, match="model-00003-of-00004.safetensors"):
        convert(src, str(tmp_path / "m.glmq"), progress=False)


def test_family_override_must_agree(tmp_path):
    with pytest.raises(GlmcpuError, match="does not describe a Glm4ForCausalLM"):
        convert(golden("glm4-hf-tiny"), str(tmp_path / "m.glmq"), family="glm4-0414", progress=False)
    with pytest.raises(UnsupportedError, match="unsupported: model_type 'llama'"):
        convert(_with_config(tmp_path, "glm4-hf-tiny", model_type="llama"), str(tmp_path / "m.glmq"), progress=False)


@pytest.mark.parametrize("case", ["glm-edge-tiny-bf16", "glm4-0414-tiny-bf16-sharded"])
def test_bf16_storage_keeps_a_bf16_checkpoint_exactly(case, converted):
    """--dtype bf16 on a bfloat16 checkpoint stores its bits unchanged (no rounding at all), and
    the forward then matches the official logits as closely as f32 does."""
    from glmcpu.convert.hf import Checkpoint
    from glmcpu.file import ModelFile
    path = converted(case, "bf16")
    down = Checkpoint(golden(case)).tensors["model.layers.0.mlp.down_proj.weight"]
    assert down.st_dtype == "BF16"
    np.testing.assert_array_equal(ModelFile(path).tensor("blk.0.ffn_down.weight"), down.raw())
    e = np.load(os.path.join(golden(case), "expected.npz"))
    prefill, steps = _run(glmcpu.load(path, kv="f32"), e)
    assert max_rel(prefill, e["prefill_logits"]) <= TOL["f32"]
    for i in range(len(e["decode_ids"])):
        assert max_rel(steps[i], e["decode_logits"][i]) <= TOL["f32"], f"decode step {i}"
