"""GGUF import (``glmcpu convert FILE.gguf``) and export (``glmcpu export``), end to end.

The GGUF files "made by llama.cpp" are written by tests/gguf_reference.py, the torch-free mirror of
llama.cpp's convert_hf_to_gguf.py (checked byte for byte against the real converter's output on these
very inputs: tools/check_gguf_reference.py), from converter inputs built by
gguf_reference.tiny_checkpoint: each golden tiny checkpoint plus the real tokenizer files cut down to
its 320-id vocabulary, as the real converter was run on them.

1. llama.cpp GGUF -> glmq: the same tensor bits as converting the HF checkpoint ourselves, the right
   family, hyper-parameters = the GGUF's keys, the golden logits.
2. The tokenizer rebuilt from the GGUF encodes and builds chat prompts as the checkpoint's own.
3. BF16 GGUF: kept bit for bit (README: F32, F16, BF16, Q8_0, Q4_0, Q4_1 are repacked); --dtype f32
   gives the f32 GGUF's model.
4. HF -> glmq -> export -> GGUF -> glmq: same tensor bits, params, logits.
5. The exported GGUF has the keys, tensors and tokenizer keys llama.cpp's converter writes (the
   differences allowed are listed, with their reasons, in test_export_is_what_llama_cpp_writes).
6. Refusals: one clear GlmcpuError (CLI: exit 1, one "error: " line, no traceback), nothing left
   at the output path.
"""
import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import gguf
import glmcpu
import gguf_reference as R
from glmcpu.convert import convert
from glmcpu.convert.gguf_export import export
from glmcpu.errors import GlmcpuError
from glmcpu.file import ModelFile
from helpers import golden, max_rel, read_raw_tensors, write_safetensors

# the converter (and so the mirror) writes tokenizer.ggml.add_bos_token twice and gguf logs it
logging.getLogger("gguf.gguf_writer").setLevel(logging.ERROR)

CASES = {"chatglm3-tiny": "chatglm3", "glm4-hf-tiny": "glm", "glm-edge-tiny-bf16": "glm",
         "glm4-0414-tiny-bf16-sharded": "glm4-0414"}
GLM_HF_CLASS = ("glm4-hf-tiny", "glm-edge-tiny-bf16")  # GlmForCausalLM: llama.cpp's ChatGLMModel reads its config wrongly
REF_TYPES = ["f32", "f16", "q8_0"]  # outtypes of the reference converter with a glmcpu storage type of the same name
GGML = gguf.GGMLQuantizationType
V = gguf.GGUFValueType


# ---------------------------------------------------------------- fixtures (module scope: built once)

@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Cached builders: ckpt(case) -> (dir, tokenizer_pre); ref(case, outtype) -> llama.cpp GGUF;
    hf(case, dtype, group_size=32, src=None) -> glmq of the checkpoint; imp(gguf, dtype=None) -> glmq
    of a GGUF; logits(glmq) -> prompt + decode logits [T + N, V]."""
    root = tmp_path_factory.mktemp("gguf")
    cache = {}

    def once(key, make):
        if key not in cache:
            cache[key] = make()
        return cache[key]

    class W:
        path = root

        @staticmethod
        def ckpt(case):
            return once(("ckpt", case), lambda: R.tiny_checkpoint(case, root / "ckpt" / case))

        @staticmethod
        def ref(case, outtype):
            def make():
                d, pre = W.ckpt(case)
                out = str(root / f"{case}.{outtype}.gguf")
                R.write_reference_gguf(d, out, outtype, tokenizer_pre=pre)
                return out
            return once(("ref", case, outtype), make)

        @staticmethod
        def hf(case, dtype, group_size=32, src=None):
            def make():
                out = str(root / f"{case}.{os.path.basename(src or 'hf')}.{dtype}.g{group_size}.glmq")
                convert(src or W.ckpt(case)[0], out, dtype=dtype, group_size=group_size, progress=False)
                return out
            return once(("hf", case, dtype, group_size, src), make)

        @staticmethod
        def imp(path, dtype=None):
            def make():
                out = f"{path}.{dtype or 'kept'}.glmq"
                convert(path, out, dtype=dtype, progress=False)
                return out
            return once(("imp", path, dtype), make)

        @staticmethod
        def logits(path, case):
            def make():
                e = expected(case)
                ids = [int(i) for i in e["prompt_ids"]] + [int(i) for i in e["decode_ids"]]
                return glmcpu.load(path, n_ctx=64, kv="f32").forward(ids, all_logits=True)
            return once(("logits", path), make)

    W.once = staticmethod(once)
    return W


def expected(case):
    return np.load(os.path.join(golden(case), "expected.npz"))


def golden_logits(case):
    """prompt positions then each decode step: what forward(prompt + decode_ids) gives row by row."""
    e = expected(case)
    return np.concatenate([e["prefill_logits"], e["decode_logits"]])


def parts(path):
    """Every physical tensor of a glmcpu file: name -> (dtype, shape, bytes)."""
    mf = ModelFile(path)
    return {n: (mf.info(n)["dtype"], tuple(mf.info(n)["shape"]), mf.tensor(n).tobytes()) for n in mf.names}


def assert_same_parts(a, b):
    pa, pb = parts(a), parts(b)
    assert sorted(pa) == sorted(pb)
    for n in pa:
        assert pa[n][:2] == pb[n][:2], n
        assert pa[n][2] == pb[n][2], f"{n}: bytes differ"
    assert ModelFile(a).tensor_types == ModelFile(b).tensor_types


def params(path):
    return json.loads(ModelFile(path).meta["params"])


def f32(x):
    return np.float32(x)


def gguf_kv(path):
    """key -> (value, [value types]) of every metadata key but GGUF.*"""
    r = gguf.GGUFReader(path)
    return {k: (f.contents(), [V(t) for t in f.types]) for k, f in r.fields.items() if not k.startswith("GGUF.")}


def gguf_tensors(path):
    """name -> (shape as ggml lists it, type name, bytes), in file order"""
    r = gguf.GGUFReader(path)
    return {t.name: (tuple(int(d) for d in t.shape), t.tensor_type.name, t.data.tobytes()) for t in r.tensors}


def rewrite_gguf(src, dst, arch=None, tensor=None):
    """Copy a GGUF with gguf.GGUFWriter: another architecture name (its <arch>.* keys renamed with
    it) and/or tensor(name, data, type) -> (data, type) for each tensor."""
    r = gguf.GGUFReader(src)
    old = r.fields["general.architecture"].contents()
    arch = arch or old
    w = gguf.GGUFWriter(dst, arch)
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        if key.startswith(old + "."):
            key = arch + key[len(old):]
        vtype = V(f.types[0])
        w.add_key_value(key, f.contents(), vtype, sub_type=V(f.types[-1]) if vtype == V.ARRAY else None)
    for t in r.tensors:
        data, qtype = np.array(t.data), GGML(t.tensor_type)
        if tensor:
            data, qtype = tensor(t.name, data, qtype)
        w.add_tensor(t.name, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def as_llama_cpp_reads_it(case, src, dst):
    """The checkpoint with the hyper-parameters llama.cpp's converter actually writes for it. Its
    ChatGLMModel.set_gguf_parameters serves GlmForCausalLM configs with the remote-code keys: no
    layernorm_epsilon -> eps 1e-5 (rms_norm_eps ignored), no seq_length -> context_length =
    hidden_size (max_position_embeddings ignored), no rope_ratio -> base 10000 (rope_theta ignored:
    10000 in these configs anyway). Remote-code ChatGLM3 and Glm4ForCausalLM are read as they are."""
    if case not in GLM_HF_CLASS:
        return src
    if os.path.isdir(dst):
        return dst
    shutil.copytree(src, dst)
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    assert cfg.get("rope_theta", 10000.0) == 10000.0
    cfg.update(rms_norm_eps=float(f32(1e-5)), max_position_embeddings=cfg["hidden_size"])
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(cfg, f)
    return dst


def hf_as_llama_cpp_reads_it(work, case, dtype):
    d = work.ckpt(case)[0]
    return work.hf(case, dtype, src=as_llama_cpp_reads_it(case, d, d + "-as-llama-cpp"))


# ---------------------------------------------------------------- 1. llama.cpp GGUF -> glmq

@pytest.mark.parametrize("outtype", REF_TYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_llama_cpp_gguf_imports_as_the_checkpoint(case, outtype, work):
    g = work.ref(case, outtype)
    ours = work.imp(g)
    mf = ModelFile(ours)
    assert mf.family == CASES[case]
    # the tensor bits are the ones our own conversion of the same checkpoint to the same type has
    # (norms f32; token_embd and output in the outtype, as llama.cpp does and as our default does)
    assert_same_parts(ours, work.hf(case, outtype))

    # hyper-parameters: the GGUF's keys, whatever the checkpoint's config says
    kv = gguf_kv(g)
    arch = kv["general.architecture"][0]
    assert arch == {"glm4-0414": "glm4"}.get(CASES[case], "chatglm")
    A = lambda key: kv[f"{arch}.{key}"][0]  # noqa: E731
    p = params(ours)
    assert (p["n_layer"], p["n_embd"], p["n_ff"], p["n_head"], p["n_kv_head"], p["rope_dim"], p["seq_length"]) == \
        (A("block_count"), A("embedding_length"), A("feed_forward_length"), A("attention.head_count"),
         A("attention.head_count_kv"), A("rope.dimension_count"), A("context_length"))
    assert f32(p["norm_eps"]) == f32(A("attention.layer_norm_rms_epsilon"))
    assert f32(p["rope_base"]) == f32(A("rope.freq_base"))
    assert p["n_vocab"] == len(kv["tokenizer.ggml.tokens"][0]) == 320
    assert p["head_dim"] == 16 and p["rope_pos_scale"] == 1.0
    assert p["pad_token_id"] == kv["tokenizer.ggml.padding_token_id"][0]
    stop = {kv[k][0] for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                               "tokenizer.ggml.eom_token_id") if k in kv}
    hf_p = params(work.hf(case, outtype))
    assert stop <= set(p["eos_token_ids"]) <= stop | set(hf_p["eos_token_ids"])
    assert p["chat"] is True

    # = the checkpoint with those hyper-parameters: same math params, same logits, bit for bit
    same = hf_as_llama_cpp_reads_it(work, case, outtype)
    hp = params(same)
    for k in ("arch", "n_layer", "n_embd", "n_ff", "n_vocab", "n_head", "n_kv_head", "head_dim", "rope_dim",
              "rope_pos_scale", "qkv_bias", "seq_length", "pad_token_id"):
        assert p[k] == hp[k], k
    assert bool(p.get("post_norms", False)) == bool(hp.get("post_norms", False)) == (case.startswith("glm4-0414"))
    assert (f32(p["norm_eps"]), f32(p["rope_base"])) == (f32(hp["norm_eps"]), f32(hp["rope_base"]))
    assert np.array_equal(work.logits(ours, case), work.logits(same, case))

    if outtype == "f32":
        rel = max_rel(work.logits(ours, case), golden_logits(case))
        if case == "glm4-hf-tiny":
            # its config says rms_norm_eps 1.5625e-07, the converter wrote 1e-5: the GGUF is (by the
            # equality above) that other model, so the official logits are not its logits
            assert f32(A("attention.layer_norm_rms_epsilon")) == f32(1e-5) and rel > 1e-5
        else:
            # every hyper-parameter that enters the math is the checkpoint's (glm-edge: only
            # context_length differs, = hidden_size 64, which the forward pass does not read)
            assert rel <= 1e-5
    elif outtype == "f16" and case != "glm4-hf-tiny":
        assert max_rel(work.logits(ours, case), golden_logits(case)) <= 5e-3  # README's f16 tolerance


# ---------------------------------------------------------------- 2. tokenizer

TEXTS = ["Hello world, 你好！ 123 4567", "  two spaces\n\nnew lines\t tab ", "<|user|>hi<|assistant|>",
         "[gMASK]sop <sop> [MASK] <|endoftext|> <|observation|>", "ünïcödé 😀", "床前明月光", ""]
MESSAGES = [
    [{"role": "user", "content": "你好"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "What is 2+2? <|user|>"}],
]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "weather of a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]


@pytest.mark.parametrize("case", list(CASES))
def test_tokenizer_rebuilt_from_the_gguf_encodes_as_the_checkpoints(case, work):
    a = glmcpu.load(work.imp(work.ref(case, "f32")), n_ctx=256, kv="f32")
    b = glmcpu.load(work.hf(case, "f32"), n_ctx=256, kv="f32")
    ta, tb = a.tokenizer, b.tokenizer
    assert type(ta) is type(tb)
    for text in TEXTS:
        for kw in ({}, {"add_special_tokens": True}, {"parse_special": True}, {"parse_special": False}):
            assert ta.encode(text, **kw) == tb.encode(text, **kw), (text, kw)
        ids = tb.encode(text, parse_special=True)
        assert ta.decode(ids) == tb.decode(ids)
    # the special tokens really are single tokens in both (the cut vocabularies keep them at 300..)
    assert len(tb.encode("<|user|>", parse_special=True)) == 1
    assert ta.decode(list(range(300))) == tb.decode(list(range(300)))
    for m in MESSAGES:
        for ps in (False, True):
            assert a.chat_prompt(m, parse_special=ps) == b.chat_prompt(m, parse_special=ps)
        assert a.chat_prompt(m, tools=TOOLS) == b.chat_prompt(m, tools=TOOLS)
    assert a.chat_template == b.chat_template


# ---------------------------------------------------------------- 3. BF16 GGUF

@pytest.mark.parametrize("case", list(CASES))
def test_bf16_gguf(case, work):
    """README: BF16 tensors are repacked bit for bit (like F32, F16, Q8_0, Q4_0, Q4_1); --dtype
    requantizes from their values. The BF16 the converter rounds (gguf.quants) must be the BF16 our
    --dtype bf16 rounds to from the same checkpoint. glm-edge and glm4-0414 are bfloat16 checkpoints:
    for them BF16 -> f32 is exact and must give the f32 GGUF's model and the official logits."""
    g = work.ref(case, "bf16")
    assert {t[1] for t in gguf_tensors(g).values() if len(t[0]) == 2} == {"BF16"}  # matrices; 1-D stay F32
    kept = work.imp(g)
    assert {e["type"] for e in ModelFile(kept).tensor_types.values() if len(e["shape"]) == 2} == {"bf16"}
    assert_same_parts(kept, work.hf(case, "bf16"))
    # (glm4-hf-tiny: the GGUF says eps 1e-5, see test 1)
    assert np.array_equal(work.logits(kept, case), work.logits(hf_as_llama_cpp_reads_it(work, case, "bf16"), case))
    if json.load(open(os.path.join(golden(case), "config.json"))).get("torch_dtype") == "bfloat16":
        as_f32 = work.imp(g, "f32")
        assert_same_parts(as_f32, work.imp(work.ref(case, "f32")))
        assert np.array_equal(work.logits(as_f32, case), work.logits(work.imp(work.ref(case, "f32")), case))
        assert max_rel(work.logits(as_f32, case), golden_logits(case)) <= 1e-5


# ---------------------------------------------------------------- 4. round trip

ROUND_TRIP_TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"]


def exported(work, case, dtype):
    """HF checkpoint -> glmq (dtype, group size 32) -> export -> GGUF -> convert -> glmq: (glmq, gguf, glmq)."""
    def make():
        src = work.hf(case, dtype)
        g = os.path.join(work.path, f"{case}.{dtype}.exported.gguf")
        export(src, g, progress=False)
        return src, g, work.imp(g)
    return work.once(("exported", case, dtype), make)


@pytest.mark.parametrize("dtype", ROUND_TRIP_TYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_through_gguf(case, dtype, work):
    src, _, back = exported(work, case, dtype)
    assert_same_parts(back, src)
    a, b = ModelFile(src), ModelFile(back)
    assert b.family == a.family
    assert np.array_equal(work.logits(back, case), work.logits(src, case))
    ma, mb = glmcpu.load(src, n_ctx=64, kv="f32"), glmcpu.load(back, n_ctx=64, kv="f32")
    for text in TEXTS:
        assert mb.tokenizer.encode(text, parse_special=True) == ma.tokenizer.encode(text, parse_special=True)
    assert mb.chat_prompt(MESSAGES[1]) == ma.chat_prompt(MESSAGES[1])
    assert b.meta.get("chat_template", "") == a.meta.get("chat_template", "")


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_keeps_the_params(case, work):
    """The normalized hyper-parameters (metadata "params") come back as they were, for every type."""
    for dtype in ROUND_TRIP_TYPES:
        src, _, back = exported(work, case, dtype)
        assert json.loads(ModelFile(back).meta["params"]) == json.loads(ModelFile(src).meta["params"]), dtype


# ---------------------------------------------------------------- 5. the exported GGUF is llama.cpp's

@pytest.mark.parametrize("outtype", REF_TYPES + ["bf16"])
@pytest.mark.parametrize("case", list(CASES))
def test_export_is_what_llama_cpp_writes(case, outtype, work):
    """Our export of the checkpoint converted to `outtype` against llama.cpp's converter on the same
    checkpoint and outtype. Allowed differences, each checked for what it must be instead:
    - general.* provenance (name, basename, organization, finetune, size_label, source.*): not
      model data; general.architecture, general.type, general.file_type and
      general.quantization_version must agree.
    - GlmForCausalLM (glm4-hf, glm-edge): llama.cpp's converter writes context_length = hidden_size,
      eps 1e-5 and rope base 10000 whatever the config says; we write the model's real values
      (max_position_embeddings, rms_norm_eps, rope_theta), which is what the model is.
    - <arch>.attention.key_length / value_length: llama.cpp's Glm4Model writes head_dim always; we
      write them only when head_dim != embedding_length / head_count, which is the value llama.cpp's
      loader assumes when the keys are absent (llama-model.cpp: n_embd_head_k = n_embd / n_head).
    - output.weight with tied embeddings (glm-edge): llama.cpp's converter leaves it out (llama.cpp
      then uses token_embd); we write it, with token_embd's type and bytes (docs: tied embeddings are
      stored once per role).
    - tensor order: llama.cpp finds tensors by name; we write ours in our order.
    - tokenizer.ggml.eom_token_id: when the model stops on a third id besides eos and eot (GLM's
      <|observation|>, in config.json's eos list), we write it as llama.cpp's end-of-message token,
      so llama.cpp stops there too; llama.cpp's converter drops it (its eos keys hold one id each).
    Everything else (every other key: type and value; every tensor: name, shape, type and bytes;
    every tokenizer.* key) must be identical."""
    d, _ = work.ckpt(case)
    ref = work.ref(case, outtype)
    ours = os.path.join(work.path, f"{case}.{outtype}.for-llama.gguf")
    export(work.hf(case, outtype), ours, progress=False)
    kr, ko = gguf_kv(ref), gguf_kv(ours)
    arch = kr["general.architecture"][0]
    assert ko["general.architecture"] == kr["general.architecture"]
    cfg = json.load(open(os.path.join(d, "config.json")))
    override = {}
    if case in GLM_HF_CLASS:
        override = {f"{arch}.context_length": (cfg["hidden_size"], cfg["max_position_embeddings"]),
                    f"{arch}.attention.layer_norm_rms_epsilon": (1e-5, cfg["rms_norm_eps"]),
                    f"{arch}.rope.freq_base": (10000.0, cfg["rope_theta"])}
    head_dim_keys = {f"{arch}.attention.key_length", f"{arch}.attention.value_length"}
    for key in sorted(set(kr) | set(ko)):
        if key.startswith("general.") and key not in ("general.architecture", "general.type", "general.file_type",
                                                      "general.quantization_version"):
            continue
        if key == "tokenizer.ggml.eom_token_id" and key not in kr:
            assert ko[key][0] in json.load(open(os.path.join(d, "config.json")))["eos_token_id"], key
            continue
        if key in head_dim_keys and key not in ko:
            assert kr[key][0] == kr[f"{arch}.embedding_length"][0] // kr[f"{arch}.attention.head_count"][0]
            continue
        assert key in kr and key in ko, f"{key}: only in {'ours' if key in ko else 'llama.cpp'}"
        assert ko[key][1] == kr[key][1], f"{key}: value types {ko[key][1]} vs {kr[key][1]}"
        if key in override:
            want_ref, want_ours = override[key]
            assert f32(kr[key][0]) == f32(want_ref), key
            assert f32(ko[key][0]) == f32(want_ours), key
        else:
            assert ko[key][0] == kr[key][0], key
    assert any(k.startswith("tokenizer.ggml.") for k in ko) and "tokenizer.ggml.tokens" in ko

    tr, to = gguf_tensors(ref), gguf_tensors(ours)
    if "output.weight" not in tr:  # tied
        assert cfg.get("tie_word_embeddings") is True
        assert to.pop("output.weight") == tr["token_embd.weight"]
    assert sorted(to) == sorted(tr)
    for name in tr:
        assert to[name][:2] == tr[name][:2], name
        assert to[name][2] == tr[name][2], f"{name}: bytes differ"


# ---------------------------------------------------------------- 6. refusals

def _kquant_gguf(work):
    """A llama.cpp GGUF whose blk.0.ffn_down.weight is Q4_K: the chatglm3 converter input with an
    FFN of 256 (a K-quant super-block), written by the reference converter, that tensor requantized."""
    def make():
        src = work.ckpt("chatglm3-tiny")[0]
        d = str(work.path / "ffn256")
        shutil.copytree(src, d)
        cfg = json.load(open(os.path.join(d, "config.json")))
        cfg["ffn_hidden_size"] = 256
        json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
        rng = np.random.default_rng(0)
        t = read_raw_tensors(golden("chatglm3-tiny"))
        for i in range(cfg["num_layers"]):
            pre = f"transformer.encoder.layers.{i}.mlp."
            t[pre + "dense_h_to_4h.weight"] = ("F32", (rng.standard_normal((512, 64)) / 8).astype(np.float32))
            t[pre + "dense_4h_to_h.weight"] = ("F32", (rng.standard_normal((64, 256)) / 16).astype(np.float32))
        write_safetensors(os.path.join(d, "model.safetensors"), t)
        f32_gguf = str(work.path / "ffn256.f32.gguf")
        R.write_reference_gguf(d, f32_gguf, "f32")

        def to_q4k(name, data, qtype):
            if name != "blk.0.ffn_down.weight":
                return data, qtype
            from glmcpu.kquants import quantize_q4_K
            return quantize_q4_K(np.ascontiguousarray(data, np.float32)), GGML.Q4_K
        return rewrite_gguf(f32_gguf, str(work.path / "ffn256.q4_k.gguf"), tensor=to_q4k)
    return work.once("kquant", make)


def _truncated(work, n):
    g = work.ref("chatglm3-tiny", "f32")
    out = str(work.path / f"truncated-{n}.gguf")
    with open(g, "rb") as f:
        raw = f.read()
    with open(out, "wb") as f:
        f.write(raw[:n if n > 0 else len(raw) + n])
    return out


def _empty_dir(work, name):
    d = work.path / "out" / name
    d.mkdir(parents=True)
    return d


def _q5_1_gguf(work):
    """The same GGUF with that tensor as Q5_1 instead (what llama.cpp's Q5_K_M mix writes for rows
    that are not whole 256-blocks), quantized by the gguf package."""
    def make():
        def to_q5_1(name, data, qtype):
            if name != "blk.0.ffn_down.weight":
                return data, qtype
            from glmcpu.kquants import dequantize_q4_K
            x = dequantize_q4_K(np.ascontiguousarray(data), 256)
            return gguf.quants.quantize(x, GGML.Q5_1), GGML.Q5_1
        return rewrite_gguf(_kquant_gguf(work), str(work.path / "ffn256.q5_1.gguf"), tensor=to_q5_1)
    return work.once("q5_1", make)


def _q2_k_gguf(work):
    """The same GGUF with that tensor as Q2_K (random blocks): a type glmcpu cannot read."""
    def make():
        def to_q2_k(name, data, qtype):
            if name != "blk.0.ffn_down.weight":
                return data, qtype
            return np.random.default_rng(0).integers(0, 256, (64, 84), dtype=np.uint8), GGML.Q2_K
        return rewrite_gguf(_kquant_gguf(work), str(work.path / "ffn256.q2_k.gguf"), tensor=to_q2_k)
    return work.once("q2_k", make)


def test_kquant_and_q5_1_tensors_are_kept_and_unknown_types_refused(work):
    g = _kquant_gguf(work)
    out_dir = _empty_dir(work, "kq")
    for src, name, typ in ((g, "kept.glmq", "q4_k"), (_q5_1_gguf(work), "q5_1.glmq", "q5_1")):
        out = str(out_dir / name)
        convert(src, out, progress=False)  # storage types: carried bit for bit
        raw = {t.name: t for t in gguf.GGUFReader(src).tensors}["blk.0.ffn_down.weight"]
        assert ModelFile(out).tensor_types["blk.0.ffn_down.weight"]["type"] == typ
        assert np.array_equal(ModelFile(out).tensor("blk.0.ffn_down.weight"), np.array(raw.data).reshape(64, -1))
    # requantized with --dtype from the values gguf's own dequantizer gives
    for src, ggml in ((g, GGML.Q4_K), (_q5_1_gguf(work), GGML.Q5_1)):
        out = str(out_dir / f"f32-{ggml.name}.glmq")
        convert(src, out, dtype="f32", progress=False)
        raw = {t.name: t for t in gguf.GGUFReader(src).tensors}["blk.0.ffn_down.weight"]
        want = gguf.quants.dequantize(np.array(raw.data), ggml).reshape(64, 256)
        assert np.array_equal(ModelFile(out).tensor("blk.0.ffn_down.weight"), want)
    before = sorted(os.listdir(out_dir))
    for dtype in (None, "f32"):
        with pytest.raises(GlmcpuError) as e:
            convert(_q2_k_gguf(work), str(out_dir / "m.glmq"), dtype=dtype, progress=False)
        msg = str(e.value)
        assert "blk.0.ffn_down.weight" in msg and "Q2_K" in msg and "cannot read" in msg and "Q5_1" in msg
        assert "\n" not in msg
    assert sorted(os.listdir(out_dir)) == before


@pytest.mark.parametrize("cut", [4, 100, 1000, 0.5, -1])
def test_truncated_gguf_is_refused(cut, work):
    g = work.ref("chatglm3-tiny", "f32")
    n = int(os.path.getsize(g) * cut) if isinstance(cut, float) else cut
    bad = _truncated(work, n)
    out_dir = _empty_dir(work, f"trunc{n}")
    with pytest.raises(GlmcpuError) as e:
        convert(bad, str(out_dir / "m.glmq"), progress=False)
    assert bad in str(e.value) and "\n" not in str(e.value)
    assert os.listdir(out_dir) == []


def test_non_glm_architecture_is_refused(work):
    g = rewrite_gguf(work.ref("chatglm3-tiny", "f32"), str(work.path / "llama-arch.gguf"), arch="llama")
    assert gguf.GGUFReader(g).fields["general.architecture"].contents() == "llama"
    out_dir = _empty_dir(work, "llama")
    with pytest.raises(GlmcpuError) as e:
        convert(g, str(out_dir / "m.glmq"), progress=False)
    assert "'llama'" in str(e.value) and "\n" not in str(e.value)
    assert os.listdir(out_dir) == []


def test_export_refusals(work):
    gs64 = work.hf("chatglm3-tiny", "q4_0", group_size=64)
    assert ModelFile(gs64).tensor_types["blk.0.attn_qkv.weight"]["group_size"] == 64
    out_dir = _empty_dir(work, "export-gs64")
    with pytest.raises(GlmcpuError, match="group size") as e:
        export(gs64, str(out_dir / "m.gguf"), progress=False)
    assert "--group-size 32" in str(e.value)
    assert os.listdir(out_dir) == []

    v1 = str(work.path / "chatglm1.glmq")
    convert(golden("chatglm1-tiny"), v1, dtype="f32", progress=False)
    out_dir = _empty_dir(work, "export-v1")
    with pytest.raises(GlmcpuError, match="ChatGLM-6B"):
        export(v1, str(out_dir / "m.gguf"), progress=False)
    assert os.listdir(out_dir) == []

    target = _empty_dir(work, "export-into-dir")
    before = sorted(os.listdir(target.parent))
    with pytest.raises(GlmcpuError, match="directory"):
        export(work.hf("chatglm3-tiny", "f32"), str(target), progress=False)
    assert os.listdir(target) == [] and sorted(os.listdir(target.parent)) == before


def test_refusals_through_the_cli(work):
    """python -m glmcpu: exit status 1, one line "error: ...", no traceback, no output file; all
    the commands run side by side."""
    gs64 = work.hf("chatglm3-tiny", "q4_0", group_size=64)
    v1 = str(work.path / "chatglm1-cli.glmq")
    convert(golden("chatglm1-tiny"), v1, dtype="f32", progress=False)
    runs = {}
    for name, cmd, src in [
        ("q2_k", "convert", _q2_k_gguf(work)),
        ("truncated", "convert", _truncated(work, -1)),
        ("llama", "convert", rewrite_gguf(work.ref("chatglm3-tiny", "f32"), str(work.path / "llama-cli.gguf"),
                                          arch="llama")),
        ("gs64", "export", gs64),
        ("v1", "export", v1),
        ("dir", "export", work.hf("chatglm3-tiny", "f32")),
    ]:
        out_dir = _empty_dir(work, "cli-" + name)
        out = str(out_dir) if name == "dir" else str(out_dir / "out")
        p = subprocess.Popen([sys.executable, "-m", "glmcpu", cmd, src, "-o", out, "-q"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        runs[name] = (p, out_dir)
    for name, (p, out_dir) in runs.items():
        stdout, stderr = p.communicate(timeout=120)
        lines = stderr.strip().splitlines()
        assert p.returncode == 1, (name, stderr)
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, stderr)
        assert "Traceback" not in stderr + stdout, name
        assert os.listdir(out_dir) == [], name
