"""A small OpenAI-shaped chat server on 127.0.0.1 for teacher and proxy tests: it counts and
records every request, answers through a `responder(body) -> text` function, streams SSE when
asked, and injects faults on demand (429 with Retry-After, 500, 400, a hang, malformed JSON).

It also serves OpenAI's Batch API (`/v1/files`, `/v1/batches`): a batch answers its lines through the
same responder, reports `validating` / `in_progress` for `batch_polls` retrieves and then ends as
`completed`, or as `expired` after answering only `batch_expire_after` lines; lines whose index is in
`batch_fail_lines` go to the error file with a 500, as OpenAI reports a failed request.

It is a real HTTP server (uvicorn in a thread), so the clients under test run their real code.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Callable
from email.parser import BytesParser
from email.policy import HTTP
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
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.batch_requests: list[dict[str, Any]] = []
        """Bodies answered inside batches (online requests are in `requests`)."""
        self.batch_polls = 1
        self.batch_expire_after: int | None = None
        self.batch_fail_lines: set[int] = set()
        self._ids = itertools.count(1)
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

        self._batch_routes(app)
        return app

    # ---- Batch API -------------------------------------------------------------------------------
    def _batch_routes(self, app: FastAPI) -> None:
        @app.post("/v1/files")
        async def upload(request: Request) -> dict[str, Any]:
            form = _multipart(await request.body(), request.headers["content-type"])
            return self._new_file(form["file"], form["purpose"].decode(), "upload.jsonl")

        @app.get("/v1/files/{file_id}/content")
        async def content(file_id: str) -> Response:
            if file_id not in self.files:
                return JSONResponse({"error": {"message": f"no file {file_id}"}}, 404)
            return Response(self.files[file_id]["data"], media_type="application/jsonl")

        @app.post("/v1/batches")
        async def create(request: Request) -> Response:
            body = await request.json()
            if body.get("input_file_id") not in self.files:
                return JSONResponse({"error": {"message": "input_file_id not found"}}, 400)
            batch_id = f"batch_{next(self._ids)}"
            lines = self.files[body["input_file_id"]]["data"].decode().splitlines()
            self.batches[batch_id] = {
                "id": batch_id,
                "object": "batch",
                "endpoint": body["endpoint"],
                "input_file_id": body["input_file_id"],
                "completion_window": body["completion_window"],
                "metadata": body.get("metadata"),
                "status": "validating",
                "created_at": int(time.time()),
                "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
                "output_file_id": None,
                "error_file_id": None,
                "_polls": 0,
            }
            return JSONResponse(self._public(self.batches[batch_id]))

        @app.get("/v1/batches/{batch_id}")
        async def retrieve(batch_id: str) -> Response:
            batch = self.batches.get(batch_id)
            if batch is None:
                return JSONResponse({"error": {"message": f"no batch {batch_id}"}}, 404)
            with self.lock:
                batch["_polls"] += 1
                if batch["status"] in ("validating", "in_progress"):
                    if batch["_polls"] > self.batch_polls:
                        self._run_batch(batch)
                    else:
                        batch["status"] = "in_progress"
            return JSONResponse(self._public(batch))

    def _new_file(self, data: bytes, purpose: str, filename: str) -> dict[str, Any]:
        file_id = f"file-{next(self._ids)}"
        info = {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time())}
        info |= {"filename": filename, "purpose": purpose}
        self.files[file_id] = {**info, "data": data}
        return info

    @staticmethod
    def _public(batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in batch.items() if not k.startswith("_")}

    def _run_batch(self, batch: dict[str, Any]) -> None:
        """Answer the batch's lines (all, or the first `batch_expire_after`) and write its files."""
        lines = [json.loads(x) for x in self.files[batch["input_file_id"]]["data"].decode().splitlines()]
        out, err = [], []
        for i, line in enumerate(lines):
            if self.batch_expire_after is not None and i >= self.batch_expire_after:
                error = {"code": "batch_expired", "message": "This request could not be executed before expiry."}
                err.append({"id": f"req_{i}", "custom_id": line["custom_id"], "response": None, "error": error})
                continue
            if i in self.batch_fail_lines:
                body = {"error": {"message": "boom", "type": "server_error"}}
                response = {"status_code": 500, "request_id": f"r{i}", "body": body}
                err.append({"id": f"req_{i}", "custom_id": line["custom_id"], "response": response, "error": None})
                continue
            self.batch_requests.append(line["body"])
            text = self.responder(line["body"])
            usage = {"prompt_tokens": 10, "completion_tokens": len(text.split())}
            completion = {
                "id": f"chatcmpl-b{i}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": line["body"].get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": usage | {"total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]},
            }
            response = {"status_code": 200, "request_id": f"r{i}", "body": completion}
            out.append({"id": f"req_{i}", "custom_id": line["custom_id"], "response": response, "error": None})
        expired = self.batch_expire_after is not None
        batch["status"] = "expired" if expired else "completed"
        batch["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(err)}
        if out:
            batch["output_file_id"] = self._new_file(_jsonl(out), "batch_output", "output.jsonl")["id"]
        if err:
            batch["error_file_id"] = self._new_file(_jsonl(err), "batch_output", "errors.jsonl")["id"]

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


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _multipart(body: bytes, content_type: str) -> dict[str, bytes]:
    """The fields of a multipart/form-data body (the stdlib email parser; no python-multipart here)."""
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    return {
        part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
        for part in message.iter_parts()
    }
