"""Generation: sampling, streaming, chat with cache reuse, context overflow, stop tokens."""
import numpy as np
import pytest

import glmcpu
from glmcpu.convert import convert
from glmcpu.generate import Sampler, SamplingParams, StreamDecoder
from helpers import random_checkpoint


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    out = {}
    for fam in ("chatglm3", "glm4", "chatglm2"):
        src = random_checkpoint(str(root / fam), fam)
        out[fam] = str(root / f"{fam}.glmq")
        convert(src, out[fam], dtype="f32", progress=False)
    return out


def _always(token):
    """tweak: every position predicts ``token`` (attention/MLP outputs zeroed, constant embeddings)."""
    def tweak(t):
        for n, a in t.items():
            if "dense" in n and n.endswith("weight"):
                a[:] = 0
        t["transformer.embedding.word_embeddings.weight"][:] = 1
        t["transformer.encoder.final_layernorm.weight"][:] = 1
        t["transformer.output_layer.weight"][:] = 0
        t["transformer.output_layer.weight"][token] = 1
    return tweak


def _greedy_ids(m, ids, n, stops):
    m.reset()
    logits = m.forward(ids)[-1]
    out = []
    for _ in range(n):
        t = int(np.argmax(logits))
        if t in stops:
            break
        out.append(t)
        logits = m.forward([t])[-1]
    return out


@pytest.mark.parametrize("fam", ["chatglm3", "glm4"])
def test_greedy_generate_equals_manual_loop_and_stream_concatenates(models, fam):
    m = glmcpu.load(models[fam])
    pieces = list(m.generate("床前明月光，", temperature=0, max_new_tokens=40))
    ids = m.tokenizer.encode("床前明月光，", add_special_tokens=True)
    from glmcpu.chat import stop_ids
    expect = _greedy_ids(glmcpu.load(models[fam]), ids, 40, stop_ids(m.tokenizer, m.config.eos_token_ids))
    assert "".join(pieces) == m.tokenizer.decode(expect, skip_special_tokens=True)
    assert m.last_stats["new_tokens"] == len(expect)
    assert m.generate(ids, stream=False, temperature=0, max_new_tokens=40) == "".join(pieces)


@pytest.mark.parametrize("fam", ["chatglm3", "glm4"])
def test_streaming_random_text_never_splits_a_character(models, fam):
    """Hot sampling over the whole vocabulary hits byte-fallback tokens and multi-byte pieces."""
    m = glmcpu.load(models[fam])
    pieces = list(m.generate("你好", temperature=1.5, top_p=1.0, max_new_tokens=300, seed=7))
    full = m.last_stats["text"]
    assert "".join(pieces) == full
    generated = m.last_result.token_ids
    assert len(generated) == m.last_stats["new_tokens"] == 300
    prompt = m.tokenizer.encode("你好", add_special_tokens=True)
    assert m.tokens == prompt + generated[:-1]  # the last token was drawn but never needed in the cache
    assert full == m.tokenizer.decode(generated, skip_special_tokens=True)


def test_stream_decoder_on_byte_fallback_emoji():
    from test_tokenizer import tok
    t = tok("chatglm3")
    text = "好的😀🚀，日本語のテキスト"
    ids = t.encode(text)
    assert any(3 <= i < 259 for i in ids)  # byte-fallback pieces present
    dec = StreamDecoder(t)
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == t.decode(ids) and all("\ufffd" not in p for p in pieces)
    t4 = tok("glm4")
    ids = t4.encode(text)
    dec = StreamDecoder(t4)
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces)


def test_seed_reproducible_and_sampler_rules():
    logits = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    draw = lambda **kw: [Sampler(SamplingParams(**kw))(logits, []) for _ in range(1)]
    a = [Sampler(SamplingParams(seed=3, temperature=1.0, top_p=1.0))(logits, []) for _ in range(5)]
    s = Sampler(SamplingParams(seed=3, temperature=1.0, top_p=1.0))
    b = [s(logits, []) for _ in range(5)]
    assert a[0] == b[0]
    s1, s2 = Sampler(SamplingParams(seed=11, temperature=1.0)), Sampler(SamplingParams(seed=11, temperature=1.0))
    assert [s1(logits, []) for _ in range(20)] == [s2(logits, []) for _ in range(20)]
    assert draw(temperature=0)[0] == int(np.argmax(logits))
    top5 = set(np.argsort(-logits)[:5].tolist())
    s = Sampler(SamplingParams(temperature=5.0, top_k=5, top_p=1.0, seed=0))
    assert {s(logits, []) for _ in range(200)} <= top5
    s = Sampler(SamplingParams(temperature=1.0, top_p=1e-6, seed=0))
    assert {s(logits, []) for _ in range(50)} == {int(np.argmax(logits))}
    # repetition penalty pushes a repeated argmax down
    best = int(np.argmax(logits))
    s = Sampler(SamplingParams(temperature=0, repetition_penalty=1e6))
    assert s(logits, [best]) != best
    with pytest.raises(glmcpu.GlmcpuError):
        SamplingParams(top_p=0)


def test_same_seed_same_text(models):
    m = glmcpu.load(models["chatglm3"])
    a = m.generate("你好", stream=False, seed=5, max_new_tokens=30, temperature=1.0)
    b = m.generate("你好", stream=False, seed=5, max_new_tokens=30, temperature=1.0)
    c = m.generate("你好", stream=False, seed=6, max_new_tokens=30, temperature=1.0)
    assert a == b and a != c


@pytest.mark.parametrize("fam", ["chatglm3", "glm4", "chatglm2"])
def test_chat_reuses_cache_and_equals_fresh_computation(models, fam):
    m = glmcpu.load(models[fam])
    msgs = [{"role": "system", "content": "你是一个助手。"}, {"role": "user", "content": "你好"}]
    r1 = m.chat(msgs, stream=False, temperature=0, max_new_tokens=12)
    assert m.last_stats["cached_tokens"] == 0
    msgs += [{"role": "assistant", "content": r1}, {"role": "user", "content": "再说一遍"}]
    r2 = m.chat(msgs, stream=False, temperature=0, max_new_tokens=12)
    assert m.last_stats["cached_tokens"] > 0
    fresh = glmcpu.load(models[fam])
    assert fresh.chat(msgs, stream=False, temperature=0, max_new_tokens=12) == r2
    assert fresh.last_stats["cached_tokens"] == 0
    # the cache holds exactly the prompt and the reply's tokens
    assert m.tokens[: len(m.chat_prompt(msgs))] == m.chat_prompt(msgs)


def test_chat_drops_oldest_turns_when_context_is_full(models):
    m = glmcpu.load(models["chatglm3"], n_ctx=96)
    msgs = [{"role": "system", "content": "系统"}]
    for i in range(12):
        msgs += [{"role": "user", "content": f"第{i}个问题，请回答。"}, {"role": "assistant", "content": f"第{i}个回答。"}]
    msgs.append({"role": "user", "content": "最后一个问题"})
    notes = []
    reply = m.chat(msgs, stream=False, notify=notes.append, temperature=0, max_new_tokens=200)
    assert notes and "dropped" in notes[0]
    assert isinstance(reply, str) and m.n_past <= 96
    r = m.last_result
    assert r.finish_reason == "stop" or (r.finish_reason == "length" and r.prompt_tokens + r.completion_tokens == 96)
    with pytest.raises(glmcpu.GlmcpuError, match="context holds 96"):
        m.chat([{"role": "user", "content": "长" * 400}], stream=False)


def test_stop_token_ends_reply(tmp_path):
    src = random_checkpoint(str(tmp_path / "stop"), "chatglm3", tweak=_always(64795))  # <|user|>
    convert(src, str(tmp_path / "stop.glmq"), dtype="f32", progress=False)
    m = glmcpu.load(str(tmp_path / "stop.glmq"))
    assert m.chat([{"role": "user", "content": "你好"}], stream=False, temperature=0) == ""
    assert m.last_stats["finish"] == "stop" and m.last_stats["new_tokens"] == 0
    src = random_checkpoint(str(tmp_path / "nostop"), "chatglm3", tweak=_always(36474))  # "▁你"
    convert(src, str(tmp_path / "nostop.glmq"), dtype="f32", progress=False)
    m = glmcpu.load(str(tmp_path / "nostop.glmq"), n_ctx=64)
    assert m.generate("x", stream=False, temperature=0, max_new_tokens=5) == m.tokenizer.decode([36474] * 5)
    assert m.last_stats["finish"] == "length"
    out = m.generate("x", stream=False, temperature=0, max_new_tokens=500)
    n_prompt = len(m.tokenizer.encode("x", add_special_tokens=True))
    # clipped to the context: prompt + reply = n_ctx; the last token is emitted, never fed
    assert m.last_stats["finish"] == "length" and m.last_stats["new_tokens"] == 64 - n_prompt and m.n_past == 63
    assert out == m.tokenizer.decode([36474] * (64 - n_prompt))


def test_model_without_tokenizer_says_so(converted):
    m = glmcpu.load(converted("glm4-tiny", "f32"))
    with pytest.raises(glmcpu.GlmcpuError, match="no tokenizer"):
        m.generate("hi")


def test_top_p_set_equals_the_full_sort():
    """The partial-sort top-p set is the full stable sort's, ties at the cut included."""
    from glmcpu.generate import _top_p_set
    rng = np.random.default_rng(3)
    for trial in range(120):
        V = [65024, 300, 151552, 5000][trial % 4]
        x = rng.standard_normal(V) * [0.5, 2, 8, 30][trial % 4 - 1]
        if trial % 3 == 0:
            x = np.round(x)                      # many exact ties
        p = np.exp(x - x.max())
        p /= p.sum()
        top_p = [0.1, 0.5, 0.8, 0.95, 0.999][trial % 5]
        order = np.argsort(-p, kind="stable")
        want = order[: int(np.searchsorted(np.cumsum(p[order]), top_p) + 1)]
        np.testing.assert_array_equal(_top_p_set(p, top_p), want)
