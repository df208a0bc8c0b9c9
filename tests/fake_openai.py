"""A small OpenAI-shaped chat server on 127.0.0.1 for teacher and proxy tests: it counts and
records every request, answers through a `responder(body) -> text` function, streams SSE when
asked, and injects faults on demand (429 with Retry-After, 500, 400, a hang, malformed JSON).

It is a real HTTP server (uvicorn in a thread), so the clients under test run their real code.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from protege.server_process import free_port

Responder = Callable[[dict[str, Any]], str]


def last_user(body: dict[str, Any]) -> str:
    return next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")


class FakeOpenAI:
    def __init__(self, responder: Responder | None = None, delay: float = 0.0, retry_after: str = "1"):
        self.responder = responder or (lambda body: "echo: " + last_user(body))
        self.delay = delay
        self.retry_after = retry_after
        self.hang_s = 30.0
        self.faults: list[str] = []
        """Consumed one per request, in order: 429 | 500 | 400 | hang | malformed | html."""
        self.requests: list[dict[str, Any]] = []
        self.arrivals: list[float] = []
        self.headers: list[dict[str, str]] = []
        self.inflight = 0
        self.max_inflight = 0
        self.port = free_port()
        self.lock = threading.Lock()
        self.app = self._build()
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        async def models() -> dict[str, Any]:
            return {"object": "list", "data": [{"id": "fake-model", "object": "model", "owned_by": "test"}]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            body = await request.json()
            with self.lock:
                self.requests.append(body)
                self.arrivals.append(time.monotonic())
                self.headers.append(dict(request.headers))
                fault = self.faults.pop(0) if self.faults else None
                self.inflight += 1
                self.max_inflight = max(self.max_inflight, self.inflight)
            try:
                return await self._answer(body, fault)
            finally:
                with self.lock:
                    self.inflight -= 1

        return app

    async def _answer(self, body: dict[str, Any], fault: str | None) -> Response:
        if fault == "429":
            return JSONResponse({"error": {"message": "slow down"}}, 429, headers={"Retry-After": self.retry_after})
        if fault == "500":
            return JSONResponse({"error": {"message": "boom"}}, 500)
        if fault == "400":
            return JSONResponse({"error": {"message": "context too long"}}, 400)
        if fault == "hang":
            await asyncio.sleep(self.hang_s)
        if fault == "malformed":
            return Response('{"id": "x", "choices": [', media_type="application/json")
        if fault == "html":
            return Response("<html>bad gateway</html>", media_type="text/html")
        if self.delay:
            await asyncio.sleep(self.delay)
        text = self.responder(body)
        usage = {"prompt_tokens": 10, "completion_tokens": len(text.split()), "total_tokens": 10 + len(text.split())}
        if body.get("stream"):
            return StreamingResponse(self._sse(body, text, usage), media_type="text/event-stream")
        return JSONResponse(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "fake-model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": usage,
            }
        )

    async def _sse(self, body: dict[str, Any], text: str, usage: dict[str, int]):
        def event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            chunk = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": body.get("model", "fake-model"),
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra,
            }
            return f"data: {json.dumps(chunk)}\n\n".encode()

        yield event({"role": "assistant", "content": ""})
        for i, word in enumerate(text.split(" ")):
            yield event({"content": word if i == 0 else " " + word})
            await asyncio.sleep(0)
        yield event({}, "stop")
        if (body.get("stream_options") or {}).get("include_usage"):
            chunk = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 0,
                "choices": [],
                "model": body.get("model", "fake-model"),
                "usage": usage,
            }
            yield f"data: {json.dumps(chunk)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    def start(self) -> FakeOpenAI:
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="error", timeout_graceful_shutdown=1
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("fake OpenAI server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            self.thread.join(timeout=10)

    def wait_idle(self, timeout: float = 30) -> None:
        """Until no request is being answered (e.g. those a killed client left in flight)."""
        deadline = time.monotonic() + timeout
        while self.inflight and time.monotonic() < deadline:
            time.sleep(0.05)

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
