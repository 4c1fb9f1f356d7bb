"""The OpenAI-compatible server (glmcpu/server.py) against the official `openai` client: the real
uvicorn server on a free 127.0.0.1 port, the built-in demo model (chatglm3) and golden tiny models."""
import asyncio
import json
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
import uvicorn  # noqa: E402

import glmcpu  # noqa: E402
from glmcpu.generate import SamplingParams, StreamDecoder  # noqa: E402
from glmcpu.requests import CompletionResult, GenerationRequest, StopMatcher, run  # noqa: E402
from glmcpu import server as S  # noqa: E402

KEY = "sk-test-key"
NAME = "demo"
POEM = [{"role": "user", "content": "床前明月光"}]


class Served:
    """A uvicorn server for ``app`` in a thread, on a free port of 127.0.0.1."""

    def __init__(self, app):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        self.base = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def demo():
    model = glmcpu.load(glmcpu.demo_model_path(), n_ctx=256, threads=1)  # tiny: one thread is fastest
    log = []
    srv = Served(S.create_app(model, NAME, api_key=KEY, max_queue=2, max_body=64 * 1024, log=log.append))
    srv.model, srv.log = model, log
    srv.client = openai.OpenAI(base_url=srv.base + "/v1", api_key=KEY, max_retries=0, timeout=120)
    srv.http = httpx.Client(base_url=srv.base, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
    yield srv
    srv.http.close()
    srv.stop()


def chat(srv, **kw):
    kw.setdefault("model", NAME)
    kw.setdefault("messages", POEM)
    return srv.client.chat.completions.create(**kw)


def stream_chat(srv, **kw):
    kw.setdefault("model", NAME)
    kw.setdefault("messages", POEM)
    chunks = list(srv.client.chat.completions.create(stream=True, **kw))
    return chunks, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def assert_error(r, status, param=None, code=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code
    return err


# ---------------------------------------------------------------- the happy paths

def test_health_and_models(demo):
    assert httpx.get(demo.base + "/health").json() == {"status": "ok"}  # no key needed
    assert [m.id for m in demo.client.models.list().data] == [NAME]


def test_chat_greedy_equals_model_chat_and_usage(demo):
    r = chat(demo, temperature=0, max_tokens=40)
    want = "".join(demo.model.chat(POEM, temperature=0, max_new_tokens=40))
    stats = demo.model.last_stats
    assert r.choices[0].message.content == want and want
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == ("stop" if stats["finish"] == "stop" else "length")
    assert r.usage.prompt_tokens == len(demo.model.chat_prompt(POEM))
    assert r.usage.completion_tokens == stats["new_tokens"]
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.model == NAME and r.id.startswith("chatcmpl-")
    line = [x for x in demo.log if x.startswith("POST /v1/chat/completions 200")][-1]
    assert f"prompt_tokens={r.usage.prompt_tokens} completion_tokens={r.usage.completion_tokens}" in line


def test_stream_joins_to_non_stream_with_same_seed(demo):
    kw = dict(temperature=0.9, top_p=0.9, seed=11, max_tokens=30)
    full = chat(demo, **kw)
    chunks, text = stream_chat(demo, stream_options={"include_usage": True}, **kw)
    assert text == full.choices[0].message.content and text
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == full.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens
    # the raw event stream ends with [DONE]; without include_usage there is no usage chunk
    with demo.http.stream("POST", "/v1/chat/completions", json=dict(model=NAME, messages=POEM, stream=True,
                                                                    **kw)) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert all("usage" not in json.loads(e) for e in events[:-1])


def test_seed_determinism(demo):
    kw = dict(temperature=1.0, top_p=1.0, seed=1234, max_tokens=20)
    a, b = chat(demo, **kw), chat(demo, **kw)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.completion_tokens == b.usage.completion_tokens


def test_completions_string_and_token_prompt(demo):
    tok = demo.model.tokenizer
    want = demo.model.generate("床前明月光", stream=False, max_new_tokens=25, temperature=0)
    r = demo.client.completions.create(model=NAME, prompt="床前明月光", max_tokens=25, temperature=0)
    assert r.choices[0].text == want and want
    ids = tok.encode("床前明月光", add_special_tokens=True)
    assert r.usage.prompt_tokens == len(ids)
    r2 = demo.client.completions.create(model=NAME, prompt=ids, max_tokens=25, temperature=0)
    assert r2.choices[0].text == want
    pieces = [c.choices[0].text for c in demo.client.completions.create(
        model=NAME, prompt=ids, max_tokens=25, temperature=0, stream=True)]
    assert "".join(pieces) == want


def test_max_tokens_clipped_and_length(demo):
    r = chat(demo, temperature=1.5, top_p=1.0, seed=1, max_tokens=3)
    assert r.usage.completion_tokens <= 3
    r = demo.client.completions.create(model=NAME, prompt="床前明月光", temperature=1.5, top_p=1.0, seed=1,
                                       max_tokens=5)
    assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"
    # max_tokens beyond the context is clipped to what is left, not refused
    r = demo.client.completions.create(model=NAME, prompt="床前明月光", max_tokens=100000, temperature=0)
    assert r.usage.total_tokens <= demo.model.n_ctx


def test_stop_string_across_token_boundary(demo):
    chunks, text = stream_chat(demo, temperature=0, max_tokens=40)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    # a stop string made of the end of one token's text and the start of the next one
    i = next(i for i in range(1, len(pieces) - 1) if pieces[i] and pieces[i + 1].strip())
    stop = pieces[i][-1] + pieces[i + 1][0]
    want = text[:text.find(stop)]
    r = chat(demo, temperature=0, max_tokens=40, stop=[stop, "never-there"])
    assert r.choices[0].message.content == want and r.choices[0].finish_reason == "stop"
    _, streamed = stream_chat(demo, temperature=0, max_tokens=40, stop=stop)
    assert streamed == want and stop not in streamed


# ---------------------------------------------------------------- errors

def test_wrong_or_missing_api_key_401(demo):
    bad = openai.OpenAI(base_url=demo.base + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.models.list()
    assert e.value.status_code == 401
    assert_error(httpx.post(demo.base + "/v1/chat/completions", json={}), 401, code="invalid_api_key")


def test_cors_origins(demo):
    """--cors-origin: a listed origin's preflight (which carries no API key) succeeds and its
    requests get the Access-Control-Allow-Origin header; other origins get none; without the
    option no CORS header at all."""
    srv = Served(S.create_app(demo.model, NAME, api_key=KEY, cors_origins=["http://app.test"], log=lambda line: None))
    try:
        with httpx.Client(base_url=srv.base, timeout=60) as h:
            pre = h.options("/v1/chat/completions", headers={
                "Origin": "http://app.test", "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type"})
            assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://app.test"
            other = h.options("/v1/chat/completions", headers={"Origin": "http://evil.test",
                                                               "Access-Control-Request-Method": "POST"})
            assert "access-control-allow-origin" not in other.headers
            r = h.get("/v1/models", headers={"Origin": "http://app.test", "Authorization": f"Bearer {KEY}"})
            assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://app.test"
            assert h.get("/v1/models", headers={"Origin": "http://app.test"}).status_code == 401  # key still needed
    finally:
        srv.stop()
    r = demo.http.get("/v1/models", headers={"Origin": "http://app.test"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_unknown_model_404(demo):
    with pytest.raises(openai.NotFoundError) as e:
        chat(demo, model="gpt-4o")
    assert e.value.body["code"] == "model_not_found"
    assert_error(demo.http.post("/v1/completions", json={"model": "x", "prompt": "a"}), 404, param="model")
    assert_error(demo.http.get("/v1/nothing"), 404)


def test_body_over_limit_413(demo):
    big = {"model": NAME, "messages": [{"role": "user", "content": "a" * 70000}]}
    assert_error(demo.http.post("/v1/chat/completions", json=big), 413, code="request_too_large")

    def chunked():  # no Content-Length: the bytes actually received count
        yield json.dumps(big).encode()
    assert_error(demo.http.post("/v1/chat/completions", content=chunked(),
                                headers={"Content-Type": "application/json"}), 413)


@pytest.mark.parametrize("body,param", [
    (b"{not json", None),
    ({"model": NAME, "messages": []}, "messages"),
    ({"model": NAME, "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": NAME, "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"model": NAME, "messages": POEM, "temperature": "hot"}, "temperature"),
    ({"model": NAME, "messages": POEM, "max_tokens": "10"}, "max_tokens"),
    ({"model": NAME, "messages": POEM, "max_tokens": 0}, "max_tokens"),
    ({"model": NAME, "messages": POEM, "n": 2}, "n"),
    ({"model": NAME, "messages": POEM, "stop": 7}, "stop"),
    ({"model": NAME, "messages": [{"role": "assistant", "content": "hi"}]}, "messages"),
    ({"messages": POEM}, "model"),
    ([1, 2], None),
])
def test_bad_requests_400(demo, body, param):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = demo.http.post("/v1/chat/completions", content=content, headers={"Content-Type": "application/json"})
    err = assert_error(r, 400)
    if param is not None:
        assert err["param"] == param


def test_unknown_options_are_refused_not_ignored(demo):
    for extra, param in [({"response_format": {"type": "xml"}}, "response_format"), ({"n": 3}, "n"),
                         ({"tool_choice": "sometimes"}, "tool_choice")]:
        r = demo.http.post("/v1/chat/completions", json=dict(model=NAME, messages=POEM, **extra))
        assert_error(r, 400, param=param)
    r = chat(demo, response_format={"type": "text"}, max_tokens=2, temperature=0)  # the default is fine
    assert r.usage.completion_tokens <= 2


def _reference_logprobs(model, prompt_ids, generated):
    """log_softmax (float64) of the logits one forward pass over prompt + reply gives, at the
    positions that predicted each generated token: the independent reference."""
    model.reset()
    logits = model.forward(list(prompt_ids) + list(generated[:-1]))[len(prompt_ids) - 1:]
    model.reset()
    x = logits.astype(np.float64)
    return x - (x.max(axis=1, keepdims=True) + np.log(np.exp(x - x.max(axis=1, keepdims=True)).sum(axis=1, keepdims=True)))


def test_chat_logprobs_are_the_model_log_probabilities(demo):
    r = chat(demo, logprobs=True, top_logprobs=3, temperature=0, max_tokens=12)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens and content
    assert "".join(e.token for e in content) == r.choices[0].message.content
    model = glmcpu.load(glmcpu.demo_model_path(), n_ctx=256)
    prompt = model.chat_prompt(POEM)
    gen = [e["id"] for e in demo_last_logprobs(demo, prompt, 12)]
    ref = _reference_logprobs(model, prompt, gen)
    for i, e in enumerate(content):
        assert abs(e.logprob - ref[i, gen[i]]) < 1e-3, i
        assert len(e.top_logprobs) == 3 and abs(e.top_logprobs[0].logprob - e.logprob) < 1e-12  # greedy: the best
        best = np.argsort(-ref[i], kind="stable")[:3]
        assert [abs(t.logprob - ref[i, j]) < 1e-3 for t, j in zip(e.top_logprobs, best)] == [True] * 3
        assert e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob >= e.top_logprobs[2].logprob
        assert e.bytes == list(e.token.encode())


def demo_last_logprobs(demo, prompt, n):
    """The ids of a greedy reply of ``n`` tokens, through the same request path the server uses."""
    req = GenerationRequest(prompt, SamplingParams(max_new_tokens=n, temperature=0), logprobs=0)
    for _ in run(demo.model, req):
        pass
    return req.result.logprobs


def test_streamed_logprobs_equal_the_whole_reply(demo):
    kw = dict(logprobs=True, top_logprobs=2, temperature=0.8, seed=5, max_tokens=16)
    full = chat(demo, **kw).choices[0].logprobs.content
    chunks, text = stream_chat(demo, **kw)
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, e.logprob, [t.token for t in e.top_logprobs]) for e in streamed] == \
        [(e.token, e.logprob, [t.token for t in e.top_logprobs]) for e in full]
    assert "".join(e.token for e in streamed) == text
    plain = chat(demo, temperature=0, max_tokens=3)
    assert plain.choices[0].logprobs is None  # none unless asked


def test_completion_logprobs_and_bad_values(demo):
    r = demo.client.completions.create(model=NAME, prompt="床前明月光", max_tokens=10, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text and len(lp.tokens) == r.usage.completion_tokens
    assert all(len(t) == 2 and max(t.values()) >= v - 1e-9 for t, v in zip(lp.top_logprobs, lp.token_logprobs))
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    for path, extra, param in [("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
                               ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs"),
                               ("/v1/completions", {"logprobs": 6}, "logprobs")]:
        body = dict(model=NAME, **extra, **({"messages": POEM} if "chat" in path else {"prompt": "a"}))
        assert_error(demo.http.post(path, json=body), 400, param=param)


def test_completion_echo_with_and_without_logprobs(demo):
    prompt = "床前明月光"
    plain = demo.client.completions.create(model=NAME, prompt=prompt, max_tokens=8, temperature=0)
    echo = demo.client.completions.create(model=NAME, prompt=prompt, max_tokens=8, temperature=0, echo=True)
    assert echo.choices[0].text == prompt + plain.choices[0].text
    assert echo.usage.completion_tokens == plain.usage.completion_tokens
    streamed = demo.client.completions.create(model=NAME, prompt=prompt, max_tokens=8, temperature=0, echo=True,
                                              stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == echo.choices[0].text
    r = demo.client.completions.create(model=NAME, prompt=prompt, max_tokens=8, temperature=0, echo=True, logprobs=1)
    lp = r.choices[0].logprobs
    ids = demo.model.tokenizer.encode(prompt, add_special_tokens=True)
    n_prompt = len(ids)
    assert lp.token_logprobs[0] is None and len(lp.tokens) == n_prompt + r.usage.completion_tokens
    assert "".join(lp.tokens[n_prompt:]) == plain.choices[0].text
    assert lp.text_offset == sorted(lp.text_offset)
    model = glmcpu.load(glmcpu.demo_model_path(), n_ctx=256)  # the prompt's logprobs: one forward pass
    x = model.forward(ids).astype(np.float64)
    ref = x - (x.max(axis=1, keepdims=True) + np.log(np.exp(x - x.max(axis=1, keepdims=True)).sum(axis=1, keepdims=True)))
    for i in range(1, n_prompt):
        assert abs(lp.token_logprobs[i] - ref[i - 1, ids[i]]) < 1e-4, i
    s = list(demo.client.completions.create(model=NAME, prompt=prompt, max_tokens=8, temperature=0, echo=True,
                                            logprobs=1, stream=True))
    assert [t for c in s if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens] == lp.tokens
    assert "".join(c.choices[0].text for c in s if c.choices) == r.choices[0].text


def test_sampling_options(demo):
    greedy = demo.client.completions.create(model=NAME, prompt="床前明月光", max_tokens=20, temperature=0)
    top0 = demo.client.completions.create(model=NAME, prompt="床前明月光", max_tokens=20, top_p=0, seed=-5)
    assert top0.choices[0].text == greedy.choices[0].text  # top_p 0 keeps only the best token
    text = greedy.choices[0].text
    assert any(text.count(c) > 1 for c in set(text) if c.strip())  # greedy repeats itself here...
    pen = demo.client.completions.create(model=NAME, prompt="床前明月光", max_tokens=20, temperature=0,
                                         frequency_penalty=2.0, presence_penalty=1.0)
    assert pen.choices[0].text != text  # ...and the penalties change that


def test_penalty_arithmetic():
    import numpy as np
    from glmcpu.requests import _penalize
    logits = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    out = _penalize(logits, {1: 2, 3: 1}, 0.5, 0.25)
    assert out.tolist() == [1.0, 2.0 - 0.5 - 0.5, 3.0, 4.0 - 0.5 - 0.25] and logits[1] == 2.0


def test_prompt_longer_than_context_400(demo):
    with pytest.raises(openai.BadRequestError) as e:
        chat(demo, messages=[{"role": "user", "content": "明月" * 400}])
    assert e.value.body["code"] == "context_length_exceeded"
    r = demo.http.post("/v1/completions", json={"model": NAME, "prompt": [5] * 300})
    assert_error(r, 400, code="context_length_exceeded")
    assert_error(demo.http.post("/v1/completions", json={"model": NAME, "prompt": [10 ** 9]}), 400,
                 param="prompt")


class Gated:
    """The demo model whose forward passes each wait for a permit: a request that stays running
    for as long as the test wants, whatever the machine's speed."""

    def __init__(self, model):
        self._model, self.permits, self.entered = model, threading.Semaphore(0), threading.Event()
        self.calls = {}  # forward passes per worker thread (each request runs in its own thread)

    def __getattr__(self, name):
        return getattr(self._model, name)

    def forward(self, *args, **kw):
        self.entered.set()
        assert self.permits.acquire(timeout=60)
        me = threading.current_thread()  # the object, not the ident: idents are reused
        self.calls[me] = self.calls.get(me, 0) + 1
        return self._model.forward(*args, **kw)


def test_busy_server_answers_503_with_retry_after(demo):
    gated = Gated(demo.model)  # a second app on the same (idle) model, with no room to wait
    srv = Served(S.create_app(gated, NAME, max_queue=0, log=lambda line: None))
    try:
        with httpx.Client(base_url=srv.base, timeout=120) as http:
            body = dict(model=NAME, prompt="床前明月光", max_tokens=3, temperature=0)
            first = []
            t = threading.Thread(target=lambda: first.append(http.post("/v1/completions", json=body)))
            t.start()
            assert gated.entered.wait(60)  # the first request is on the model
            busy = http.post("/v1/completions", json=body)
            gated.permits.release(1000)
            t.join(60)
            err = assert_error(busy, 503, code="server_busy")
            assert busy.headers["Retry-After"] and err["type"] == "server_error"
            assert first[0].status_code == 200 and first[0].json()["usage"]["completion_tokens"] >= 1
            assert http.post("/v1/completions", json=body).status_code == 200  # free again
    finally:
        gated.permits.release(1000)
        srv.stop()


def test_disconnect_mid_stream_stops_generation_and_frees_the_model(demo):
    gated, log = Gated(demo.model), []
    srv = Served(S.create_app(gated, NAME, log=log.append))
    try:
        with httpx.Client(base_url=srv.base, timeout=120) as http:
            body = dict(model=NAME, prompt="床前明月光", temperature=2.0, top_p=1.0, seed=1, max_tokens=60)
            gated.permits.release(6)  # the prefill and 5 decode steps, then it waits
            with http.stream("POST", "/v1/completions", json=dict(body, stream=True)) as r:
                for line in r.iter_lines():
                    if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["text"]:
                        break  # got a piece: hang up
            deadline = time.monotonic() + 60
            while not log and time.monotonic() < deadline:
                time.sleep(0.02)
            assert log and log[0].startswith("POST /v1/completions 200")
            gated.permits.release(1000)  # let it run: only a pass already under way may finish
            again = http.post("/v1/completions", json=dict(body, temperature=0, max_tokens=10))
            assert list(gated.calls.values())[0] <= 7  # 60 tokens were asked for; it stopped within one
            assert again.status_code == 200  # the model is free and unharmed
            assert again.json()["choices"][0]["text"] == demo.model.generate(
                "床前明月光", stream=False, temperature=0, max_new_tokens=10)
    finally:
        gated.permits.release(1000)
        srv.stop()


# ---------------------------------------------------------------- tools

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """tiny(family) -> a server for a small random checkpoint of ``family`` with its real tokenizer."""
    import helpers
    from glmcpu.convert import convert
    servers, root = {}, tmp_path_factory.mktemp("server-models")

    def get(case):
        if case not in servers:
            out = str(root / f"{case}.glmq")
            convert(helpers.random_checkpoint(str(root / case), family=case), out, dtype="f32", progress=False)
            model = glmcpu.load(out, n_ctx=512, threads=1)
            srv = Served(S.create_app(model, case, log=lambda line: None))
            srv.model = model
            srv.client = openai.OpenAI(base_url=srv.base + "/v1", api_key="none", max_retries=0, timeout=120)
            servers[case] = srv
        return servers[case]

    yield get
    for srv in servers.values():
        srv.stop()


WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "天气",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
TOOL_TURNS = [
    {"role": "user", "content": "北京天气怎么样？"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "北京"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 22}'},
]


@pytest.mark.parametrize("family", ["chatglm3", "glm4"])
def test_tool_conversation_prompt(tiny, family):
    srv = tiny(family)
    r = srv.client.chat.completions.create(model=family, messages=TOOL_TURNS, tools=WEATHER,
                                           max_tokens=3, temperature=0)
    assert r.usage.prompt_tokens == len(srv.model.chat_prompt(TOOL_TURNS, tools=WEATHER))
    assert r.usage.prompt_tokens > len(srv.model.chat_prompt(TOOL_TURNS[:1]))
    with pytest.raises(openai.BadRequestError) as e:  # a tool_choice naming no tool
        srv.client.chat.completions.create(model=family, messages=TOOL_TURNS, tools=WEATHER, max_tokens=2,
                                           tool_choice={"type": "function", "function": {"name": "nope"}})
    assert e.value.body["param"] == "tools"


def test_family_without_tools_400(tiny):
    srv = tiny("chatglm2")
    with pytest.raises(openai.BadRequestError) as e:
        srv.client.chat.completions.create(model="chatglm2", messages=POEM, tools=WEATHER, max_tokens=2)
    assert e.value.body["param"] == "tools"
    r = srv.client.chat.completions.create(model="chatglm2", messages=POEM, max_tokens=2)
    assert r.usage.completion_tokens <= 2  # the same request without tools is fine


def _result(raw, finish="stop"):
    res = CompletionResult()
    res.text = res.raw_text = raw
    res.finish_reason, res.prompt_tokens, res.completion_tokens = finish, 10, 7
    return res


def test_tool_call_reply_becomes_tool_calls():
    raw = "get_weather\n```python\ntool_call(city='北京')\n```"
    body = S._chat_body("chatcmpl-x", "m", _result(raw), WEATHER, "chatglm3")
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "北京"}'}
    assert call["id"].startswith("call_") and choice["message"]["content"] is None
    plain = S._chat_body("c", "m", _result("\n晴天"), WEATHER, "glm4")["choices"][0]
    assert plain["finish_reason"] == "stop" and plain["message"]["content"] == "\n晴天"
    assert "tool_calls" not in plain["message"]


class FakeJob:
    def __init__(self, pieces, res):
        self._pieces, self.loop = pieces, asyncio.get_running_loop()
        self.request = GenerationRequest([1], SamplingParams())  # no logprobs asked
        self.request.result = res
        self.done = self.loop.create_future()
        self.done.set_result(res)

    async def pieces(self):
        for p in self._pieces:
            yield p


def _events(pieces, res, tools, family):
    async def go():
        return [e async for e in S._chat_stream(FakeJob(pieces, res), "c", "m", True, tools, family)]
    return [json.loads(e[6:]) for e in asyncio.run(go()) if e != "data: [DONE]\n\n"]


def test_streamed_tool_call_deltas():
    raw = 'get_weather\n{"city": "北京"}'
    ev = _events(["get_", "weather\n", '{"city": ', '"北京"}'], _result(raw), WEATHER, "glm4")
    deltas = [e["choices"][0]["delta"] for e in ev if e["choices"]]
    assert not any(d.get("content") for d in deltas)  # a call is never streamed as content
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls[0]["id"].startswith("call_") and calls[0]["function"]["name"] == "get_weather"
    assert json.loads("".join(c["function"]["arguments"] for c in calls)) == {"city": "北京"}
    assert ev[-2]["choices"][0]["finish_reason"] == "tool_calls" and ev[-1]["usage"]["total_tokens"] == 17
    # a reply that stops looking like a call is streamed as content, all of it
    ev = _events(["get", "ting warm", "er"], _result("getting warmer"), WEATHER, "glm4")
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in ev if e["choices"]) == "getting warmer"


# ---------------------------------------------------------------- pieces

def test_stop_matcher_holds_back_partial_stop():
    m = StopMatcher(["END"])
    assert m.feed("abc E") == "abc "
    assert m.feed("N") == ""
    assert m.feed("x") == "ENx"
    assert m.feed("yE") == "y" and m.feed("ND tail") == "" and m.hit
    assert m.text == "abc ENxy"


def test_run_cancel_stops_within_one_token(demo):
    ids = demo.model.tokenizer.encode("床前明月光", add_special_tokens=True)
    req = GenerationRequest(ids, SamplingParams(max_new_tokens=60, temperature=1.5, top_p=1.0, seed=1))
    seen = []
    for piece in run(demo.model, req, cancelled=lambda: len(seen) >= 3):
        seen.append(piece)
    assert req.result.finish_reason == "cancelled" and req.result.completion_tokens <= 4


def test_scheduler_queue_full_503():
    async def go():
        s = S.Scheduler(max_queue=1)
        await s.acquire()                      # running
        waiting = asyncio.ensure_future(s.acquire())
        await asyncio.sleep(0)
        with pytest.raises(S.APIError) as e:   # one running + one waiting: full
            await s.acquire()
        s.release()
        await waiting
        s.release()
        return e.value
    err = asyncio.run(go())
    assert err.status == 503 and err.headers["Retry-After"]


def test_stream_decoder_contract_unchanged(demo):
    # the server's pieces rely on StreamDecoder joining to the decoded ids
    tok = demo.model.tokenizer
    ids = tok.encode("床前明月光，疑是地上霜。")
    d = StreamDecoder(tok)
    assert "".join(d.push(i) for i in ids) + d.flush() == tok.decode(ids, skip_special_tokens=True)


# ---------------------------------------------------------------- constrained replies (llguidance)

POEM_SCHEMA = {"type": "object", "properties": {"poem": {"type": "string", "maxLength": 10},
                                                "n": {"type": "integer", "minimum": 0, "maximum": 99}},
               "required": ["poem", "n"], "additionalProperties": False}


def _json_schema(schema, strict=True):
    return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema, "strict": strict}}


def test_json_schema_replies_are_valid_and_stream_the_same(demo):
    pytest.importorskip("llguidance")
    jsonschema = pytest.importorskip("jsonschema")
    for seed in range(3):
        kw = dict(temperature=1.0, top_p=0.95, seed=seed, max_tokens=150, response_format=_json_schema(POEM_SCHEMA))
        r = chat(demo, **kw)
        text = r.choices[0].message.content
        assert r.choices[0].finish_reason == "stop", text
        jsonschema.validate(json.loads(text), POEM_SCHEMA)
        chunks, streamed = stream_chat(demo, **kw)
        assert streamed == text
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    # log-probabilities stay the model's (from the logits before the mask): finite, joining to the reply
    r = chat(demo, temperature=1.0, seed=0, max_tokens=150, logprobs=True, top_logprobs=2,
             response_format=_json_schema(POEM_SCHEMA))
    lp = r.choices[0].logprobs.content
    assert "".join(e.token for e in lp) == r.choices[0].message.content
    assert all(np.isfinite(e.logprob) and e.logprob <= e.top_logprobs[0].logprob + 1e-9 for e in lp)
    # the legacy completions endpoint takes it too
    r = demo.client.completions.create(model=NAME, prompt="床前明月光", max_tokens=150, seed=1, temperature=1.0,
                                       extra_body={"response_format": _json_schema(POEM_SCHEMA, strict=False)})
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].text), POEM_SCHEMA)


def test_json_object_reply_is_an_object(demo):
    """The poem model seldom closes a free string within the budget: every reply that ends is one
    JSON object, and every reply opens one."""
    pytest.importorskip("llguidance")
    for seed in range(3):
        r = chat(demo, temperature=0.8, seed=seed, max_tokens=40, response_format={"type": "json_object"})
        text = r.choices[0].message.content
        assert text.lstrip().startswith("{")
        if r.choices[0].finish_reason == "stop":
            assert isinstance(json.loads(text), dict)
        else:
            assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 40
    r = chat(demo, temperature=0, max_tokens=60, response_format=_json_schema({"enum": ["月", "光"]}))
    assert json.loads(r.choices[0].message.content) in ("月", "光") and r.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("rf,where", [
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "foo"}}}, "Invalid type"),
    (_json_schema({"type": "object", "not": {"required": ["a"]}}), "Unimplemented"),
    (_json_schema({"type": "string", "pattern": "(?<=a)b"}), "look-around"),
    (_json_schema({"$ref": "https://example.com/schema.json"}), "example.com"),
    ({"type": "json_schema"}, "json_schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}, "schema"),
    ({"type": "json_schema", "json_schema": {"name": 5, "schema": {}}}, "name"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {}, "strict": "yes"}}, "strict"),
    ({"type": "xml"}, "xml"),
    ({}, "type"),
    ("json_object", None),
])
def test_bad_response_format_400(demo, rf, where):
    pytest.importorskip("llguidance")
    for path, extra in (("/v1/chat/completions", {"messages": POEM}), ("/v1/completions", {"prompt": "床前"})):
        r = demo.http.post(path, json=dict(model=NAME, response_format=rf, **extra))
        err = assert_error(r, 400, param="response_format")
        assert where is None or where in err["message"], err


def test_constrained_request_without_llguidance_is_a_clear_400(demo, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "llguidance", None)  # as if the extra were not installed
    err = assert_error(demo.http.post("/v1/chat/completions", json=dict(
        model=NAME, messages=POEM, response_format={"type": "json_object"})), 400, param="response_format")
    assert 'pip install "glmcpu[server]"' in err["message"]
    assert chat(demo, max_tokens=2, temperature=0).usage.completion_tokens <= 2  # plain requests need none


FORCE_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "天气", "parameters": {
        "type": "object", "properties": {"city": {"enum": ["北京", "上海"]}, "days": {"type": "integer"},
                                         "hourly": {"type": "boolean"}},
        "required": ["city"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "now", "parameters": {
        "type": "object", "properties": {"tz": {"enum": ["UTC", "CST"]}}, "additionalProperties": False}}},
]
ASK = [{"role": "user", "content": "北京天气怎么样？"}]


@pytest.mark.parametrize("family", ["chatglm3", "glm4"])
def test_tool_choice_forces_a_call(tiny, family):
    pytest.importorskip("llguidance")
    jsonschema = pytest.importorskip("jsonschema")
    srv = tiny(family)
    params = {t["function"]["name"]: t["function"]["parameters"] for t in FORCE_TOOLS}
    for choice in ("required", {"type": "function", "function": {"name": "now"}},
                   {"type": "function", "function": {"name": "get_weather"}}):
        for seed in range(3):
            kw = dict(model=family, messages=ASK, tools=FORCE_TOOLS, tool_choice=choice, temperature=1.0, seed=seed,
                      max_tokens=120)
            r = srv.client.chat.completions.create(**kw)
            ch = r.choices[0]
            assert ch.finish_reason == "tool_calls" and len(ch.message.tool_calls) == 1, ch.message.content
            call = ch.message.tool_calls[0].function
            if isinstance(choice, dict):
                assert call.name == choice["function"]["name"]
            jsonschema.validate(json.loads(call.arguments), params[call.name])
            chunks = list(srv.client.chat.completions.create(stream=True, **kw))
            deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
            assert deltas[0].function.name == call.name
            assert json.loads("".join(d.function.arguments or "" for d in deltas)) == json.loads(call.arguments)
            assert chunks[-1].choices[0].finish_reason == "tool_calls"
            assert not any(c.choices[0].delta.content for c in chunks if c.choices)


def test_tool_choice_auto_with_a_json_format_allows_either(tiny):
    pytest.importorskip("llguidance")
    srv = tiny("glm4")
    tools = FORCE_TOOLS[1:]
    for seed in range(3):
        r = srv.client.chat.completions.create(model="glm4", messages=ASK, tools=tools, temperature=1.0, seed=seed,
                                               max_tokens=60, response_format=_json_schema({"enum": [1, 2]}))
        ch = r.choices[0]
        if ch.finish_reason == "tool_calls":
            assert ch.message.tool_calls[0].function.name == "now"
        else:
            assert ch.finish_reason == "stop" and json.loads(ch.message.content) in (1, 2)


def test_forced_tool_call_bad_requests_400(tiny):
    pytest.importorskip("llguidance")
    for family in ("chatglm3", "glm4"):
        srv = tiny(family)
        base = dict(model=family, messages=ASK, max_tokens=5)
        cases = [
            (dict(tool_choice="required"), "tool_choice"),  # no tools to call
            (dict(tools=FORCE_TOOLS, tool_choice="always"), "tool_choice"),
            (dict(tools=FORCE_TOOLS, tool_choice="required", response_format={"type": "json_object"}),
             "response_format"),
        ]
        if family == "chatglm3":  # arguments are Python keywords there
            odd = [{"type": "function", "function": {"name": "f", "parameters": {
                "type": "object", "properties": {"max-days": {"type": "integer"}}, "required": ["max-days"]}}}]
            cases.append((dict(tools=odd, tool_choice="required"), "tool_choice"))
        else:  # arguments are JSON there: the parameters must compile
            bad = [{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}]
            cases.append((dict(tools=bad, tool_choice={"type": "function", "function": {"name": "f"}}), "tools"))
        for extra, param in cases:
            with httpx.Client(base_url=srv.base, timeout=120) as http:
                assert_error(http.post("/v1/chat/completions", json=dict(base, **extra)), 400, param=param)
