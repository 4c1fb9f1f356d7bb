"""Continuous batching (glmcpu/batcher.py, `glmcpu serve --parallel N`): requests running at once
give exactly the replies they give one at a time (text, logprobs, stop strings, constraints), a
new request goes to the slot that caches the longest prefix of its prompt, a client that hangs up
frees its slot, and a full queue answers 503. The Batcher alone first, then the real server."""
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import glmcpu
from glmcpu.batcher import Batcher, QueueFull
from glmcpu.errors import GlmcpuError
from glmcpu.generate import SamplingParams
from glmcpu.requests import GenerationRequest, run

PROMPTS = ["床前明月光", "你好", "今天天气怎么样？", "写一首关于春天的诗", "1+1="]


@pytest.fixture(scope="module")
def alone():
    """The demo model with one slot: the reference (requests.run, one request at a time)."""
    return glmcpu.load(glmcpu.demo_model_path(), n_ctx=256, threads=1)


@pytest.fixture(scope="module")
def slots3():
    return glmcpu.load(glmcpu.demo_model_path(), n_ctx=256, threads=1, n_slots=3)


def _requests(model):
    """Five requests covering what a Sequence does per token."""
    ids = [model.chat_prompt([{"role": "user", "content": p}]) for p in PROMPTS]
    long_ids = model.tokenizer.encode("春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。" * 4, add_special_tokens=True)
    return [
        GenerationRequest(ids[0], SamplingParams(max_new_tokens=30, temperature=0), logprobs=3),
        GenerationRequest(ids[1], SamplingParams(max_new_tokens=25, temperature=0.9, top_p=0.8, seed=5),
                          presence_penalty=0.5, frequency_penalty=0.3),
        GenerationRequest(ids[2], SamplingParams(max_new_tokens=40, temperature=1.2, seed=9), stop=["，", "。"]),
        GenerationRequest(long_ids, SamplingParams(max_new_tokens=20, temperature=0), logprobs=2,
                          prompt_logprobs=True),  # every prompt row's logits (completions echo)
        GenerationRequest(ids[4], SamplingParams(max_new_tokens=3, temperature=0)),
    ]


def _result(req, pieces):
    r = req.result
    return ("".join(pieces), r.text, r.raw_text, r.finish_reason, r.token_ids, r.completion_tokens, r.logprobs,
            r.prompt_logprobs)


def _through(batcher, reqs):
    """Submit all of ``reqs`` at once; wait for every one to end. -> [(pieces, error)]"""
    out = [([], None) for _ in reqs]
    left, ended = [len(reqs)], threading.Event()

    def done(i, err):
        out[i] = (out[i][0], err)
        left[0] -= 1
        if not left[0]:
            ended.set()

    for i, r in enumerate(reqs):
        batcher.submit(r, out[i][0].append, lambda err, i=i: done(i, err))
    assert ended.wait(120)
    return out


def test_batcher_equals_one_at_a_time(alone, slots3):
    want = []
    for req in _requests(alone):
        alone.reset()
        want.append(_result(req, list(run(alone, req))))
    slots2 = glmcpu.load(glmcpu.demo_model_path(), n_ctx=256, threads=1, n_slots=2)
    b = Batcher(slots2, prefill_chunk=16, max_queue=8, feed_threads=2)  # five requests, two slots, prompts
    # read in chunks, the two sequences sampling in two threads
    try:
        reqs = _requests(slots2)
        got = _through(b, reqs)
    finally:
        b.close()
    assert all(err is None for _, err in got)
    for (pieces, _), req, w in zip(got, reqs, want):
        assert _result(req, pieces) == w
    assert want[2][3] == "stop" and want[4][3] == "length" and want[3][7]
    assert b.stats["prompt_rows"] > 0 and b.steps < sum(r.result.completion_tokens + 1 for r in reqs)


class Poisoned:
    """The 3-slot model whose batched pass fails when it holds token ``bad`` (as non-finite logits would)."""

    def __init__(self, model, bad):
        self._model, self.bad, self.passes = model, bad, 0

    def __getattr__(self, name):
        return getattr(self._model, name)

    def forward_batch(self, batch):
        self.passes += 1
        if any(self.bad in list(ids) for _, ids in batch):
            raise GlmcpuError("the forward pass produced NaN or infinite logits")
        return self._model.forward_batch(batch)


def test_an_error_ends_only_its_request(alone, slots3):
    tok = alone.tokenizer
    good = tok.encode("床前明月光", add_special_tokens=True)
    bad_id = tok.encode("夜来风雨声", add_special_tokens=False)[-1]
    assert bad_id not in good
    alone.reset()
    want = "".join(run(alone, GenerationRequest(good, SamplingParams(max_new_tokens=20, temperature=0))))
    slots3.reset()
    b = Batcher(Poisoned(slots3, bad_id), prefill_chunk=64)
    try:
        reqs = [GenerationRequest(good, SamplingParams(max_new_tokens=20, temperature=0)),
                GenerationRequest(good[:2] + [bad_id], SamplingParams(max_new_tokens=5)),
                GenerationRequest([5] * 300, SamplingParams(max_new_tokens=5))]  # longer than the context
        got = _through(b, reqs)
        assert got[0][1] is None and "".join(got[0][0]) == want
        assert isinstance(got[1][1], GlmcpuError) and "NaN" in str(got[1][1])
        assert isinstance(got[2][1], GlmcpuError) and "context holds 256" in str(got[2][1])
        assert b.stats["retries"] >= 1 and b.pending == 0
        again = _through(b, [GenerationRequest(good, SamplingParams(max_new_tokens=20, temperature=0))])
        assert "".join(again[0][0]) == want  # the loop goes on
    finally:
        b.close()


class Gate:
    """A model whose batched passes each wait for a permit: requests stay running as long as the test wants."""

    def __init__(self, model):
        self._model, self.permits, self.entered = model, threading.Semaphore(0), threading.Event()

    def __getattr__(self, name):
        return getattr(self._model, name)

    def forward_batch(self, batch):
        self.entered.set()
        assert self.permits.acquire(timeout=60)
        return self._model.forward_batch(batch)


def _until(gate, cond, what):
    """Let the gated batcher take steps one at a time until ``cond()``."""
    deadline = time.monotonic() + 60
    while not cond():
        assert time.monotonic() < deadline, what
        gate.permits.release(1)
        time.sleep(0.005)


def test_batcher_slot_choice_queue_and_cancel(slots3):
    slots3.reset()
    gate = Gate(slots3)
    b = Batcher(gate, max_queue=1)
    tok = slots3.tokenizer
    say = lambda text: tok.encode(text, add_special_tokens=True)  # noqa: E731
    nothing = (lambda p: None, lambda e: None)
    try:
        turn1 = say("床前明月光，疑是地上霜。")
        first = b.submit(GenerationRequest(turn1, SamplingParams(max_new_tokens=4, temperature=0)), *nothing)
        _until(gate, lambda: b.pending == 0, "the first turn did not end")
        assert first.request.result.finish_reason == "length"
        # two other chats take the empty slots (sharing only [gMASK] sop with the first turn's
        # slot does not count), then the conversation's next turn goes back to its slot
        others = [b.submit(GenerationRequest(say(p), SamplingParams(max_new_tokens=200, temperature=1.0, seed=1)),
                           *nothing) for p in ("你好", "写诗")]
        turn2 = turn1 + first.request.result.token_ids + tok.encode("举头望明月", add_special_tokens=False)
        nxt = b.submit(GenerationRequest(turn2, SamplingParams(max_new_tokens=200, temperature=1.0, seed=2)),
                       *nothing)
        running = others + [nxt]
        _until(gate, lambda: all(t.slot is not None for t in running), "not all three were admitted")
        assert sorted(t.slot for t in running) == [0, 1, 2] and nxt.slot == first.slot
        assert nxt.request.result.cached_tokens == len(turn1) + 3  # all but the last reply token is cached
        # three running, one may wait, the next is refused
        waiter = b.submit(GenerationRequest(turn1, SamplingParams(max_new_tokens=2)), *nothing)
        with pytest.raises(QueueFull):
            b.submit(GenerationRequest(turn1, SamplingParams(max_new_tokens=2)), *nothing)
        for t in running + [waiter]:   # hang up: every slot is free within a step
            t.cancel()
        _until(gate, lambda: b.pending == 0, "the cancelled requests still hold slots")
        assert all(t.request.result.finish_reason == "cancelled" for t in running + [waiter])
        assert all(t.request.result.completion_tokens < 5 for t in running) and waiter.slot is None
    finally:
        gate.permits.release(10000)
        b.close()


# ---------------------------------------------------------------- the server (--parallel 3)

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
from glmcpu import server as S  # noqa: E402
from test_server import Served  # noqa: E402

NAME = "demo"
SCHEMA = {"type": "json_schema", "json_schema": {"name": "reply", "strict": True, "schema": {
    "type": "object", "properties": {"poem": {"type": "string", "maxLength": 10}}, "required": ["poem"],
    "additionalProperties": False}}}


@pytest.fixture(scope="module")
def par(slots3):
    slots3.reset()
    log = []
    srv = Served(S.create_app(slots3, NAME, max_queue=8, log=log.append))
    srv.model, srv.log, srv.batcher = slots3, log, srv.server.config.app.state.batcher
    srv.client = openai.OpenAI(base_url=srv.base + "/v1", api_key="none", max_retries=0, timeout=120)
    yield srv
    srv.stop()
    assert not srv.batcher.thread.is_alive()  # closed with the app


def _user(text):
    return [{"role": "user", "content": text}]


def _call(srv, kind, kw):
    """One request of ``kind`` (chat / chat-stream / completion / completion-stream) -> comparable dict."""
    if kind == "chat":
        r = srv.client.chat.completions.create(model=NAME, **kw)
        c = r.choices[0]
        lp = [(t.token, t.logprob, [(x.token, x.logprob) for x in t.top_logprobs])
              for t in c.logprobs.content] if c.logprobs else None
        return {"text": c.message.content, "finish": c.finish_reason, "logprobs": lp,
                "usage": (r.usage.prompt_tokens, r.usage.completion_tokens)}
    if kind == "chat-stream":
        chunks = list(srv.client.chat.completions.create(model=NAME, stream=True,
                                                         stream_options={"include_usage": True}, **kw))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        lp = [(t.token, t.logprob, [(x.token, x.logprob) for x in t.top_logprobs])
              for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        return {"text": text, "finish": finish[0], "logprobs": lp or None,
                "usage": (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens)}
    stream = kind == "completion-stream"
    r = srv.client.completions.create(model=NAME, stream=stream, **kw)
    if stream:
        chunks = list(r)
        return {"text": "".join(c.choices[0].text for c in chunks if c.choices),
                "finish": [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason][0]}
    return {"text": r.choices[0].text, "finish": r.choices[0].finish_reason,
            "logprobs": r.choices[0].logprobs.token_logprobs if r.choices[0].logprobs else None,
            "usage": (r.usage.prompt_tokens, r.usage.completion_tokens)}


CALLS = [
    ("chat", dict(messages=_user("床前明月光"), temperature=0, max_tokens=40)),
    ("chat-stream", dict(messages=_user("床前明月光"), temperature=0, max_tokens=40)),
    ("chat-stream", dict(messages=_user("你好"), temperature=0, max_tokens=30, logprobs=True, top_logprobs=2)),
    ("chat", dict(messages=_user("写一首诗"), temperature=0.8, seed=3, max_tokens=30, stop=["，", "。"])),
    ("chat", dict(messages=_user("写一首诗"), temperature=0, max_tokens=5)),
    ("chat", dict(messages=_user("床前明月光"), temperature=1.0, top_p=0.95, seed=0, max_tokens=150,
                  response_format=SCHEMA)),
    ("chat-stream", dict(messages=_user("春天"), temperature=1.0, seed=7, max_tokens=50, presence_penalty=1.0)),
    ("completion", dict(prompt="床前明月光", temperature=0, max_tokens=20, logprobs=2, echo=True)),
    ("completion-stream", dict(prompt="春眠不觉晓，处处闻啼鸟。" * 5, temperature=0, max_tokens=25)),
]


def test_concurrent_requests_equal_one_at_a_time(par, alone):
    serial = [_call(par, kind, kw) for kind, kw in CALLS]
    steps = par.batcher.steps
    with ThreadPoolExecutor(len(CALLS)) as ex:   # all at once, three at a time on the model
        together = list(ex.map(lambda c: _call(par, *c), CALLS))
    assert together == serial
    assert par.batcher.steps - steps < sum(r["usage"][1] for r in serial if "usage" in r)  # they shared passes
    health = httpx.get(par.base + "/health").json()
    assert health["status"] == "ok" and health["slots"] == 3 and health["running"] == health["waiting"] == 0
    assert health["steps"]["steps"] == par.batcher.steps and health["steps"]["decode_rows"] > 0
    # and what one request alone on a one-slot model gives
    alone.reset()
    assert serial[0]["text"] == "".join(alone.chat(_user("床前明月光"), temperature=0, max_new_tokens=40))
    assert serial[1]["text"] == serial[0]["text"] and serial[0]["text"]
    assert serial[2]["logprobs"] and len(serial[2]["logprobs"]) == serial[2]["usage"][1]
    assert serial[3]["finish"] == "stop" and not any(s in serial[3]["text"] for s in "，。")
    assert serial[4]["finish"] == "length" and serial[4]["usage"][1] == 5
    assert serial[5]["finish"] == "stop" and set(json.loads(serial[5]["text"])) == {"poem"}
    assert serial[7]["text"].startswith("床前明月光") and serial[7]["logprobs"][0] is None  # the echoed prompt


def test_prefix_cache_second_turn_lands_in_its_slot(par, alone):
    first = par.client.chat.completions.create(model=NAME, messages=_user("举头望明月"), temperature=0,
                                               max_tokens=12)
    ids = par.model.chat_prompt(_user("举头望明月"))
    slot = next(s for s in range(3) if par.model.slot_tokens[s][:len(ids)] == ids)
    with ThreadPoolExecutor(2) as ex:   # two other chats meanwhile take the other slots
        list(ex.map(lambda p: par.client.chat.completions.create(model=NAME, messages=_user(p), max_tokens=20,
                                                                 temperature=0), ["低头思故乡", "白日依山尽"]))
    turns = _user("举头望明月") + [{"role": "assistant", "content": first.choices[0].message.content}] \
        + _user("再来一首")
    second = par.client.chat.completions.create(model=NAME, messages=turns, temperature=0, max_tokens=12)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens and cached < second.usage.prompt_tokens
    assert par.model.slot_tokens[slot][:second.usage.prompt_tokens] == par.model.chat_prompt(turns)
    alone.reset()  # the same reply as computing the whole prompt afresh
    assert "".join(alone.chat(turns, temperature=0, max_new_tokens=12)) == second.choices[0].message.content


class GatedBatch:
    """The 3-slot demo model whose batched passes each wait for a permit."""

    def __init__(self, model):
        self._model, self.permits = model, threading.Semaphore(0)

    def __getattr__(self, name):
        return getattr(self._model, name)

    def forward_batch(self, batch):
        assert self.permits.acquire(timeout=60)
        return self._model.forward_batch(batch)


def test_disconnect_frees_the_slot_and_a_full_queue_is_503(slots3):
    slots3.reset()
    gated, log = GatedBatch(slots3), []
    app = S.create_app(gated, NAME, max_queue=0, log=log.append)
    srv, batcher = Served(app), app.state.batcher
    body = dict(model=NAME, prompt="床前明月光", temperature=2.0, top_p=1.0, seed=1, max_tokens=60, stream=True)
    results, quit_now = {}, threading.Event()

    def stream(name, hang_up):
        with httpx.Client(base_url=srv.base, timeout=120) as http:
            with http.stream("POST", "/v1/completions", json=body) as r:
                texts = []
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        texts.append(json.loads(line[6:])["choices"][0]["text"])
                        if hang_up and texts[-1] and quit_now.is_set():
                            break
                results[name] = (r.status_code, "".join(texts))

    try:
        threads = [threading.Thread(target=stream, args=(n, n == "quitter")) for n in ("a", "b", "quitter")]
        for t in threads:
            t.start()
        _until(gated, lambda: batcher.pending == 3, "three streams did not start")
        with httpx.Client(base_url=srv.base, timeout=120) as http:
            busy = http.post("/v1/completions", json=dict(body, stream=False))
            assert busy.status_code == 503 and busy.headers["Retry-After"]
            assert busy.json()["error"]["code"] == "server_busy"
            # the quitter hangs up at its next piece: its slot is free while the others still run
            quit_now.set()
            _until(gated, lambda: batcher.pending == 2, "the quitter's slot was not freed")
            assert "quitter" in results and "a" not in results and "b" not in results
            done = []
            t = threading.Thread(target=lambda: done.append(http.post("/v1/completions", json=dict(
                body, stream=False, temperature=0, max_tokens=8))))
            t.start()
            _until(gated, lambda: done, "the next request did not complete")
            assert done[0].status_code == 200 and done[0].json()["usage"]["completion_tokens"] == 8
            assert "a" not in results and "b" not in results  # it ran while the two streams went on
        gated.permits.release(100000)
        for t in threads:
            t.join(60)
        assert results["a"][0] == results["b"][0] == 200 and results["a"][1] == results["b"][1]
        quit_line = [x for x in log if x.startswith("POST /v1/completions 200") and "completion_tokens=" in x]
        assert len(quit_line) >= 3
    finally:
        gated.permits.release(100000)
        srv.stop()


def test_sse_events_are_one_line_for_any_splitter():
    text = "a\u2028b\u2029c\x85d\x1ce\re\nf"   # a sampled reply may hold any of these
    event = S._sse({"text": text})
    assert event.endswith("\n\n") and len(event[:-2].splitlines()) == 1
    assert json.loads(event[6:]) == {"text": text}


def test_bad_parallel_arguments_are_clear_errors():
    from glmcpu.cli import build_parser
    a = build_parser().parse_args(["serve", "--parallel", "4", "--prefill-chunk", "64"])
    assert (a.parallel, a.prefill_chunk) == (4, 64)
    assert build_parser().parse_args(["serve"]).parallel == 1
    for argv, msg in ((["--parallel", "0"], "--parallel"), (["--prefill-chunk", "0"], "--prefill-chunk")):
        with pytest.raises(GlmcpuError, match=msg):
            S.serve_main(build_parser().parse_args(["serve"] + argv))
    from glmcpu.batcher import passive_openmp
    policy = os.environ.get("OMP_WAIT_POLICY")
    assert passive_openmp() is False and os.environ.get("OMP_WAIT_POLICY") == policy  # numba already started
    with pytest.raises(GlmcpuError, match="prefill_chunk must be a positive"):
        Batcher(glmcpu.load(glmcpu.demo_model_path(), n_ctx=16, n_slots=2), prefill_chunk=0)
