"""`tunelab serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) over an `Engine`.

Endpoints: GET/HEAD /health, GET /v1/models, GET /v1/models/{id}, POST /v1/completions and POST
/v1/chat/completions, the last two with `stream: true` as server-sent events. The request's `model`
picks the adapter (or the base), as vLLM does. Every failure a client can cause is a 4xx in the
OpenAI error shape; one log line per request says model, tokens in/out and latency, never the API
key.

The event loop only moves bytes: bodies are capped (`max_body_bytes`, checked against
Content-Length and again while reading), and parsing, chat templates and tokenization run on a
worker thread, so one huge or slow request cannot stall the others or /health.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import threading
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunelab.errors import TunelabError
from tunelab.inference.engine import Engine, ServedModel
from tunelab.inference.generate import Generation, GenerationSettings
from tunelab.inference.openai_api import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    StopTrimmer,
    new_id,
    now,
    parse_request,
    sse,
    usage,
)
from tunelab.inference.prompts import chat_prompt

log = logging.getLogger("tunelab.serve")
DEFAULT_COMPLETION_TOKENS = 16  # the OpenAI completions default
DEFAULT_MAX_BODY_MB = 4.0  # a context's worth of text is well under 1 MB; the cap only stops abuse


def create_app(
    engine: Engine,
    api_key: str | None = None,
    max_tokens_limit: int = 1024,
    max_body_bytes: int = int(DEFAULT_MAX_BODY_MB * 2**20),
) -> FastAPI:
    """The ASGI app. `api_key`: required as `Authorization: Bearer KEY` on /v1/*; `max_tokens_limit`:
    the most tokens one request may ask for; `max_body_bytes`: the largest request body (413 above)."""
    app = FastAPI(title="tunelab", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        request.state.error = e.code or e.type
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        err = ApiError(e.status_code, str(e.detail), code="not_found" if e.status_code == 404 else None)
        request.state.error = err.code
        return JSONResponse(err.body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        request.state.error = "server_error"
        return JSONResponse(ApiError(500, "internal server error", type="server_error").body(), status_code=500)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "missing or invalid API key (send Authorization: Bearer KEY)", code="invalid_api_key")

    def lookup(name: str) -> ServedModel:
        served = engine.models.get(name)
        if served is None:
            raise ApiError(
                404,
                f"model {name!r} is not served here (available: {', '.join(engine.models)})",
                param="model",
                code="model_not_found",
            )
        return served

    def plan(prompt: str, requested: int | None, default: int, param: str) -> tuple[list[int], int]:
        """Prompt ids and the number of tokens to generate, checked against the limit and the context."""
        if len(prompt) > engine.prompt_char_limit:
            raise ApiError(
                400,
                f"this model's maximum context length is {engine.context_length} tokens; the prompt has "
                f"{len(prompt)} characters, more than that many tokens can hold",
                param=param,
                code="context_length_exceeded",
            )
        ids = engine.encode(prompt)
        room = engine.context_length - len(ids)
        if requested is not None and requested > max_tokens_limit:
            raise ApiError(
                400,
                f"max_tokens: {requested} is above this server's limit of {max_tokens_limit}",
                param="max_tokens",
                code="max_tokens_exceeded",
            )
        if room <= 0 or (requested is not None and requested > room):
            raise ApiError(
                400,
                f"this model's maximum context length is {engine.context_length} tokens; the prompt has "
                f"{len(ids)} tokens" + (f" and max_tokens asks for {requested} more" if requested else ""),
                param=param,
                code="context_length_exceeded",
            )
        return ids, requested if requested is not None else min(default, max_tokens_limit, room)

    def settings_for(req, max_new: int) -> GenerationSettings:
        return GenerationSettings(
            max_new_tokens=max_new,
            do_sample=req.temperature > 0,
            temperature=req.temperature or 1.0,
            top_p=req.top_p,
            batch_size=1,
            seed=req.seed if req.seed is not None else secrets.randbelow(2**31),
            ignore_eos=req.ignore_eos,
        )

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health(request: Request):
        if request.method == "HEAD":  # load balancers probe with HEAD: the status, no body
            return Response(status_code=200)
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [_model_card(m, engine) for m in engine.models.values()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request):
        authorize(request)
        return _model_card(lookup(model_id), engine)

    async def accept(request: Request, schema, jobs_for):
        """Check the key, read the body; then, on a worker thread, parse it as `schema`, find the requested
        model (logged with the request) and tokenize its prompts with `jobs_for(req, served)`."""
        authorize(request)
        body = await read_body(request, max_body_bytes)

        def prepare():
            req = parse_request(body, schema)
            served = lookup(req.model)
            request.state.model = served.id
            return req, served, jobs_for(req, served), req.stop_list()

        return await asyncio.to_thread(prepare)

    async def respond(request: Request, req, served: ServedModel, jobs, stop: list[str], api: _Shape):
        """Run `jobs` [(token ids, settings)] and answer in `api`'s shape, streamed or whole."""
        if req.stream:

            async def events():
                if api.opening is not None:
                    yield sse(api.chunk(0, api.opening, None))
                gens = []
                for i, (ids, settings) in enumerate(jobs):
                    async for piece, gen in _stream(engine, served, ids, settings, stop):
                        if gen is None:
                            yield sse(api.chunk(i, api.piece(piece), None))
                        else:
                            gens.append(gen)
                            yield sse(api.chunk(i, api.piece(None), gen.finish_reason))
                _record(request, gens)
                if req.stream_options and req.stream_options.include_usage:
                    yield sse({**api.head, "choices": [], "usage": _usage(gens)})
                yield sse("[DONE]")

            return _event_stream(events(), request)
        gens = [await engine.generate(served, ids, settings, stop) for ids, settings in jobs]
        _record(request, gens)
        return {
            **api.head,
            "object": api.whole_object,
            "choices": [api.whole_choice(i, g) for i, g in enumerate(gens)],
            "usage": _usage(gens),
        }

    def completion_jobs(req, served: ServedModel) -> list[tuple[list[int], GenerationSettings]]:
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts:
            raise ApiError(400, "prompt: must not be empty", param="prompt")
        jobs = []
        for p in prompts:
            ids, max_new = plan(p, req.max_tokens, DEFAULT_COMPLETION_TOKENS, "prompt")
            jobs.append((ids, settings_for(req, max_new)))
        return jobs

    tool_formats: dict[str, Any] = {}

    def call_format():
        """How the served chat template writes a tool call (read once off a rendered probe)."""
        from tunelab.data.tools import tool_format

        if "fmt" not in tool_formats:
            try:
                tool_formats["fmt"] = tool_format(engine.tokenizer)
            except TunelabError as e:
                raise ApiError(400, f"tools: {e.message.splitlines()[-1].strip(' -')}", param="tools") from None
        return tool_formats["fmt"]

    def chat_jobs(req, served: ServedModel) -> list[tuple[list[int], GenerationSettings]]:
        messages = [m.for_template() for m in req.messages]
        try:
            prompt = chat_prompt(messages, served.prompt, engine.tokenizer, req.tool_list())
        except TunelabError as e:
            raise ApiError(400, e.message, param="messages") from None
        except Exception as e:  # the chat template itself refused (e.g. roles must alternate)
            raise ApiError(400, f"the model's chat template rejected the messages: {e}", param="messages") from None
        if req.tool_list():
            call_format()  # a template whose calls cannot be read back is refused before generating
        ids, max_new = plan(prompt, req.max_completion_tokens or req.max_tokens, max_tokens_limit, "messages")
        return [(ids, settings_for(req, max_new))]

    @app.post("/v1/completions")
    async def completions(request: Request):
        req, served, jobs, stop = await accept(request, CompletionRequest, completion_jobs)
        return await respond(
            request,
            req,
            served,
            jobs,
            stop,
            _Shape(
                head={"id": new_id("cmpl"), "object": "text_completion", "created": now(), "model": served.id},
                field="text",
                piece=lambda text: text or "",
                whole_object="text_completion",
                whole=lambda g: {"text": g.text},
            ),
        )

    def read_calls(text: str) -> tuple[str, list[dict[str, Any]]]:
        """A generated answer's text and tool calls, read with the chat template's own call convention."""
        from tunelab.data.tools import parse_tool_calls

        return parse_tool_calls(text, call_format())

    async def respond_with_tools(request: Request, req, served: ServedModel, jobs, stop: list[str]):
        """A chat answer that may call tools: generated whole (a call is only known once complete), then
        sent as one message, or for `stream: true` as the chunks OpenAI sends (role, content, each call)."""
        gens = [await engine.generate(served, ids, settings, stop) for ids, settings in jobs]
        _record(request, gens)
        head = {"id": new_id("chatcmpl"), "created": now(), "model": served.id}
        content, calls = read_calls(gens[0].text)
        finish = "tool_calls" if calls else gens[0].finish_reason
        if not req.stream:
            message = {"role": "assistant", "content": content if content or not calls else None}
            if calls:
                message["tool_calls"] = calls
            return {
                **head,
                "object": "chat.completion",
                "usage": _usage(gens),
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            }

        def chunk(delta, reason=None):
            return sse(
                {
                    **head,
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}],
                }
            )

        async def events():
            yield chunk({"role": "assistant", "content": ""})
            if content:
                yield chunk({"content": content})
            for i, call in enumerate(calls):
                yield chunk({"tool_calls": [{"index": i, **call}]})
            yield chunk({}, finish)
            if req.stream_options and req.stream_options.include_usage:
                yield sse({**head, "object": "chat.completion.chunk", "choices": [], "usage": _usage(gens)})
            yield sse("[DONE]")

        return _event_stream(events(), request)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req, served, jobs, stop = await accept(request, ChatRequest, chat_jobs)
        if req.tool_list():
            return await respond_with_tools(request, req, served, jobs, stop)
        return await respond(
            request,
            req,
            served,
            jobs,
            stop,
            _Shape(
                head={
                    "id": new_id("chatcmpl"),
                    "object": "chat.completion.chunk",
                    "created": now(),
                    "model": served.id,
                },
                field="delta",
                piece=lambda text: {} if text is None else {"content": text},
                whole_object="chat.completion",
                whole=lambda g: {"message": {"role": "assistant", "content": g.text}},
                opening={"role": "assistant", "content": ""},
            ),
        )

    app.add_middleware(RequestLog)
    return app


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or a 413 as soon as it is known to be over `limit` bytes: from Content-Length
    before reading anything, else while the chunks arrive (chunked uploads, a lying header)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"the request body is over this server's limit of {limit / 2**20:g} MB (--max-body-mb)",
        code="request_too_large",
    )


class _Shape:
    """How one endpoint's responses look: chunk head, the field a streamed piece goes in, the whole answer."""

    def __init__(self, head: dict[str, Any], field: str, piece, whole_object: str, whole, opening=None):
        self.head, self.field, self.piece, self.whole_object, self.whole, self.opening = (
            head,
            field,
            piece,
            whole_object,
            whole,
            opening,
        )

    def chunk(self, i: int, value, finish: str | None) -> dict[str, Any]:
        return {**self.head, "choices": [{"index": i, self.field: value, "logprobs": None, "finish_reason": finish}]}

    def whole_choice(self, i: int, gen: Generation) -> dict[str, Any]:
        return {"index": i, **self.whole(gen), "logprobs": None, "finish_reason": gen.finish_reason}


async def _stream(engine: Engine, served: ServedModel, ids: list[int], settings: GenerationSettings, stop: list[str]):
    """(text, None) pieces as they are generated, then ("", Generation) once done.

    Text that could begin a stop sequence is held back until it is known not to; if the client
    goes away, generation is cancelled at its next token.
    """
    from transformers import AsyncTextIteratorStreamer

    streamer = AsyncTextIteratorStreamer(engine.tokenizer, skip_prompt=True, skip_special_tokens=True)
    cancel = threading.Event()
    task = asyncio.ensure_future(engine.generate(served, ids, settings, stop, streamer=streamer, cancel=cancel))
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved below, or moot after a disconnect
    trimmer = StopTrimmer(stop)
    try:
        async for text in streamer:
            piece = trimmer.feed(text)
            if piece:
                yield piece, None
        gen: Generation = await task
        tail = trimmer.flush()
        if tail:
            yield tail, None
        yield "", gen
    finally:
        cancel.set()


def _event_stream(events, request: Request) -> StreamingResponse:
    async def guarded():
        try:
            async for event in events:
                yield event
        except Exception as e:  # the 200 and earlier chunks are already sent: end the stream with an error event
            log.exception("generation failed mid-stream")
            request.state.error = "server_error"
            yield sse(ApiError(500, f"generation failed: {type(e).__name__}", type="server_error").body())

    return StreamingResponse(guarded(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _usage(gens: list[Generation]) -> dict[str, int]:
    return usage(sum(g.prompt_tokens for g in gens), sum(g.completion_tokens for g in gens))


def _record(request: Request, gens: list[Generation]) -> None:
    request.state.prompt_tokens = sum(g.prompt_tokens for g in gens)
    request.state.completion_tokens = sum(g.completion_tokens for g in gens)


def _model_card(m: ServedModel, engine: Engine) -> dict[str, Any]:
    base = next((x.id for x in engine.models.values() if x.adapter is None), None)
    return {
        "id": m.id,
        "object": "model",
        "created": m.created,
        "owned_by": "tunelab",
        "root": m.source,
        "parent": base if m.adapter is not None and base != m.id else None,
        "max_model_len": engine.context_length,
    }


class RequestLog:
    """ASGI middleware: one log line per request once its last byte is sent (streams included)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        state = scope.setdefault("state", {})
        status = {"code": 500, "logged": False, "disconnected": False}

        def line() -> None:
            if status["logged"]:
                return
            status["logged"] = True
            parts = [scope["method"], scope["path"], str(status["code"])]
            for key in ("model", "prompt_tokens", "completion_tokens", "error"):
                if key in state:
                    parts.append(f"{key}={state[key]}")
            parts.append(f"latency_ms={(time.perf_counter() - start) * 1000:.0f}")
            log.info(" ".join(parts))

        async def logged_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                line()

        async def watched_receive():
            message = await receive()
            if message["type"] == "http.disconnect":
                status["disconnected"] = True
            return message

        try:
            await self.app(scope, watched_receive, logged_send)
        except Exception:
            # the app raised past its handlers (starlette's outer error middleware answers the 500)
            state.setdefault("error", "server_error")
            raise
        finally:
            if not status["logged"]:
                # nothing (or not all) was sent: the client left, else the response never finished
                state.setdefault("error", "client_disconnected" if status["disconnected"] else "no_response")
                line()


def configure_logging() -> None:
    """Request lines to stderr with a timestamp (the CLI's setup; tests capture the logger instead)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def run_server(
    engine: Engine,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_tokens_limit: int = 1024,
    sock=None,
    max_body_bytes: int = int(DEFAULT_MAX_BODY_MB * 2**20),
) -> None:
    """Serve until SIGTERM / Ctrl-C: uvicorn stops taking connections, lets running requests finish
    (10 s at most), then the engine cancels what is left."""
    import uvicorn

    config = uvicorn.Config(
        create_app(engine, api_key, max_tokens_limit, max_body_bytes),
        host=host,
        port=port,
        access_log=False,
        log_level="info",
        timeout_graceful_shutdown=10,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    # uvicorn shuts down gracefully on SIGTERM / SIGINT, then re-raises the signal to the handler that
    # was there before it. A no-op SIGTERM handler (and catching the re-raised SIGINT) lets the
    # engine close and the command exit 0 instead of dying by the signal after a clean shutdown.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: None) if main else None
    try:
        server.run(sockets=[sock] if sock is not None else None)
    except KeyboardInterrupt:
        pass
    finally:
        engine.close()
        if main:
            signal.signal(signal.SIGTERM, previous)
