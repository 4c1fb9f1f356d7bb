"""`glmcpu serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn, the `server` extra).

  create_app(model, model_name, api_key=None, max_queue=8, max_body=...)   the ASGI app
  run_server(model_path=None, host="127.0.0.1", port=8000, parallel=1, ...)  load a model and serve it
  serve_main(args)                                                         the CLI subcommand (its
                                                                           arguments: glmcpu/cli.py)

A model with one KV-cache slot runs requests one at a time (``Scheduler``, ``Job``: a thread per
request); a model loaded with n_slots=N (``--parallel N``) runs up to N at once by continuous
batching (glmcpu/batcher.py: one worker thread, every running request's next token computed in the
same forward pass, new prompts read in chunks between decode steps). Either way up to ``max_queue``
more requests wait and the next gets a 503 with Retry-After, and a client that goes away mid-stream
cancels its generation before the next token. Every error is an OpenAI error object
{"error": {"message", "type", "param", "code"}} with a 4xx status.

Constrained replies (glmcpu/constrain.py, llguidance): ``response_format`` json_object / json_schema
makes the reply one JSON value (valid against the schema), ``tool_choice`` "required" or a named
function makes it a tool call in the family's protocol. The grammar is compiled while the request
is checked, so a schema that cannot be used is a 400 before anything runs.
"""
import asyncio
import hmac
import json
import sys
import threading
import time
import uuid
from typing import Any, Dict, List, Literal, Optional, Union

from .errors import GlmcpuError

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import ClientDisconnect
except ImportError as e:  # pragma: no cover - depends on the install
    raise GlmcpuError(f"the server needs the 'server' extra: pip install 'glmcpu[server]' ({e})") from None

from .batcher import DEFAULT_PREFILL_CHUNK, Batcher, QueueFull
from .generate import SamplingParams
from .requests import GenerationRequest, run
from . import toolcalls

DEFAULT_MAX_BODY = 4 * 1024 * 1024


# ---------------------------------------------------------------- errors

class APIError(Exception):
    def __init__(self, status, message, type_="invalid_request_error", param=None, code=None, headers=None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}


def error_body(message, type_="invalid_request_error", param=None, code=None):
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(status, message, type_="invalid_request_error", param=None, code=None, headers=None):
    return JSONResponse(error_body(message, type_, param, code), status_code=status, headers=headers)


# ---------------------------------------------------------------- request schema

Number = Union[StrictInt, StrictFloat]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextPart(_Strict):
    type: Literal["text"]
    text: StrictStr


class FunctionCall(_Strict):
    name: StrictStr
    arguments: StrictStr


class ToolCall(_Strict):
    id: Optional[StrictStr] = None
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Optional[Union[StrictStr, List[TextPart]]] = None
    name: Optional[StrictStr] = None
    tool_calls: Optional[List[ToolCall]] = None
    tool_call_id: Optional[StrictStr] = None


class StreamOptions(_Strict):
    include_usage: Optional[StrictBool] = None


class _Sampling(_Strict):
    model: StrictStr
    max_tokens: Optional[StrictInt] = None
    temperature: Optional[Number] = Field(None, ge=0, le=2)
    top_p: Optional[Number] = Field(None, ge=0, le=1)
    presence_penalty: Optional[Number] = Field(None, ge=-2, le=2)
    frequency_penalty: Optional[Number] = Field(None, ge=-2, le=2)
    logprobs: Optional[Union[StrictBool, StrictInt]] = None
    seed: Optional[StrictInt] = None
    stop: Optional[Union[StrictStr, List[StrictStr]]] = None
    n: Optional[StrictInt] = None
    stream: Optional[StrictBool] = None
    stream_options: Optional[StreamOptions] = None
    user: Optional[StrictStr] = None


class ChatRequest(_Sampling):
    messages: List[Message]
    max_completion_tokens: Optional[StrictInt] = None
    tools: Optional[List[Dict[str, Any]]] = None
    tool_choice: Optional[Union[StrictStr, Dict[str, Any]]] = None
    top_logprobs: Optional[StrictInt] = None
    response_format: Optional[Dict[str, Any]] = None


class CompletionRequest(_Sampling):
    prompt: Union[StrictStr, List[StrictInt]]
    echo: Optional[StrictBool] = None
    best_of: Optional[StrictInt] = None
    response_format: Optional[Dict[str, Any]] = None


# ---------------------------------------------------------------- scheduling

def _busy():
    return APIError(503, "the server is busy: too many requests are waiting; retry later",
                    "server_error", code="server_busy", headers={"Retry-After": "1"})


class Scheduler:
    """One request runs on the model at a time; up to ``max_queue`` more wait. The model is
    released only when the worker thread has stopped touching it."""

    def __init__(self, max_queue):
        self.max_queue = max_queue
        self.pending = 0  # running + waiting
        self.lock = asyncio.Lock()

    async def acquire(self):
        if self.pending > self.max_queue:
            raise _busy()
        self.pending += 1
        try:
            await self.lock.acquire()
        except BaseException:
            self.pending -= 1
            raise

    def release(self):
        self.pending -= 1
        self.lock.release()


class Job:
    """Runs a GenerationRequest in a thread, handing pieces to the event loop."""

    def __init__(self, model, request, scheduler, loop):
        self.model, self.request, self.scheduler, self.loop = model, request, scheduler, loop
        self.cancel = threading.Event()
        self.queue = asyncio.Queue()
        self.done = loop.create_future()

    def start(self):
        threading.Thread(target=self._work, daemon=True).start()

    def _work(self):
        error = None
        try:
            for piece in run(self.model, self.request, cancelled=self.cancel.is_set):
                self.loop.call_soon_threadsafe(self.queue.put_nowait, piece)
        except Exception as e:  # noqa: BLE001 - handed to the request handler
            error = e
        self.loop.call_soon_threadsafe(self._finish, error)

    def _finish(self, error):
        self.scheduler.release()
        self._settle(error)

    def _settle(self, error):
        """On the event loop: end the piece stream and resolve ``done`` with the result or error."""
        self.queue.put_nowait(None)
        if not self.done.done():
            if error is None:
                self.done.set_result(self.request.result)
            else:
                self.done.set_exception(error)

    async def pieces(self):
        while True:
            piece = await self.queue.get()
            if piece is None:
                return
            yield piece


class BatchJob(Job):
    """A Job whose request runs on the Batcher's worker with the other running requests."""

    def __init__(self, batcher, request, loop):
        self.batcher, self.request, self.loop = batcher, request, loop
        self.queue = asyncio.Queue()
        self.done = loop.create_future()
        self.cancel = None

    def start(self):
        try:
            ticket = self.batcher.submit(self.request, self._piece, self._ended)
        except QueueFull:
            raise _busy() from None
        self.cancel = ticket.cancelled  # .set(): the batcher drops the request at its next step

    def _piece(self, piece):
        self.loop.call_soon_threadsafe(self.queue.put_nowait, piece)

    def _ended(self, error):
        self.loop.call_soon_threadsafe(self._settle, error)


# ---------------------------------------------------------------- the app

def create_app(model, model_name, api_key=None, max_queue=8, max_body=DEFAULT_MAX_BODY, log=None,
               cors_origins=(), prefill_chunk=DEFAULT_PREFILL_CHUNK):
    """The ASGI app serving ``model`` as ``model_name``; ``cors_origins``: the browser origins
    (e.g. "http://localhost:3000", or "*") allowed to call it from a web page. A model with
    n_slots > 1 runs that many requests at once (a Batcher reading at most ``prefill_chunk``
    prompt tokens per step; it is ``app.state.batcher``, closed when the app shuts down)."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    app = FastAPI(title="glmcpu", docs_url=None, redoc_url=None, openapi_url=None)
    batcher = app.state.batcher = None
    if getattr(model, "n_slots", 1) > 1:
        batcher = app.state.batcher = Batcher(model, prefill_chunk=prefill_chunk, max_queue=max_queue)
        app.router.on_shutdown.append(batcher.close)
    state = {"scheduler": None}
    created = int(time.time())
    tool_family = model.family in toolcalls.TOOL_FAMILIES

    def scheduler():
        if state["scheduler"] is None:  # bound to the running event loop
            state["scheduler"] = Scheduler(max_queue)
        return state["scheduler"]

    app.add_middleware(Guard, api_key=api_key, max_body=max_body, log=log)
    if cors_origins:  # outermost: a browser's preflight carries no API key
        from starlette.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)

    @app.exception_handler(APIError)
    async def api_error(request, e):
        return error_response(e.status, e.message, e.type, e.param, e.code, e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, e):
        errs = e.errors()
        first = errs[0] if errs else {}
        if first.get("type") == "json_invalid":
            return error_response(400, "the request body is not valid JSON")
        param = _param(first.get("loc", ()))
        msg = first.get("msg", "invalid request")
        return error_response(400, f"{param}: {msg}" if param else msg, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return error_response(e.status_code, str(e.detail), code=code)

    @app.exception_handler(Exception)
    async def crash(request, e):  # never a traceback to the client
        return error_response(500, f"internal error: {type(e).__name__}", "server_error")

    @app.get("/health")
    async def health():
        if batcher is None:
            return {"status": "ok"}
        with batcher.cond:  # with --parallel: the slots, what runs and waits, the steps taken so far
            waiting = len(batcher.waiting)
            stats = {k: round(v, 6) for k, v in batcher.stats.items()}
            return {"status": "ok", "slots": batcher.n_slots, "running": batcher.pending - waiting,
                    "waiting": waiting, "steps": stats}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [_model_card(model_name, created)]}

    @app.get("/v1/models/{name}")
    async def get_model(name: str):
        check_model(name)
        return _model_card(model_name, created)

    def check_model(name):
        if name != model_name:
            raise APIError(404, f"the model {name!r} does not exist; this server serves {model_name!r}",
                           param="model", code="model_not_found")

    def sampling(body, prompt_len, max_new):
        if body.n not in (None, 1):
            raise APIError(400, "only n=1 is supported", param="n")
        if prompt_len >= model.n_ctx:
            raise APIError(400, f"the prompt is {prompt_len} tokens but this model's context holds "
                                f"{model.n_ctx}", param="messages", code="context_length_exceeded")
        left = model.n_ctx - prompt_len
        if max_new is not None and max_new < 1:
            raise APIError(400, f"max_tokens must be at least 1, got {max_new}", param="max_tokens")
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > 4 or any(not s for s in stop):
            raise APIError(400, "stop takes up to 4 non-empty strings", param="stop")
        if getattr(body, "best_of", None) not in (None, 1):
            raise APIError(400, "only best_of=1 is supported", param="best_of")
        t = 1.0 if body.temperature is None else float(body.temperature)
        p = 1.0 if body.top_p is None else float(body.top_p)
        if p == 0:  # only the most likely token is left
            t, p = 0.0, 1.0
        seed = None if body.seed is None else body.seed % 2 ** 64
        params = SamplingParams(max_new_tokens=min(max_new or left, left), temperature=t, top_p=p, seed=seed)
        return params, stop

    def top_logprobs(body, chat):
        """None (no logprobs) or how many most likely tokens to report with each token."""
        if chat:
            n = body.top_logprobs
            if n is not None and not 0 <= n <= 20:
                raise APIError(400, f"top_logprobs must be 0..20, got {n}", param="top_logprobs")
            if body.logprobs is not True:
                if body.logprobs not in (None, False):
                    raise APIError(400, "logprobs is true or false for chat completions", param="logprobs")
                if n:
                    raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
                return None
            return n or 0
        if body.logprobs is None:
            return None
        if isinstance(body.logprobs, bool) or not 0 <= body.logprobs <= 5:
            raise APIError(400, f"logprobs must be an integer 0..5 for completions, got {body.logprobs!r}",
                           param="logprobs")
        return body.logprobs

    def request_for(body, ids, params, stop, chat, constraint=None):
        return GenerationRequest(ids, params, stop, presence_penalty=float(body.presence_penalty or 0),
                                 frequency_penalty=float(body.frequency_penalty or 0),
                                 logprobs=top_logprobs(body, chat), prompt_logprobs=getattr(body, "echo", False),
                                 constraint=constraint)

    async def constraint_for(schema, forced, tools):
        """The request's Constraint (None without one): a JSON reply valid against ``schema``, a call
        of one of the ``forced`` tools, or (tools offered with tool_choice auto) either of the two."""
        if schema is None and forced is None:
            return None
        if forced is not None and schema is not None:
            raise APIError(400, "response_format json_object / json_schema cannot be combined with a forced "
                                "tool call (tool_choice \"required\" or a named function): that reply is a tool call",
                           param="response_format")
        from . import constrain
        offered = forced if forced is not None else tools
        functions = toolcalls.check_tools(offered) if offered else None
        param = "tool_choice" if forced is not None else "response_format"
        try:
            if model.family == "glm4":  # its tool calls are JSON: each function's parameters must compile
                for f in functions or []:
                    try:
                        await asyncio.to_thread(constrain.check_schema, f.get("parameters") or {"type": "object"})
                    except GlmcpuError as e:
                        raise APIError(400, f"tools: the parameters of {f['name']!r}: {e}", param="tools") from None
            g = constrain.grammar(model.tokenizer, json_schema=schema, family=model.family, functions=functions)
            return await asyncio.to_thread(constrain.Constraint, model, g)
        except GlmcpuError as e:
            raise APIError(400, f"{param}: {e}", param=param) from None

    async def response_schema(rf):
        """The JSON schema ``response_format`` asks the reply to match (None: plain text), checked."""
        if rf is None:
            return None
        kind = rf.get("type")
        if kind == "text":
            return None
        if kind == "json_object":
            return {"type": "object"}
        if kind != "json_schema":
            raise APIError(400, f"response_format.type must be \"text\", \"json_object\" or \"json_schema\", "
                                f"got {kind!r}", param="response_format")
        spec = rf.get("json_schema")
        if not isinstance(spec, dict):
            raise APIError(400, "response_format json_schema needs \"json_schema\": {\"name\": ..., \"schema\": "
                                "{...}, \"strict\": true}", param="response_format")
        schema = spec.get("schema")
        if not isinstance(schema, dict):
            got = type(schema).__name__ if schema is not None else "nothing"
            raise APIError(400, f"response_format.json_schema.schema must be a JSON schema object, got {got}",
                           param="response_format")
        if spec.get("name") is not None and not isinstance(spec["name"], str):
            raise APIError(400, "response_format.json_schema.name must be a string", param="response_format")
        if spec.get("strict") is not None and not isinstance(spec["strict"], bool):
            raise APIError(400, "response_format.json_schema.strict must be true or false", param="response_format")
        from . import constrain  # the schema is always enforced exactly (strict or not); refused if it cannot be
        try:
            await asyncio.to_thread(constrain.check_schema, schema)
        except GlmcpuError as e:
            raise APIError(400, f"response_format.json_schema.schema: {e}", param="response_format") from None
        return schema

    def prompt_error(e, param):
        msg = str(e)
        if "context" in msg and "holds" in msg:
            return APIError(400, msg, param=param, code="context_length_exceeded")
        return APIError(400, msg, param=param)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        check_model(body.model)
        if not body.messages:
            raise APIError(400, "messages must not be empty", param="messages")
        messages = [_message_dict(m) for m in body.messages]
        tools = None
        forced = _forced_tool_choice(body.tool_choice, body.tools)
        if body.tools:
            if not tool_family:
                raise APIError(400, f"this model ({model.family}) has no tool-call format; send no tools",
                               param="tools")
            try:
                tools = toolcalls.tools_for_prompt(body.tools, body.tool_choice) or None
            except GlmcpuError as e:
                raise APIError(400, str(e), param="tools") from None
        schema = await response_schema(body.response_format)
        try:
            ids = await asyncio.to_thread(model.chat_prompt, messages, tools=tools)
        except GlmcpuError as e:
            raise prompt_error(e, "messages") from None
        max_new = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        params, stop = sampling(body, len(ids), max_new)
        constraint = await constraint_for(schema, tools if forced else None, tools)
        return await respond(request, body, request_for(body, ids, params, stop, True, constraint), chat=True,
                             tools=tools)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        check_model(body.model)
        tok = model.tokenizer
        if isinstance(body.prompt, str):
            if not body.prompt:
                raise APIError(400, "prompt must not be empty", param="prompt")
            ids = await asyncio.to_thread(tok.encode, body.prompt, add_special_tokens=True)
        else:
            ids = list(body.prompt)
            if not ids:
                raise APIError(400, "prompt must not be empty", param="prompt")
            bad = [t for t in ids if not 0 <= t < model.vocab_size]
            if bad:
                raise APIError(400, f"token id {bad[0]} is out of range for vocab_size {model.vocab_size}",
                               param="prompt")
        schema = await response_schema(body.response_format)
        params, stop = sampling(body, len(ids), body.max_tokens)
        req = request_for(body, ids, params, stop, False, await constraint_for(schema, None, None))
        # echo: the reply starts with the prompt (as sent; a token prompt as its decoded text)
        req.echo = (body.prompt if isinstance(body.prompt, str) else tok.decode(ids, skip_special_tokens=True)) \
            if body.echo else None
        return await respond(request, body, req, chat=False, tools=None)

    async def respond(request, body, req, chat, tools):
        if batcher is not None:
            job = BatchJob(batcher, req, asyncio.get_running_loop())
            job.start()
        else:
            sched = scheduler()
            await sched.acquire()
            job = Job(model, req, sched, asyncio.get_running_loop())
            job.start()
        watcher = asyncio.create_task(_watch_disconnect(request, job))
        cid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            stream = _chat_stream if chat else _completion_stream
            gen = stream(job, cid, model_name, include_usage, tools, model.family)
            return StreamingResponse(_guard_stream(gen, job, request, watcher), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            async for _ in job.pieces():
                pass
            res = await job.done
        except GlmcpuError as e:
            raise prompt_error(e, "messages" if chat else "prompt") from None
        finally:
            job.cancel.set()
            watcher.cancel()
        request.state.tokens = (res.prompt_tokens, res.completion_tokens)
        return JSONResponse(_chat_body(cid, model_name, res, tools, model.family) if chat
                            else _completion_body(cid, model_name, res, req.echo))

    return app


class Guard:
    """Pure ASGI middleware: API key, body size limit (Content-Length and the bytes actually sent)
    and one log line per request, written when the response (a stream too) has ended."""

    def __init__(self, app, api_key, max_body, log):
        self.app, self.api_key, self.max_body, self.log = app, api_key, max_body, log

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        state = scope.setdefault("state", {})
        state["tokens"] = (0, 0)
        status = [0]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self._handle(scope, receive, send_status)
        except (OSError, ClientDisconnect):
            pass  # the client went away mid-response; the generation was cancelled
        finally:
            p, c = state.get("tokens", (0, 0))
            self.log(f"{scope['method']} {scope['path']} {status[0] or 499} prompt_tokens={p} "
                     f"completion_tokens={c} {time.perf_counter() - t0:.3f}s")

    async def _handle(self, scope, receive, send):
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.api_key is not None and scope["path"] != "/health":
            auth = headers.get("authorization", "")
            given = auth[7:] if auth[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(given.encode(), self.api_key.encode()):
                return await error_response(401, "missing or wrong API key (send Authorization: Bearer KEY)",
                                            code="invalid_api_key")(scope, receive, send)
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            if not length.isdigit():
                return await error_response(400, "bad Content-Length header")(scope, receive, send)
            return await error_response(413, f"the request body is {length} bytes; the limit is "
                                             f"{self.max_body}", code="request_too_large")(scope, receive, send)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                return await error_response(413, f"the request body is over the limit of {self.max_body} "
                                                 f"bytes", code="request_too_large")(scope, receive, send)
        replayed = [False]

        async def replay():
            if not replayed[0]:
                replayed[0] = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _watch_disconnect(request, job):
    """Cancels the job when the client goes away (uvicorn answers receive() with http.disconnect)."""
    try:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                job.cancel.set()
                return
    except Exception:  # noqa: BLE001 - a broken connection is a disconnect
        job.cancel.set()


async def _guard_stream(gen, job, request, watcher):
    """The SSE byte stream; when it ends for any reason (done, client gone) the generation stops."""
    try:
        async for event in gen:
            yield event
    finally:
        job.cancel.set()
        watcher.cancel()
        await gen.aclose()
        r = job.request.result
        request.state.tokens = (r.prompt_tokens, r.completion_tokens)


def _param(loc):
    """A validation error's location as "messages[0].content" (pydantic's union-member names dropped)."""
    out = ""
    for x in loc:
        if isinstance(x, int):
            out += f"[{x}]"
        elif x != "body" and x.isidentifier() and x not in ("int", "float", "str", "bool", "list", "dict"):
            out += ("." if out else "") + x
    return out or None


_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def _sse(obj):
    """One server-sent event. JSON leaves NEL, U+2028 and U+2029 raw; they are escaped too, for
    clients that split the stream with str.splitlines (httpx's iter_lines) rather than on \\n."""
    return f"data: {json.dumps(obj, ensure_ascii=False).translate(_LINE_BREAKS)}\n\n"


def _finish(reason):
    return "stop" if reason in ("stop", "cancelled", None) else reason


def _model_card(name, created):
    return {"id": name, "object": "model", "created": created, "owned_by": "glmcpu"}


def _message_dict(m):
    d = {"role": "system" if m.role == "developer" else m.role}
    if isinstance(m.content, list):
        d["content"] = "".join(p.text for p in m.content)
    else:
        d["content"] = m.content
    if m.tool_calls:
        d["tool_calls"] = [{"id": c.id, "type": "function",
                            "function": {"name": c.function.name, "arguments": c.function.arguments}}
                           for c in m.tool_calls]
        if d["content"] is None:
            d["content"] = ""
    if m.tool_call_id is not None:
        d["tool_call_id"] = m.tool_call_id
    if m.name is not None:
        d["name"] = m.name
    if d["content"] is None:
        raise APIError(400, f"a {m.role} message needs content", param="messages")
    return d


def _forced_tool_choice(choice, tools):
    """True when ``tool_choice`` forces a call ("required" or a named function), checked."""
    if choice is None or choice in ("none", "auto"):
        return False
    if choice == "required" or isinstance(choice, dict):
        if not tools:
            raise APIError(400, "tool_choice \"required\" or a named function needs tools", param="tool_choice")
        return True
    raise APIError(400, f"tool_choice must be \"none\", \"auto\", \"required\" or {{\"type\": \"function\", "
                        f"\"function\": {{\"name\": ...}}}}, got {choice!r}", param="tool_choice")


def _parse_tools(res, tools, family):
    if not tools:
        return res.text, None
    parsed = toolcalls.parse_reply(family, res.raw_text, tools)
    if parsed["tool_calls"]:
        return parsed["content"], parsed["tool_calls"]
    return res.text, None


def _token_bytes(text):
    return None if "\ufffd" in text else list(text.encode("utf-8"))  # part of a character: no bytes of its own


def _chat_logprobs(entries):
    """OpenAI's choice.logprobs for chat: {"content": [...], "refusal": None}, or None."""
    if entries is None:
        return None
    return {"content": [{"token": e["token"], "logprob": e["logprob"], "bytes": _token_bytes(e["token"]),
                         "top_logprobs": [{"token": t, "logprob": lp, "bytes": _token_bytes(t)}
                                          for _, t, lp in e["top"]]} for e in entries],
            "refusal": None}


def _completion_logprobs(entries, base=0):
    """The legacy completions logprobs: parallel lists of tokens, their logprobs, the top
    alternatives ({token: logprob}) and the text offsets."""
    if entries is None:
        return None
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{t: lp for _, t, lp in e["top"]} for e in entries],
            "text_offset": [base + e["offset"] for e in entries]}


def _chat_body(cid, name, res, tools, family):
    content, calls = _parse_tools(res, tools, family)
    message = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": name,
            "choices": [{"index": 0, "message": message, "logprobs": None if calls else _chat_logprobs(res.logprobs),
                         "finish_reason": "tool_calls" if calls else _finish(res.finish_reason)}],
            "usage": res.usage()}


def _completion_body(cid, name, res, echo=None):
    lp = _completion_logprobs(res.logprobs)
    if echo is not None and lp is not None:  # the prompt's tokens first, offsets into the echoed text
        head = _completion_logprobs(res.prompt_logprobs)
        lp = {k: head[k] + (lp[k] if k != "text_offset" else [len(echo) + o for o in lp[k]]) for k in lp}
    return {"id": cid, "object": "text_completion", "created": int(time.time()), "model": name,
            "choices": [{"index": 0, "text": (echo or "") + res.text, "logprobs": lp,
                         "finish_reason": _finish(res.finish_reason)}],
            "usage": res.usage()}


class _LogprobFeed:
    """Hands out, with each streamed piece, the log-probabilities of the tokens whose text starts
    in the text sent so far (the worker appends them to request.result.logprobs as it goes)."""

    def __init__(self, request):
        self.request, self.sent, self.length = request, 0, 0

    def take(self, piece):
        self.length += len(piece)
        entries = self.request.result.logprobs
        if entries is None:
            return None
        new = []
        while self.sent < len(entries) and entries[self.sent]["offset"] < self.length:
            new.append(entries[self.sent])
            self.sent += 1
        return new

    def rest(self):
        """After the request ended: what is left of the final (stop-cut) list."""
        entries = self.request.result.logprobs
        return None if entries is None else entries[self.sent:]


async def _chat_stream(job, cid, name, include_usage, tools, family):
    created = int(time.time())
    feed = _LogprobFeed(job.request)

    def chunk(delta, finish=None, entries=None):
        return _sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
                     "choices": [{"index": 0, "delta": delta, "logprobs": _chat_logprobs(entries),
                                  "finish_reason": finish}]})

    yield chunk({"role": "assistant", "content": ""})
    held, streaming = "", not tools
    async for piece in job.pieces():
        if streaming:
            yield chunk({"content": piece}, entries=feed.take(piece))
            continue
        held += piece  # with tools: hold the text while it may still be a tool call
        if not toolcalls.tool_call_possible(family, held, tools):
            streaming = True
            yield chunk({"content": held}, entries=feed.take(held))
    try:
        res = await job.done
    except GlmcpuError as e:
        yield _sse(error_body(str(e)))
        yield "data: [DONE]\n\n"
        return
    content, calls = _parse_tools(res, tools, family) if not streaming else (None, None)
    if calls:
        if content:
            yield chunk({"content": content})
        for i, c in enumerate(calls):
            yield chunk({"tool_calls": [{"index": i, "id": c["id"], "type": "function",
                                         "function": {"name": c["function"]["name"], "arguments": ""}}]})
            yield chunk({"tool_calls": [{"index": i, "function": {"arguments": c["function"]["arguments"]}}]})
    elif not streaming and held:
        yield chunk({"content": res.text}, entries=feed.take(res.text))
    rest = None if calls else feed.rest()
    if rest:
        yield chunk({"content": ""}, entries=rest)
    yield chunk({}, "tool_calls" if calls else _finish(res.finish_reason))
    if include_usage:
        yield _sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
                    "choices": [], "usage": res.usage()})
    yield "data: [DONE]\n\n"


async def _completion_stream(job, cid, name, include_usage, tools, family):
    created = int(time.time())
    feed = _LogprobFeed(job.request)

    echo = job.request.echo
    base = len(echo) if echo else 0

    def chunk(text, finish=None, entries=None, offset=base):
        return _sse({"id": cid, "object": "text_completion", "created": created, "model": name,
                     "choices": [{"index": 0, "text": text, "logprobs": _completion_logprobs(entries, offset),
                                  "finish_reason": finish}]})

    def echo_chunk():  # the prompt first; its logprobs exist once the prefill has run
        return chunk(echo, entries=job.request.result.prompt_logprobs, offset=0)

    if echo and job.request.logprobs is None:
        yield echo_chunk()
        echo = None
    async for piece in job.pieces():
        if echo:
            yield echo_chunk()
            echo = None
        yield chunk(piece, entries=feed.take(piece))
    try:
        res = await job.done
    except GlmcpuError as e:
        yield _sse(error_body(str(e)))
        yield "data: [DONE]\n\n"
        return
    if echo:
        yield echo_chunk()
    rest = feed.rest()
    if rest:
        yield chunk("", entries=rest)
    yield chunk("", _finish(res.finish_reason))
    if include_usage:
        yield _sse({"id": cid, "object": "text_completion", "created": created, "model": name,
                    "choices": [], "usage": res.usage()})
    yield "data: [DONE]\n\n"


# ---------------------------------------------------------------- running it

def run_server(model_path=None, host="127.0.0.1", port=8000, n_ctx=4096, threads=None, api_key=None,
               model_name=None, max_queue=8, log_level="warning", cors_origins=(), kv="f16", parallel=1,
               prefill_chunk=DEFAULT_PREFILL_CHUNK):
    """Load ``model_path`` (None: the built-in demo model) and serve it until interrupted;
    ``parallel``: requests generated at once (KV-cache slots of n_ctx tokens each)."""
    import os
    import uvicorn
    import glmcpu
    from .batcher import passive_openmp
    path = model_path or glmcpu.demo_model_path()
    if parallel > 1:
        passive_openmp()
    model = glmcpu.load(path, n_ctx=n_ctx, threads=threads, kv=kv, n_slots=parallel)
    name = model_name or os.path.splitext(os.path.basename(path))[0]
    app = create_app(model, name, api_key=api_key, max_queue=max_queue, cors_origins=cors_origins,
                     prefill_chunk=prefill_chunk)
    slots = (f"{parallel} parallel slots of n_ctx={model.n_ctx}, prefill chunk {prefill_chunk}" if parallel > 1
             else f"n_ctx={model.n_ctx}")
    kv_bytes = model.arch.kv_bytes()
    size = f"{kv_bytes / 1e9:.2f} GB" if kv_bytes >= 1e8 else f"{kv_bytes / 1e6:.1f} MB"
    print(f"glmcpu: serving {name} ({model.family}, {slots}, {model.kv} KV cache {size}) "
          f"on http://{host}:{port}/v1", file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)


def serve_main(args):
    if args.max_queue < 0:
        raise GlmcpuError(f"--max-queue must be >= 0, got {args.max_queue}")
    parallel = getattr(args, "parallel", 1)
    chunk = getattr(args, "prefill_chunk", DEFAULT_PREFILL_CHUNK)
    if not 1 <= parallel <= 256:
        raise GlmcpuError(f"--parallel (requests generated at once) must be 1..256, got {parallel}")
    if chunk < 1:
        raise GlmcpuError(f"--prefill-chunk must be >= 1 token, got {chunk}")
    run_server(args.model, host=args.host, port=args.port, n_ctx=args.ctx, threads=args.threads,
               api_key=args.api_key, model_name=args.model_name, max_queue=args.max_queue,
               cors_origins=args.cors_origin, kv=args.kv, parallel=parallel, prefill_chunk=chunk)
