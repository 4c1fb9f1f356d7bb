"""ChatGLM-6B (v1): golden logits, quantized types, sharded .bin, positions and chat."""
import json
import os
import shutil

import numpy as np
import pytest

import glmcpu
from glmcpu.convert import convert
from helpers import (TOKENIZERS, golden, max_rel, read_raw_tensors, reference_logits_v1, write_safetensors,
                     write_torch_zip)

CASE = "chatglm1-tiny"


def _expected():
    return np.load(os.path.join(golden(CASE), "expected.npz"))


def _run(path, chunk=None, mode="fast"):
    e = _expected()
    m = glmcpu.load(path, mode=mode, kv="f32")
    if chunk:
        m.arch.sub = chunk
    pre = m.forward(e["prompt_ids"])
    dec = np.concatenate([m.forward([int(t)]) for t in e["decode_ids"]])
    return pre, dec


@pytest.mark.parametrize("dtype,tol", [("f32", 1e-5), ("f16", 5e-3)])
def test_golden_prefill_and_decode(converted, dtype, tol):
    e = _expected()
    pre, dec = _run(converted(CASE, dtype))
    assert max_rel(pre, e["prefill_logits"]) <= tol
    assert max_rel(dec, e["decode_logits"]) <= tol


def test_prompt_in_sublayer_chunks_equals_one_pass(converted):
    """The bidirectional prefix survives chunked processing (every chunk's keys cached first)."""
    e = _expected()
    pre, dec = _run(converted(CASE, "f32"), chunk=3)
    assert max_rel(pre, e["prefill_logits"]) <= 1e-5 and max_rel(dec, e["decode_logits"]) <= 1e-5


def test_numpy_reference_matches_golden():
    e = _expected()
    cfg = json.load(open(os.path.join(golden(CASE), "config.json")))
    ids = np.concatenate([e["prompt_ids"], e["decode_ids"]])
    ref = reference_logits_v1(cfg, read_raw_tensors(golden(CASE)), ids)
    T = len(e["prompt_ids"])
    assert max_rel(ref[:T], e["prefill_logits"]) < 1e-5 and max_rel(ref[T:], e["decode_logits"]) < 1e-5


@pytest.mark.parametrize("kind", ["q8_0", "q4_0", "q4_1"])
def test_quantized_equals_reference_forward(tmp_path, kind):
    path = str(tmp_path / "m.glmq")
    convert(golden(CASE), path, dtype=kind, progress=False)
    fast = _run(path)
    ref = _run(path, mode="reference")
    assert max_rel(fast[0], ref[0]) <= 1e-4 and max_rel(fast[1], ref[1]) <= 1e-4


def test_sharded_bin_checkpoint(tmp_path):
    tensors = read_raw_tensors(golden(CASE))
    names = sorted(tensors)
    src = tmp_path / "bin"
    os.makedirs(src)
    shutil.copy(os.path.join(golden(CASE), "config.json"), src)
    wm = {}
    for k, part in enumerate((names[:9], names[9:])):
        fname = f"pytorch_model-0000{k + 1}-of-00002.bin"
        write_torch_zip(src / fname, {n: tensors[n] for n in part}, prefix=f"shard{k}")
        wm.update({n: fname for n in part})
    (src / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": wm}))
    path = str(tmp_path / "m.glmq")
    convert(str(src), path, dtype="f32", progress=False)
    e = _expected()
    pre, dec = _run(path)
    assert max_rel(pre, e["prefill_logits"]) <= 1e-5 and max_rel(dec, e["decode_logits"]) <= 1e-5


def test_prompt_must_contain_gmask_and_sop(converted):
    m = glmcpu.load(converted(CASE, "f32"), kv="f32")
    with pytest.raises(glmcpu.GlmcpuError, match="gMASK"):
        m.forward([5, 6, 7])
    m.reset()
    m.forward(_expected()["prompt_ids"])
    m.forward([3, 4])  # later calls continue the generated part, several tokens at once included


def random_v1_checkpoint(path, hidden=32, heads=2, layers=1, ffn=64, seed=0, vocab=130528):
    rng = np.random.default_rng(seed)
    cfg = json.load(open(os.path.join(golden(CASE), "config.json")))
    cfg.update(_name_or_path="THUDM/chatglm-6b", hidden_size=hidden, num_attention_heads=heads, num_layers=layers,
               inner_hidden_size=ffn, vocab_size=vocab, bos_token_id=130004, eos_token_id=130005,
               mask_token_id=130000, gmask_token_id=130001, pad_token_id=3, max_sequence_length=2048)
    shapes = {"transformer.word_embeddings.weight": (vocab, hidden), "lm_head.weight": (vocab, hidden),
              "transformer.final_layernorm.weight": (hidden,), "transformer.final_layernorm.bias": (hidden,)}
    for i in range(layers):
        p = f"transformer.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (hidden,), p + "input_layernorm.bias": (hidden,),
                       p + "attention.query_key_value.weight": (3 * hidden, hidden),
                       p + "attention.query_key_value.bias": (3 * hidden,),
                       p + "attention.dense.weight": (hidden, hidden), p + "attention.dense.bias": (hidden,),
                       p + "post_attention_layernorm.weight": (hidden,), p + "post_attention_layernorm.bias": (hidden,),
                       p + "mlp.dense_h_to_4h.weight": (ffn, hidden), p + "mlp.dense_h_to_4h.bias": (ffn,),
                       p + "mlp.dense_4h_to_h.weight": (hidden, ffn), p + "mlp.dense_4h_to_h.bias": (hidden,)})
    t = {}
    for n, s in shapes.items():
        a = rng.standard_normal(s, dtype=np.float32)
        a = (1 + 0.1 * a) if n.endswith("norm.weight") else a * np.float32(1 / np.sqrt(s[-1]) if len(s) == 2 else 0.1)
        t[n] = ("F32", a.astype(np.float32))
    os.makedirs(path, exist_ok=True)
    (open(os.path.join(path, "config.json"), "w")).write(json.dumps(cfg))
    write_safetensors(os.path.join(path, "model.safetensors"), t)
    shutil.copy(os.path.join(TOKENIZERS, "chatglm-6b", "ice_text.model"), path)
    return path


def test_v1_chat_recomputes_prompt_and_streams(tmp_path):
    src = random_v1_checkpoint(str(tmp_path / "v1"))
    path = str(tmp_path / "v1.glmq")
    convert(src, path, dtype="q8_0", progress=False)
    m = glmcpu.load(path, kv="f32")
    assert m.tokenizer.family == "chatglm1"
    msgs = [{"role": "user", "content": "你好"}]
    assert m.chat_prompt(msgs) == m.tokenizer.encode("你好", add_special_tokens=True)
    r1 = m.chat(msgs, stream=False, temperature=0, max_new_tokens=10)
    msgs += [{"role": "assistant", "content": r1}, {"role": "user", "content": "再见"}]
    pieces = list(m.chat(msgs, temperature=0, max_new_tokens=10))
    assert m.last_stats["cached_tokens"] == 0  # v1 cannot reuse the cache across turns
    fresh = glmcpu.load(path, kv="f32")
    assert fresh.chat(msgs, stream=False, temperature=0, max_new_tokens=10) == "".join(pieces)
