"""`tunelab serve`'s OpenAI-compatible HTTP app (FastAPI) over an `Engine`.

Endpoints: GET/HEAD /health, GET /v1/models, GET /v1/models/{id}, POST /v1/completions and POST
/v1/chat/completions, the last two with `stream: true` as server-sent events. The request's `model`
picks the adapter (or the base), as vLLM does. Every failure a client can cause is a 4xx in the
OpenAI error shape; one log line per request says model, tokens in/out and latency, never the API
key (`serve/request_log.py`).

The event loop only moves bytes: bodies are capped (`max_body_bytes`, checked against
Content-Length and again while reading), and parsing, chat templates and tokenization run on a
worker thread, so one huge or slow request cannot stall the others or /health.

`ServeApp` holds the state and the steps; `create_app` only routes HTTP to its methods, so each
step can be called (and tested) without a server.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunelab.config.schema import SEED_MAX
from tunelab.errors import TunelabError
from tunelab.inference.generate import Generation, GenerationSettings
from tunelab.inference.prompts import chat_prompt
from tunelab.serve.engine import Engine, ServedModel
from tunelab.serve.openai_api import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    new_id,
    now,
    parse_request,
    sse,
    usage,
)
from tunelab.serve.request_log import RequestLog
from tunelab.serve.streaming import event_stream, stream_pieces

log = logging.getLogger("tunelab.serve")
DEFAULT_COMPLETION_TOKENS = 16  # the OpenAI completions default
DEFAULT_MAX_BODY_MB = 4.0  # a context's worth of text is well under 1 MB; the cap only stops abuse
DEFAULT_MAX_BODY_BYTES = int(DEFAULT_MAX_BODY_MB * 2**20)

Job = tuple[list[int], GenerationSettings]  # a prompt's token ids and how to answer it


class ServeApp:
    """What the server knows (the engine, the limits, the API key, the template's tool-call convention)
    and every step a request goes through; the routes are its `completions`, `chat_completions`, `models`
    and `model` methods."""

    def __init__(
        self,
        engine: Engine,
        api_key: str | None = None,
        max_tokens_limit: int = 1024,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ):
        self.engine, self.api_key = engine, api_key
        self.max_tokens_limit, self.max_body_bytes = max_tokens_limit, max_body_bytes
        self._tool_format: Any = None  # read off the chat template on the first request with tools

    # --- checks ------------------------------------------------------------------------------

    def authorize(self, header: str) -> None:
        """A 401 unless `header` (the Authorization header) carries the API key, when one is set."""
        if self.api_key is None:
            return
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise ApiError(401, "missing or invalid API key (send Authorization: Bearer KEY)", code="invalid_api_key")

    def lookup(self, name: str) -> ServedModel:
        """The served model a request's `model` names, else a 404 listing the ones there are."""
        served = self.engine.models.get(name)
        if served is None:
            raise ApiError(
                404,
                f"model {name!r} is not served here (available: {', '.join(self.engine.models)})",
                param="model",
                code="model_not_found",
            )
        return served

    def plan(self, prompt: str, requested: int | None, default: int, param: str) -> tuple[list[int], int]:
        """Prompt ids and the number of tokens to generate, checked against the limit and the context."""
        engine = self.engine
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
        if requested is not None and requested > self.max_tokens_limit:
            raise ApiError(
                400,
                f"max_tokens: {requested} is above this server's limit of {self.max_tokens_limit}",
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
        return ids, requested if requested is not None else min(default, self.max_tokens_limit, room)

    # --- from a request to jobs --------------------------------------------------------------

    def completion_jobs(self, req: CompletionRequest, served: ServedModel) -> list[Job]:
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts:
            raise ApiError(400, "prompt: must not be empty", param="prompt")
        jobs = []
        for p in prompts:
            ids, max_new = self.plan(p, req.max_tokens, DEFAULT_COMPLETION_TOKENS, "prompt")
            jobs.append((ids, settings_for(req, max_new)))
        return jobs

    def chat_jobs(self, req: ChatRequest, served: ServedModel) -> list[Job]:
        messages = [m.for_template() for m in req.messages]
        try:
            prompt = chat_prompt(messages, served.prompt, self.engine.tokenizer, req.tool_list())
        except TunelabError as e:
            raise ApiError(400, e.message, param="messages") from None
        except Exception as e:  # the chat template itself refused (e.g. roles must alternate)
            raise ApiError(400, f"the model's chat template rejected the messages: {e}", param="messages") from None
        if req.tool_list():
            self.call_format()  # a template whose calls cannot be read back is refused before generating
        ids, max_new = self.plan(prompt, req.max_completion_tokens or req.max_tokens, self.max_tokens_limit, "messages")
        return [(ids, settings_for(req, max_new))]

    def call_format(self) -> Any:
        """How the served chat template writes a tool call (read once off a rendered probe)."""
        from tunelab.data.tools import tool_format

        if self._tool_format is None:
            try:
                self._tool_format = tool_format(self.engine.tokenizer)
            except TunelabError as e:
                raise ApiError(400, f"tools: {e.message.splitlines()[-1].strip(' -')}", param="tools") from None
        return self._tool_format

    def read_calls(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        """A generated answer's text and tool calls, read with the chat template's own call convention."""
        from tunelab.data.tools import parse_tool_calls

        return parse_tool_calls(text, self.call_format())

    def model_card(self, m: ServedModel) -> dict[str, Any]:
        """One entry of /v1/models: an adapter names the base it is served over as its parent."""
        models = self.engine.models.values()
        base = next((x.id for x in models if x.adapter is None), None)
        return {
            "id": m.id,
            "object": "model",
            "created": m.created,
            "owned_by": "tunelab",
            "root": m.source,
            "parent": base if m.adapter is not None and base != m.id else None,
            "max_model_len": self.engine.context_length,
        }

    # --- routes ------------------------------------------------------------------------------

    async def models(self, request: Request):
        self.authorize(request.headers.get("authorization", ""))
        return {"object": "list", "data": [self.model_card(m) for m in self.engine.models.values()]}

    async def model(self, model_id: str, request: Request):
        self.authorize(request.headers.get("authorization", ""))
        return self.model_card(self.lookup(model_id))

    async def completions(self, request: Request):
        req, served, jobs, stop = await self.accept(request, CompletionRequest, self.completion_jobs)
        return await self.respond(request, req, jobs, stop, completion_shape(served))

    async def chat_completions(self, request: Request):
        req, served, jobs, stop = await self.accept(request, ChatRequest, self.chat_jobs)
        if req.tool_list():
            return await self.respond_with_tools(request, req, served, jobs, stop)
        return await self.respond(request, req, jobs, stop, chat_shape(served))

    # --- answering ---------------------------------------------------------------------------

    async def accept(self, request: Request, schema, jobs_for: Callable[[Any, ServedModel], list[Job]]):
        """Check the key, read the body; then, on a worker thread, parse it as `schema`, find the requested
        model (logged with the request) and tokenize its prompts with `jobs_for(req, served)`."""
        self.authorize(request.headers.get("authorization", ""))
        body = await read_body(request, self.max_body_bytes)

        def prepare():
            req = parse_request(body, schema)
            served = self.lookup(req.model)
            request.state.model = served.id
            return req, served, jobs_for(req, served), req.stop_list()

        return await asyncio.to_thread(prepare)

    async def respond(self, request: Request, req, jobs: list[Job], stop: list[str], shape: Shape):
        """Run `jobs` and answer in `shape`, streamed or whole."""
        if req.stream:
            return event_stream(self._events(request, req, jobs, stop, shape), request)
        gens = [await self.engine.generate(shape.served, ids, settings, stop) for ids, settings in jobs]
        record(request, gens)
        return {
            **shape.head,
            "object": shape.whole_object,
            "choices": [shape.whole_choice(i, g) for i, g in enumerate(gens)],
            "usage": total_usage(gens),
        }

    async def _events(self, request: Request, req, jobs: list[Job], stop: list[str], shape: Shape):
        if shape.opening is not None:
            yield sse(shape.chunk(0, shape.opening, None))
        gens = []
        for i, (ids, settings) in enumerate(jobs):
            async for piece, gen in stream_pieces(self.engine, shape.served, ids, settings, stop):
                if gen is None:
                    yield sse(shape.chunk(i, shape.piece(piece), None))
                else:
                    gens.append(gen)
                    yield sse(shape.chunk(i, shape.piece(None), gen.finish_reason))
        record(request, gens)
        if req.stream_options and req.stream_options.include_usage:
            yield sse({**shape.head, "choices": [], "usage": total_usage(gens)})
        yield sse("[DONE]")

    async def respond_with_tools(self, request: Request, req, served: ServedModel, jobs: list[Job], stop: list[str]):
        """A chat answer that may call tools: generated whole (a call is only known once complete), then
        sent as one message, or for `stream: true` as the chunks OpenAI sends (role, content, each call)."""
        gens = [await self.engine.generate(served, ids, settings, stop) for ids, settings in jobs]
        record(request, gens)
        head = {"id": new_id("chatcmpl"), "created": now(), "model": served.id}
        content, calls = self.read_calls(gens[0].text)
        finish = "tool_calls" if calls else gens[0].finish_reason
        if req.stream:
            return event_stream(tool_call_events(head, content, calls, finish, req, gens), request)
        message = {"role": "assistant", "content": content if content or not calls else None}
        if calls:
            message["tool_calls"] = calls
        return {
            **head,
            "object": "chat.completion",
            "usage": total_usage(gens),
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        }


def create_app(
    engine: Engine,
    api_key: str | None = None,
    max_tokens_limit: int = 1024,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    """The ASGI app. `api_key`: required as `Authorization: Bearer KEY` on /v1/*; `max_tokens_limit`:
    the most tokens one request may ask for; `max_body_bytes`: the largest request body (413 above)."""
    serve = ServeApp(engine, api_key, max_tokens_limit, max_body_bytes)
    app = FastAPI(title="tunelab", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serve = serve
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _bug)
    app.add_api_route("/health", health, methods=["GET", "HEAD"])
    app.add_api_route("/v1/models", serve.models, methods=["GET"])
    app.add_api_route("/v1/models/{model_id:path}", serve.model, methods=["GET"])
    app.add_api_route("/v1/completions", serve.completions, methods=["POST"])
    app.add_api_route("/v1/chat/completions", serve.chat_completions, methods=["POST"])
    app.add_middleware(RequestLog)
    return app


async def health(request: Request):
    if request.method == "HEAD":  # load balancers probe with HEAD: the status, no body
        return Response(status_code=200)
    return {"status": "ok"}


async def _api_error(request: Request, e: ApiError):
    request.state.error = e.code or e.type
    return JSONResponse(e.body(), status_code=e.status)


async def _http_error(request: Request, e: StarletteHTTPException):
    err = ApiError(e.status_code, str(e.detail), code="not_found" if e.status_code == 404 else None)
    request.state.error = err.code
    return JSONResponse(err.body(), status_code=e.status_code)


async def _bug(request: Request, e: Exception):
    log.exception("internal error on %s %s", request.method, request.url.path)
    request.state.error = "server_error"
    return JSONResponse(ApiError(500, "internal server error", type="server_error").body(), status_code=500)


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


def settings_for(req, max_new: int) -> GenerationSettings:
    """The generation settings a request asks for (no seed: a fresh random one per request)."""
    return GenerationSettings(
        max_new_tokens=max_new,
        do_sample=req.temperature > 0,
        temperature=req.temperature or 1.0,
        top_p=req.top_p,
        batch_size=1,
        # OpenAI takes any 64-bit seed; the generator takes 0..SEED_MAX: fold it (a negative seed was a 500)
        seed=req.seed % (SEED_MAX + 1) if req.seed is not None else secrets.randbelow(2**31),
        ignore_eos=req.ignore_eos,
    )


@dataclass
class Shape:
    """How one endpoint's responses look: chunk head, the field a streamed piece goes in, the whole answer."""

    served: ServedModel
    head: dict[str, Any]
    field: str
    piece: Callable[[str | None], Any]
    whole_object: str
    whole: Callable[[Generation], dict[str, Any]]
    opening: dict[str, Any] | None = None

    def chunk(self, i: int, value, finish: str | None) -> dict[str, Any]:
        return {**self.head, "choices": [{"index": i, self.field: value, "logprobs": None, "finish_reason": finish}]}

    def whole_choice(self, i: int, gen: Generation) -> dict[str, Any]:
        return {"index": i, **self.whole(gen), "logprobs": None, "finish_reason": gen.finish_reason}


def completion_shape(served: ServedModel) -> Shape:
    return Shape(
        served,
        head={"id": new_id("cmpl"), "object": "text_completion", "created": now(), "model": served.id},
        field="text",
        piece=lambda text: text or "",
        whole_object="text_completion",
        whole=lambda g: {"text": g.text},
    )


def chat_shape(served: ServedModel) -> Shape:
    return Shape(
        served,
        head={"id": new_id("chatcmpl"), "object": "chat.completion.chunk", "created": now(), "model": served.id},
        field="delta",
        piece=lambda text: {} if text is None else {"content": text},
        whole_object="chat.completion",
        whole=lambda g: {"message": {"role": "assistant", "content": g.text}},
        opening={"role": "assistant", "content": ""},
    )


async def tool_call_events(head: dict[str, Any], content: str, calls: list[dict[str, Any]], finish, req, gens):
    """The chunks OpenAI streams for an answer known whole: the role, the content, each call, the finish."""

    def chunk(delta, reason=None):
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
        return sse({**head, "object": "chat.completion.chunk", "choices": [choice]})

    yield chunk({"role": "assistant", "content": ""})
    if content:
        yield chunk({"content": content})
    for i, call in enumerate(calls):
        yield chunk({"tool_calls": [{"index": i, **call}]})
    yield chunk({}, finish)
    if req.stream_options and req.stream_options.include_usage:
        yield sse({**head, "object": "chat.completion.chunk", "choices": [], "usage": total_usage(gens)})
    yield sse("[DONE]")


def total_usage(gens: list[Generation]) -> dict[str, int]:
    return usage(sum(g.prompt_tokens for g in gens), sum(g.completion_tokens for g in gens))


def record(request: Request, gens: list[Generation]) -> None:
    """The request's token counts, for its log line."""
    request.state.prompt_tokens = sum(g.prompt_tokens for g in gens)
    request.state.completion_tokens = sum(g.completion_tokens for g in gens)
