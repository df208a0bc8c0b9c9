"""The HTTP layer of `protege serve`: OpenAI-shaped routes over the Engine.

Handlers check input, tokenize, queue a job and await its events; they never touch the model.
Every failure leaves as OpenAI's error JSON (`{"error": {message, type, param, code}}`) so the
official client raises its usual exceptions.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from protege.errors import DataError
from protege.models.choice import best_choice
from protege.models.precision import dtype_name
from protege.serve.admin import AdminPolicy, admin_router
from protege.serve.decode import FinishEvent, SamplingParams, TokenEvent
from protege.serve.engine import Engine, Job, QueueFull, UnknownModel
from protege.serve.limits import DEFAULT_MAX_BODY_MB, BodyLimit
from protege.serve.protocol import (
    APIError,
    ChatChoice,
    ChatChunk,
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Usage,
    error_payload,
)

DEFAULT_MAX_TOKENS = 4096
"""Cap on generated tokens when a request gives no max_tokens (the context window caps it too)."""


def create_app(
    engine: Engine,
    api_key: str | None = None,
    admin: AdminPolicy | None = None,
    max_body_bytes: int = int(DEFAULT_MAX_BODY_MB * 2**20),
) -> FastAPI:
    """The app: /health, /metrics, the OpenAI routes under /v1 (behind `api_key` when given) and,
    only with an `admin` policy (its own key), the adapter routes (admin.py)."""
    app = FastAPI(title="protege serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    _install_errors(app)
    _install_metrics(app, engine)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "models": [c["id"] for c in engine.model_cards()],
            "inflight": engine.inflight,
            "dtype": dtype_name(engine.dtype),
        }

    if admin is not None:
        app.include_router(admin_router(engine, admin), prefix="/v1")
    app.include_router(_v1_router(engine, api_key), prefix="/v1")
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    return app


# ---- errors and metrics -------------------------------------------------------------------------
def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api(_: Request, e: APIError) -> JSONResponse:
        return JSONResponse(error_payload(e.message, e.type, e.param, e.code), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        if first.get("type") == "json_invalid":
            message, param = f"request body is not valid JSON: {first.get('msg')}", None
        else:
            param = ".".join(loc) or None
            message = f"{param or 'body'}: {first.get('msg')}"
        return JSONResponse(error_payload(message, "invalid_request_error", param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_payload(str(e.detail), "invalid_request_error"), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _crash(_: Request, e: Exception) -> JSONResponse:
        return JSONResponse(error_payload(f"{type(e).__name__}: {e}", "server_error"), status_code=500)


def _install_metrics(app: FastAPI, engine: Engine) -> None:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    metrics = engine.metrics

    @app.middleware("http")
    async def _count(request: Request, call_next: Any) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        endpoint = request.url.path if request.url.path.startswith("/v1/") else "other"
        if request.url.path.startswith("/v1/adapters"):
            endpoint = "/v1/adapters"
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
        return response

    @app.get("/metrics")
    async def _metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _auth(api_key: str | None) -> Any:
    async def check(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise APIError(401, "invalid or missing API key (Authorization: Bearer KEY)", code="invalid_api_key")

    return check


# ---- /v1 ----------------------------------------------------------------------------------------
def _v1_router(engine: Engine, api_key: str | None) -> APIRouter:
    router = APIRouter(dependencies=[Depends(_auth(api_key))])

    @router.get("/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": engine.model_cards()}

    @router.post("/chat/completions")
    async def chat(body: ChatCompletionRequest) -> Any:
        adapter, name = _route(engine, body.model)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
        try:
            prompt = engine.chat_prompt(messages, adapter)
        except Exception as e:  # the chat template rejects the conversation (e.g. roles out of order)
            raise APIError(400, f"messages: the chat template refused them ({e})", param="messages") from None
        if body.choices is not None:
            return await _choose(engine, adapter, name, messages, body.choices)
        params = _sampling(engine, body, prompt, "messages")
        params.logprobs, params.top_logprobs = body.logprobs, body.top_logprobs or 0
        params.json_mode = body.response_format is not None and body.response_format.type == "json_object"
        job = _submit(engine, adapter, prompt, params, body.n)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _sse(_chat_stream(engine, job, name, len(prompt), include_usage))
        return await _chat_result(engine, job, name, len(prompt), body.logprobs)

    @router.post("/completions")
    async def completions(body: CompletionRequest) -> Any:
        adapter, name = _route(engine, body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) > 1 and body.stream:
            raise APIError(400, "stream: only one prompt may be streamed", param="stream")
        encoded = [engine.text_prompt(p) for p in prompts]
        all_params = [_sampling(engine, body, ids, "prompt") for ids in encoded]
        for params in all_params:
            params.logprobs, params.top_logprobs = body.logprobs is not None, body.logprobs or 0
        jobs = [_submit(engine, adapter, ids, p, body.n) for ids, p in zip(encoded, all_params, strict=True)]
        if body.stream:
            return _sse(_completion_stream(engine, jobs[0], name, body.echo and prompts[0]))
        return await _completion_result(engine, jobs, name, encoded, prompts if body.echo else None)

    return router


def _route(engine: Engine, model: str | None) -> tuple[str | None, str]:
    try:
        adapter = engine.route(model)
    except UnknownModel:
        known = ", ".join(c["id"] for c in engine.model_cards())
        raise APIError(
            404, f"model {model!r} is not served here; try one of: {known}", "model", "model_not_found"
        ) from None
    return adapter, model or engine.default_model


def _check_context(engine: Engine, prompt: list[int], max_tokens: int, param: str) -> None:
    if len(prompt) >= engine.context_length:
        raise APIError(
            400,
            f"{param}: the prompt is {len(prompt)} tokens; this model's context window is {engine.context_length}",
            param,
            "context_length_exceeded",
        )
    if len(prompt) + max_tokens > engine.context_length:
        raise APIError(
            400,
            f"max_tokens: {len(prompt)} prompt tokens + {max_tokens} exceed the context window "
            f"({engine.context_length})",
            "max_tokens",
            "context_length_exceeded",
        )


def _sampling(engine: Engine, body: Any, prompt: list[int], param: str) -> SamplingParams:
    _check_context(engine, prompt, body.max_tokens or 1, param)
    room = engine.context_length - len(prompt)
    max_tokens = body.max_tokens or min(room, DEFAULT_MAX_TOKENS)
    return SamplingParams(
        max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, seed=body.seed, stop=body.stop or []
    )


def _submit(engine: Engine, adapter: str | None, prompt: list[int], params: SamplingParams, n: int) -> Job:
    try:
        return engine.generate(adapter, prompt, params, n)
    except QueueFull as e:
        raise APIError(503, f"the server is busy: {e}; retry shortly", code="queue_full") from None


async def _choose(
    engine: Engine, adapter: str | None, name: str, messages: list[dict[str, str]], choices: list[str]
) -> Any:
    """Constrained choice: the most likely choice as the message, every score in `choice_scores`.
    Choices are tokenised and scored by models/choice.py, the rule training and teachers use."""
    try:
        prompt, encoded = engine.choice_prompt(messages, choices, adapter)
    except DataError as e:
        raise APIError(400, f"choices: {e}", param="choices") from None
    _check_context(engine, prompt, max(len(c) for c in encoded), "messages")
    try:
        scores = await engine.score_choices(adapter, prompt, encoded)
    except QueueFull as e:
        raise APIError(503, f"the server is busy: {e}; retry shortly", code="queue_full") from None
    best = best_choice(choices, scores)
    message = {"role": "assistant", "content": best}
    return ChatCompletion(
        model=name,
        choices=[ChatChoice(index=0, message=message, finish_reason="stop")],
        usage=Usage.of(len(prompt), len(encoded[choices.index(best)])),
        choice_scores=dict(zip(choices, scores, strict=True)),
    ).model_dump(exclude_none=True)


async def _collect(job: Job) -> tuple[dict[int, list[str]], dict[int, list[dict]], dict[int, FinishEvent]]:
    texts: dict[int, list[str]] = {i: [] for i in range(job.n)}
    logprobs: dict[int, list[dict]] = {i: [] for i in range(job.n)}
    finished: dict[int, FinishEvent] = {}
    try:
        async for event in job.events():
            if isinstance(event, TokenEvent):
                texts[event.index].append(event.text)
                logprobs[event.index].extend(event.logprobs)
            else:
                finished[event.index] = event
    except RuntimeError as e:
        raise APIError(500, f"generation failed: {e}") from None
    return texts, logprobs, finished


async def _chat_result(engine: Engine, job: Job, name: str, prompt_len: int, want_logprobs: bool) -> Any:
    texts, logprobs, finished = await _collect(job)
    choices = [
        ChatChoice(
            index=i,
            message={"role": "assistant", "content": "".join(texts[i])},
            finish_reason=finished[i].finish_reason,
            logprobs={"content": logprobs[i]} if want_logprobs else None,
        )
        for i in range(job.n)
    ]
    completion = sum(f.completion_tokens for f in finished.values())
    return ChatCompletion(model=name, choices=choices, usage=Usage.of(prompt_len, completion)).model_dump(
        exclude_none=True
    )


async def _completion_result(
    engine: Engine, jobs: list[Job], name: str, encoded: list[list[int]], echo: list[str] | None
) -> Any:
    choices, completion = [], 0
    for p, job in enumerate(jobs):
        texts, logprobs, finished = await _collect(job)
        for i in range(job.n):
            text = "".join(texts[i])
            choices.append(
                CompletionChoice(
                    index=p * job.n + i,
                    text=(echo[p] + text) if echo else text,
                    finish_reason=finished[i].finish_reason,
                    logprobs=_legacy_logprobs(logprobs[i]) if job.params.logprobs else None,
                )
            )
            completion += finished[i].completion_tokens
    usage = Usage.of(sum(len(e) for e in encoded), completion)
    return Completion(model=name, choices=choices, usage=usage).model_dump(exclude_none=True)


def _legacy_logprobs(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """/v1/completions' older logprobs shape: parallel lists plus a dict of alternatives per token."""
    offsets, pos = [], 0
    for e in entries:
        offsets.append(pos)
        pos += len(e["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
        "text_offset": offsets,
    }


# ---- streaming ----------------------------------------------------------------------------------
def _sse(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _data(obj: Any) -> str:
    payload = obj.model_dump(exclude_none=True) if hasattr(obj, "model_dump") else obj
    return f"data: {json.dumps(payload)}\n\n"


async def _chat_stream(engine: Engine, job: Job, name: str, prompt_len: int, include_usage: bool) -> AsyncIterator[str]:
    """SSE chunks: the role first, then one chunk per shown token, a finish chunk per choice, [DONE].
    If the client goes away, the job is cancelled so its rows leave the batch and free the slot."""
    head = {"id": f"chatcmpl-{id(job):x}{int(time.time())}", "created": int(time.time()), "model": name}
    completion = 0
    try:
        for i in range(job.n):
            yield _data(ChatChunk(**head, choices=[{"index": i, "delta": {"role": "assistant", "content": ""}}]))
        async for event in job.events():
            if isinstance(event, TokenEvent):
                choice: dict[str, Any] = {"index": event.index, "delta": {"content": event.text}, "finish_reason": None}
                if event.logprobs:
                    choice["logprobs"] = {"content": event.logprobs}
            else:
                completion += event.completion_tokens
                choice = {"index": event.index, "delta": {}, "finish_reason": event.finish_reason}
            yield _data(ChatChunk(**head, choices=[choice]))
        if include_usage:
            yield _data(ChatChunk(**head, choices=[], usage=Usage.of(prompt_len, completion)))
    except RuntimeError as e:
        yield _data(error_payload(f"generation failed: {e}", "server_error"))
    finally:
        engine.cancel(job)  # no-op when the job already finished
    yield "data: [DONE]\n\n"


async def _completion_stream(engine: Engine, job: Job, name: str, echo: str | bool) -> AsyncIterator[str]:
    head = {"id": f"cmpl-{id(job):x}{int(time.time())}", "object": "text_completion", "created": int(time.time())}
    try:
        if echo:
            yield _data({**head, "model": name, "choices": [{"index": 0, "text": echo, "finish_reason": None}]})
        async for event in job.events():
            if isinstance(event, TokenEvent):
                choice = {"index": event.index, "text": event.text, "finish_reason": None}
                if event.logprobs:
                    choice["logprobs"] = _legacy_logprobs(event.logprobs)
            else:
                choice = {"index": event.index, "text": "", "finish_reason": event.finish_reason}
            yield _data({**head, "model": name, "choices": [choice]})
    except RuntimeError as e:
        yield _data(error_payload(f"generation failed: {e}", "server_error"))
    finally:
        engine.cancel(job)
    yield "data: [DONE]\n\n"
