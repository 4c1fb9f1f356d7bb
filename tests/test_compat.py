"""glmcpu.compat: the official checkpoints' transformers-style API (AutoTokenizer / AutoModel,
chat, stream_chat, model(input_ids).logits, generate) over glmcpu model files.

Expected values come from the golden official data (../shared/golden): logits of the official
PyTorch code, token ids of the official tokenizers and chat renderings. Chat replies are checked
against glmcpu's own Model.chat on random models with the real tokenizers."""
import json
import os
import shutil
import warnings

import numpy as np
import pytest

from glmcpu import families
from glmcpu.compat import AutoModel, AutoModelForCausalLM, AutoTokenizer, process_response
from glmcpu.convert import convert
from glmcpu.errors import GlmcpuError
from helpers import GOLDEN, TOKENIZERS, golden, max_rel, random_checkpoint, write_safetensors

GOLD = json.load(open(os.path.join(GOLDEN, "tokenizer.json"), encoding="utf-8"))
GOLD_HF = json.load(open(os.path.join(GOLDEN, "tokenizer_hf.json"), encoding="utf-8"))
PAIR_FAMILIES = ("chatglm1", "chatglm2")
WEATHER = GOLD_HF["glm4-hf"]["chat"][3]  # a system message with GLM-4 tools


def _chatglm1_checkpoint(path):
    """A small random ChatGLM-6B (v1) checkpoint with the real vocabulary size and ice_text.model."""
    cfg = json.load(open(os.path.join(GOLDEN, "chatglm1-tiny", "config.json")))
    cfg.update(vocab_size=130528, hidden_size=32, num_attention_heads=2, inner_hidden_size=64, num_layers=1,
               bos_token_id=130004, eos_token_id=130005, mask_token_id=130000, gmask_token_id=130001,
               pad_token_id=3, max_sequence_length=2048)
    rng = np.random.default_rng(1)
    tensors = {}
    for name, shape in families.checkpoint_shapes(families.get("chatglm1"), cfg).items():
        a = rng.standard_normal(shape, dtype=np.float32)
        if "layernorm" in name and name.endswith("weight"):
            a = 1 + 0.1 * a
        elif len(shape) == 2:
            a *= np.float32(2.0 / np.sqrt(shape[-1]))
        tensors[name] = ("F32", a.astype(np.float32))
    os.makedirs(path)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    write_safetensors(os.path.join(path, "model.safetensors"), tensors)
    for name in ("ice_text.model", "tokenizer_config.json"):
        shutil.copy(os.path.join(TOKENIZERS, "chatglm-6b", name), os.path.join(path, name))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """family -> a random f32 model file with the family's real tokenizer (and chat template)."""
    root = tmp_path_factory.mktemp("compat")
    out = {}
    for fam in ("chatglm1", "chatglm2", "chatglm3", "glm4", "glm", "glm4-0414"):
        src = _chatglm1_checkpoint(str(root / fam)) if fam == "chatglm1" else random_checkpoint(str(root / fam), fam)
        out[fam] = str(root / f"{fam}.glmq")
        convert(src, out[fam], dtype="f32", progress=False)
    return out


@pytest.fixture(scope="module")
def pair(files):
    """pair(family) -> (tokenizer, model) loaded once."""
    cache = {}

    def get(fam):
        if fam not in cache:
            cache[fam] = (AutoTokenizer.from_pretrained(files[fam], trust_remote_code=True),
                          AutoModel.from_pretrained(files[fam], trust_remote_code=True, n_ctx=1024))
        return cache[fam]
    return get


def _expected(case):
    return np.load(os.path.join(golden(case), "expected.npz"))


# ---------------------------------------------------------------- model(input_ids).logits, generate

@pytest.mark.parametrize("case", ["chatglm3-tiny", "glm4-tiny", "glm4-hf-tiny"])
def test_logits_equal_the_official_logits(case, converted):
    e = _expected(case)
    model = AutoModel.from_pretrained(converted(case, "f32"), trust_remote_code=True, kv="f32").eval()
    out = model(e["prompt_ids"][None])
    assert out.logits.shape == (1,) + e["prefill_logits"].shape and out.logits.dtype == np.float32
    assert max_rel(out.logits[0], e["prefill_logits"]) <= 1e-5
    again = model(input_ids=list(e["prompt_ids"]), attention_mask=np.ones((1, len(e["prompt_ids"]))))
    np.testing.assert_array_equal(again["logits"], out.logits)  # from an empty cache each call
    assert again[0] is again.logits and out.loss is None and out.past_key_values is None


def test_loss_is_the_mean_next_token_cross_entropy(converted):
    e = _expected("chatglm3-tiny")
    model = AutoModel.from_pretrained(converted("chatglm3-tiny", "f32"), kv="f32")
    ids = e["prompt_ids"]
    labels = ids.copy()
    labels[:5] = -100
    out = model(ids[None], labels=labels[None])
    x = e["prefill_logits"].astype(np.float64)[4:-1]  # position t predicts labels[t + 1]; labels 5.. count
    lse = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
    want = (lse - x[np.arange(len(x)), ids[5:]]).mean()
    assert out.loss == pytest.approx(want, rel=1e-5) and out[0] == out.loss


@pytest.mark.parametrize("case", ["chatglm3-tiny", "glm4-tiny"])
def test_greedy_generate_is_the_official_greedy_continuation(case, converted):
    """decode_ids are the official greedy tokens; generate stops after an eos id, which it keeps."""
    e = _expected(case)
    model = AutoModelForCausalLM.from_pretrained(converted(case, "f32"), kv="f32")
    prompt, cont = e["prompt_ids"], [int(t) for t in e["decode_ids"]]
    eos = model.glmcpu.config.eos_token_ids
    stop = next((i + 1 for i, t in enumerate(cont) if t in eos), len(cont))
    out = model.generate(prompt[None], max_new_tokens=len(cont), do_sample=False)
    assert out.dtype == np.int64 and out.shape == (1, len(prompt) + stop)
    assert out[0, :len(prompt)].tolist() == prompt.tolist() and out[0, len(prompt):].tolist() == cont[:stop]
    full = model.generate(input_ids=prompt[None], max_new_tokens=len(cont), eos_token_id=[])  # never stops
    assert full[0, len(prompt):].tolist() == cont


def test_max_length_and_max_new_tokens_as_transformers(converted):
    e = _expected("chatglm3-tiny")  # greedy continuation has no eos in its first 8 tokens
    model = AutoModel.from_pretrained(converted("chatglm3-tiny", "f32"))
    T = len(e["prompt_ids"])
    assert model.generate(e["prompt_ids"][None], max_length=T + 3).shape == (1, T + 3)  # prompt included
    assert model.generate(e["prompt_ids"][None], max_length=T + 6, max_new_tokens=2).shape == (1, T + 2)
    short = e["prompt_ids"][:10]
    assert model.generate(short[None]).shape == (1, 20)  # transformers' default max_length
    with pytest.raises(GlmcpuError, match="max_length=.*no room.*max_new_tokens"):
        model.generate(e["prompt_ids"][None])  # 24 prompt tokens >= the default max_length 20
    with pytest.raises(GlmcpuError, match="max_new_tokens must be a positive integer"):
        model.generate(short, max_new_tokens=0)
    small = AutoModel.from_pretrained(converted("chatglm3-tiny", "f32"), n_ctx=12)
    assert small.generate(short, max_new_tokens=50).shape == (1, 12)  # ends when the context is full


def test_sampling_seed_top_k_processors_streamer_and_stopping(converted):
    e = _expected("glm4-tiny")
    model = AutoModel.from_pretrained(converted("glm4-tiny", "f32"), kv="f32")
    ids = e["prompt_ids"][None]
    a = model.generate(ids, do_sample=True, temperature=1.5, top_p=0.9, max_new_tokens=6, eos_token_id=[], seed=7)
    b = model.generate(ids, do_sample=True, temperature=1.5, top_p=0.9, max_new_tokens=6, eos_token_id=[], seed=7)
    np.testing.assert_array_equal(a, b)
    greedy = model.generate(ids, max_new_tokens=6, eos_token_id=[])
    np.testing.assert_array_equal(model.generate(ids, do_sample=True, top_k=1, max_new_tokens=6, eos_token_id=[]),
                                  greedy)
    seen = []

    def force_5(input_ids, scores):
        assert input_ids.shape[0] == 1 and scores.shape == (1, model.glmcpu.vocab_size)
        seen.append(input_ids.shape[1])
        out = np.full_like(scores, -np.inf)
        out[0, 5] = 0
        return out

    forced = model.generate(ids, max_new_tokens=3, logits_processor=[force_5], eos_token_id=[])
    assert forced[0, -3:].tolist() == [5, 5, 5] and seen == [ids.shape[1], ids.shape[1] + 1, ids.shape[1] + 2]

    class Streamer:
        def __init__(self):
            self.got, self.ended = [], False

        def put(self, value):
            self.got.append(np.asarray(value).tolist())

        def end(self):
            self.ended = True

    s = Streamer()
    out = model.generate(ids, max_new_tokens=4, eos_token_id=[], streamer=s)
    assert s.got[0] == ids.tolist() and [g[0] for g in s.got[1:]] == out[0, -4:].tolist() and s.ended
    two = model.generate(ids, max_new_tokens=6, eos_token_id=[], stopping_criteria=[lambda i, sc: i.shape[1] >= ids.shape[1] + 2])
    assert two.shape == (1, ids.shape[1] + 2)
    # min_new_tokens keeps the eos out: greedy would stop at the 4th token (318)
    assert model.generate(ids, max_new_tokens=8).shape[1] == ids.shape[1] + 4
    assert model.generate(ids, max_new_tokens=8, min_new_tokens=6).shape[1] > ids.shape[1] + 4


# ---------------------------------------------------------------- tokenizer: official ids

@pytest.mark.parametrize("fam", ["chatglm1", "chatglm2", "chatglm3", "glm4"])
def test_tokenizer_ids_equal_the_official_tokenizer(fam, pair):
    tok, _ = pair(fam)
    gold = GOLD[fam]
    for case in gold["encode"]:
        assert tok.encode(case["text"], add_special_tokens=False) == case["ids"]
        assert tok.tokenize(case["text"]) == tok.convert_ids_to_tokens(case["ids"])
    for case in gold["with_prefix"]:
        assert tok.encode(case["text"]) == case["ids"]
        enc = tok(case["text"])
        assert enc["input_ids"] == case["ids"] and enc.attention_mask == [1] * len(case["ids"])
        arr = tok(case["text"], return_tensors="np")
        assert arr.input_ids.dtype == np.int64 and arr.input_ids.tolist() == [case["ids"]]
        assert tok.encode(case["text"], return_tensors="np").tolist() == [case["ids"]]
    for case in gold["decode"]:
        assert tok.decode(case["ids"]) == case["text"]
        assert tok.decode(np.asarray(case["ids"])) == case["text"]
    assert tok.batch_decode([c["ids"] for c in gold["decode"][:2]]) == [c["text"] for c in gold["decode"][:2]]


def test_special_token_ids_are_the_official_ones(pair):
    t1, t2, t3, t4 = (pair(f)[0] for f in ("chatglm1", "chatglm2", "chatglm3", "glm4"))
    assert (t1.eos_token, t1.eos_token_id, t1.pad_token_id, t1.bos_token_id) == ("<eop>", 130005, 3, 130004)
    assert (t2.eos_token_id, t2.pad_token_id) == (2, 0)
    assert (t3.eos_token, t3.eos_token_id, t3.pad_token, t3.pad_token_id) == ("</s>", 2, "<unk>", 0)
    assert [t3.get_command(n) for n in ("[gMASK]", "sop", "<|user|>", "<|assistant|>", "<|observation|>")] == \
        [64790, 64792, 64795, 64796, 64797]
    assert (t4.eos_token, t4.eos_token_id, t4.pad_token_id) == ("<|endoftext|>", 151329, 151329)
    assert t4.convert_tokens_to_ids(["[gMASK]", "<sop>", "<|user|>", "<|assistant|>"]) == [151331, 151333, 151336,
                                                                                             151337]
    assert t3.convert_ids_to_tokens(64795) == "<|user|>" and len(t4) == 151343
    with pytest.raises(GlmcpuError, match="no special token"):
        t3.get_command("<|nope|>")


@pytest.mark.parametrize("fam", ["chatglm3", "glm4"])
def test_build_chat_input_equals_the_official_prompt(fam, pair):
    tok, _ = pair(fam)
    for case in GOLD[fam]["chat"]:
        inputs = tok.build_chat_input(case["query"], history=case["history"])
        assert inputs["input_ids"].tolist() == [case["ids"]] and inputs.input_ids.dtype == np.int64
        assert inputs.to("cuda") is inputs  # a no-op, as code written for GPUs calls it


def test_glm4_tools_in_a_system_message_as_the_official_template(pair):
    """glm-4-9b-chat's template is the -hf one: the same official ids for both tokenizers."""
    msgs = WEATHER["messages"]
    tok4, _ = pair("glm4")
    assert tok4.build_chat_input(msgs[-1]["content"], history=msgs[:-1]).input_ids.tolist() == [WEATHER["ids"]]
    assert tok4.apply_chat_template(msgs, add_generation_prompt=True) == WEATHER["ids"]
    tokg, _ = pair("glm")
    assert tokg.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == WEATHER["text"]


@pytest.mark.parametrize("fam,key", [("glm", "glm4-hf"), ("glm4", "glm4-hf"), ("glm4-0414", "glm4-0414")])
def test_apply_chat_template_equals_the_official_rendering(fam, key, pair):
    tok, _ = pair(fam)
    for case in GOLD_HF[key]["chat"]:
        tools = case.get("tools")
        assert tok.apply_chat_template(case["messages"], tools=tools, add_generation_prompt=True,
                                       tokenize=False) == case["text"]
        assert tok.apply_chat_template(case["messages"], tools=tools, add_generation_prompt=True) == case["ids"]
        d = tok.apply_chat_template(case["messages"], tools=tools, add_generation_prompt=True, tokenize=True,
                                    return_tensors="np", return_dict=True)
        assert d["input_ids"].tolist() == [case["ids"]] and d["attention_mask"].shape == (1, len(case["ids"]))
    if fam != "glm4":
        for case in GOLD_HF[key]["encode"]:
            assert tok.encode(case["text"], add_special_tokens=False) == case["ids"]
    msgs = [{"role": "user", "content": "你好"}]
    assert tok.apply_chat_template(msgs, add_generation_prompt=False) == \
        tok.apply_chat_template(msgs, add_generation_prompt=True)[:-1]
    batch = tok.apply_chat_template([msgs, msgs], add_generation_prompt=True, return_tensors="np")
    assert batch.shape == (2, 6)


def test_apply_chat_template_without_a_template_uses_the_family_format(pair):
    """ChatGLM3's tokenizer has no jinja template: its build_chat_input format is used."""
    tok, _ = pair("chatglm3")
    case = GOLD["chatglm3"]["chat"][1]
    msgs = case["history"] + [{"role": "user", "content": case["query"]}]
    assert tok.apply_chat_template(msgs, add_generation_prompt=True) == case["ids"]
    assert tok.apply_chat_template(msgs) == case["ids"][:-1]  # no <|assistant|> without the generation prompt


def test_batches_and_padding(pair):
    tok, _ = pair("glm4")
    enc = tok(["你好", "Hello, world!"], padding=True, return_tensors="np")
    assert enc.input_ids.shape == (2, 6) and tok.padding_side == "left"
    assert enc.input_ids[0].tolist() == [151329] * 3 + [151331, 151333, 109377]
    assert enc.attention_mask[0].tolist() == [0, 0, 0, 1, 1, 1]
    right = AutoTokenizer.from_pretrained(tok.name_or_path, padding_side="right")
    assert right(["你好", "Hello, world!"], padding=True).input_ids[0] == [151331, 151333, 109377] + [151329] * 3
    with pytest.raises(GlmcpuError, match="padding=True"):
        tok(["你好", "Hello, world!"], return_tensors="np")
    assert tok(["你好"])["input_ids"] == [[151331, 151333, 109377]]


# ---------------------------------------------------------------- chat / stream_chat

def _own_reply(m, messages, n):
    """glmcpu's own greedy chat reply on the same prompt: (text, text with special tokens kept)."""
    text = m.chat(messages, stream=False, temperature=0, max_new_tokens=n)
    return text, m.last_result.raw_text if getattr(m, "last_result", None) else text


def _official_view(fam, raw):
    """The official process_response for a reply with no tool call, written out: ChatGLM-6B /
    ChatGLM2 strip the text; ChatGLM3 / GLM-4 read the first line as metadata."""
    if fam in PAIR_FAMILIES:
        return raw.strip()
    meta, sep, rest = raw.partition("\n")
    if not sep:
        return raw.strip()
    return rest.strip() if not meta.strip() else {"name": meta.strip(), "content": rest}


@pytest.mark.parametrize("fam", ["chatglm1", "chatglm2", "chatglm3", "glm4", "glm", "glm4-0414"])
def test_greedy_chat_is_glmcpus_chat_on_the_official_prompt(fam, pair):
    tok, model = pair(fam)
    gold = GOLD.get(fam, GOLD["glm4"])["chat"][1]  # a system prompt and one earlier round
    if fam in PAIR_FAMILIES:  # history as (query, response) pairs; no system role in the official code
        hist = [(gold["history"][1]["content"], gold["history"][2]["content"])]
        msgs = [{"role": "user", "content": hist[0][0]}, {"role": "assistant", "content": hist[0][1]}]
    else:
        hist = [dict(m) for m in gold["history"]]
        msgs = hist
    before = json.dumps(hist, ensure_ascii=False)
    response, history = model.chat(tok, gold["query"], history=hist, do_sample=False, max_new_tokens=12)
    assert json.dumps(hist, ensure_ascii=False) == before  # the caller's history is not modified
    if fam in GOLD:  # the prompt computed is the official chat prompt
        assert model.glmcpu.tokens[:len(gold["ids"])] == gold["ids"]
    text, raw = _own_reply(model.glmcpu, msgs + [{"role": "user", "content": gold["query"]}], 12)
    want = _official_view(fam, raw)
    if fam == "chatglm1":
        want = process_response("chatglm1", raw)  # also full-width punctuation next to CJK characters
    assert response == want and text.strip()
    if fam in PAIR_FAMILIES:
        assert history == hist + [(gold["query"], response)]
    else:
        meta, _, rest = raw.partition("\n")
        assert history[:-1] == hist + [{"role": "user", "content": gold["query"]}]
        assert history[-1]["role"] == "assistant"
    streamed = list(model.stream_chat(tok, gold["query"], history=hist, do_sample=False, max_new_tokens=12))
    assert streamed[-1] == (response, history)
    if isinstance(response, str):
        assert all(response.startswith(r) or not isinstance(r, str) for r, _ in streamed[:-1])
    third = list(model.stream_chat(tok, gold["query"], history=hist, do_sample=False, max_new_tokens=4,
                                   return_past_key_values=True))
    assert all(len(t) == 3 and t[2] is None for t in third)


def test_multi_turn_chat_reuses_the_returned_history(pair):
    tok, model = pair("chatglm3")
    r1, h1 = model.chat(tok, "你好", history=[], do_sample=False, max_new_tokens=6)
    r2, h2 = model.chat(tok, "再说一遍", history=h1, do_sample=False, max_new_tokens=6)
    assert h2[:len(h1)] == h1 and h2[len(h1)] == {"role": "user", "content": "再说一遍"}
    expect = tok.build_chat_input("再说一遍", history=h1).input_ids[0].tolist()
    assert model.glmcpu.tokens[:len(expect)] == expect
    _, model2 = pair("chatglm2")
    tok2, _ = pair("chatglm2")
    r, h = model2.chat(tok2, "你好", do_sample=False, max_new_tokens=5)
    r, h = model2.chat(tok2, "再见", history=h, do_sample=False, max_new_tokens=5)
    assert len(h) == 2 and h[1][0] == "再见"
    prompt = tok2.build_prompt("再见", history=h[:1])
    assert model2.glmcpu.tokens[:len(tok2.encode(prompt))] == tok2.encode(prompt)


def test_sampled_chat_is_reproducible_with_a_seed(pair):
    tok, model = pair("glm4")
    a = model.chat(tok, "你好", seed=3, max_new_tokens=8)
    b = model.chat(tok, "你好", seed=3, max_new_tokens=8, top_k=50, repetition_penalty=1.0)
    assert a == b


# ---------------------------------------------------------------- tool calls (process_response)

CHATGLM3_TOOLS = [{"name": "get_weather", "description": "查询天气",
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]


def test_chatglm3_tool_call_becomes_a_dict():
    hist = [{"role": "system", "content": "Answer the following questions as best as you can. You have access "
             "to the following tools:", "tools": CHATGLM3_TOOLS}, {"role": "user", "content": "北京天气"}]
    reply = "get_weather\n```python\ntool_call(city='北京', days=[1, 2], exact=True)\n```"
    response, history = process_response("chatglm3", reply, hist)
    assert response == {"name": "get_weather", "parameters": {"city": "北京", "days": [1, 2], "exact": True}}
    assert history[:2] == hist and history[2] == {"role": "assistant", "metadata": "get_weather",
                                                  "content": "```python\ntool_call(city='北京', days=[1, 2], exact=True)\n```"}
    # never evaluated: anything but literals is no call
    evil = "get_weather\n```python\ntool_call(city=__import__('os').system('echo hi'))\n```"
    assert process_response("chatglm3", evil, hist)[0]["name"] == "get_weather"
    assert "parameters" not in process_response("chatglm3", evil, hist)[0]
    # no tools in the system message: the official {"name", "content"}
    assert process_response("chatglm3", "note\nsome text", hist[1:])[0] == {"name": "note", "content": "some text"}
    # plain replies: empty metadata line, text stripped, the training-time placeholder filled in
    assert process_response("chatglm3", "\n 训练于[[训练时间]]。 ", [])[0] == "训练于2023年。"
    # a reply in two segments: the last one is the response, both are in the history
    two, h = process_response("chatglm3", "\n想一想<|assistant|>get_weather\n```python\ntool_call(city='上海')\n```",
                              hist)
    assert two == {"name": "get_weather", "parameters": {"city": "上海"}} and len(h) == 4


def test_chatglm3_tools_system_message_is_the_official_tool_prompt(pair):
    """build_chat_input appends json.dumps(tools, indent=4) to the system message: with the standard
    text that is the prompt glmcpu builds from OpenAI-style tools (glmcpu/toolcalls.py)."""
    tok, model = pair("chatglm3")
    system = "Answer the following questions as best as you can. You have access to the following tools:"
    ids = tok.build_chat_input("北京天气", history=[{"role": "system", "content": system, "tools": CHATGLM3_TOOLS}])
    openai = [{"type": "function", "function": f} for f in CHATGLM3_TOOLS]
    assert ids.input_ids[0].tolist() == model.glmcpu.chat_prompt([{"role": "user", "content": "北京天气"}],
                                                                 tools=openai)


def test_glm4_tool_call_becomes_a_dict(pair):
    _, model = pair("glm4")
    hist = WEATHER["messages"][:-1] + [{"role": "user", "content": "北京今天天气如何？"}]
    response, history = model.process_response('get_weather\n{"city": "北京"}', hist)
    assert response == {"name": "get_weather", "parameters": {"city": "北京"}}
    assert history[-1] == {"role": "assistant", "metadata": "get_weather", "content": '{"city": "北京"}'}
    # the history with the call and a tool result (role="observation") builds the official prompt
    tok, _ = pair("glm4")
    ids = tok.build_chat_input('{"temp": 21}', history=history, role="observation").input_ids[0].tolist()
    messages = history + [{"role": "observation", "content": '{"temp": 21}'}]
    assert ids == tok.apply_chat_template(messages, add_generation_prompt=True)


def test_pair_families_process_response():
    assert process_response("chatglm2", "  [[训练时间]] ok ") == "2023年 ok"
    assert process_response("chatglm1", "你好,世界!ok") == "你好，世界！ok"


# ---------------------------------------------------------------- sharing, no-ops, errors

def test_tokenizer_and_model_share_one_tokenizer(files):
    model = AutoModel.from_pretrained(files["glm4"], n_ctx=64)
    tok = AutoTokenizer.from_pretrained(files["glm4"])
    assert tok.glmcpu is model.glmcpu.tokenizer


def test_torch_habits_are_harmless(pair):
    _, model = pair("chatglm3")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert model.half().float().cpu().to("cpu").eval() is model
        assert not w
        assert model.cuda() is model and model.to("cuda:0") is model and model.quantize(4) is model
        assert len(w) == 3 and "CPU" in str(w[0].message)
    assert model.config.num_layers == 1 and model.config["model_type"] == "chatglm" and model.device == "cpu"
    with pytest.raises(GlmcpuError, match="training"):
        model.train()


def test_errors_name_the_problem_and_the_fix(pair, files, converted, tmp_path):
    tok, model = pair("chatglm3")
    tok4, _ = pair("glm4")
    ids = np.asarray([tok.encode("你好")])
    cases = [
        (lambda: tok("你好", return_tensors="pt"), "torch tensors are not supported.*return_tensors=\"np\""),
        (lambda: tok.apply_chat_template([{"role": "user", "content": "x"}], return_tensors="pt"), "torch"),
        (lambda: model(np.concatenate([ids, ids])), "batch size 2.*one sequence at a time"),
        (lambda: model.generate(np.concatenate([ids, ids]), max_new_tokens=2), "batch size 2"),
        (lambda: model.generate(ids, num_beams=4), "beam search is not supported"),
        (lambda: model.generate(ids, do_sample=True, temperature=0), "temperature must be > 0"),
        (lambda: model.generate(ids, max_new_tokens=2, foo=1), "unsupported argument.*foo"),
        (lambda: model.generate(ids, attention_mask=[[0] + [1] * (ids.shape[1] - 1)]), "padding"),
        (lambda: model.generate(ids.astype(np.float32)), "integer token ids"),
        (lambda: model(ids, past_key_values=((1, 2),)), "past_key_values is not supported"),
        (lambda: model.chat(tok4, "你好"), "glm4 tokenizer, the model a chatglm3 model"),
        (lambda: model.chat(object(), "你好"), "glmcpu.compat.AutoTokenizer"),
        (lambda: model.chat(tok, "你好", history=[("a", "b")]), "history\\[0\\] must be a dict"),
        (lambda: model.chat(tok, "你好", role="assistant"), "role must be 'user' or 'observation'"),
        (lambda: model.chat(tok, "你好", num_beams=2), "beam search"),
        (lambda: model.chat(tok, "你好", max_length=3), "no room"),
        (lambda: list(model.stream_chat(tok, "你好", past_key_values=object())), "past_key_values"),
        (lambda: pair("chatglm2")[1].chat(pair("chatglm2")[0], "x", history=[{"role": "user"}]), "pairs"),
        (lambda: pair("chatglm2")[0].build_chat_input("x"), "build_chat_input belongs.*build_prompt"),
        (lambda: tok.decode(ids), "one sequence of ids.*batch_decode"),
        (lambda: model.train(), "training is not supported"),
        (lambda: AutoModel.from_pretrained(golden("chatglm3-tiny")), "glmcpu convert .* -o model.glmq"),
        (lambda: AutoModel.from_pretrained("THUDM/chatglm3-6b", trust_remote_code=True), "does not download"),
        (lambda: AutoModel.from_pretrained(files["glm4"], foo=1), "unsupported argument.*foo"),
        (lambda: AutoTokenizer.from_pretrained(converted("chatglm3-tiny", "f32")), "has no tokenizer"),
        (lambda: AutoModel.from_pretrained(converted("chatglm3-tiny", "f32")).chat(tok, "x"),
         "no tokenizer|chatglm3 tokenizer"),
    ]
    for call, pattern in cases:
        with pytest.raises(GlmcpuError, match=pattern):
            call()
