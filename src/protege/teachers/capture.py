"""A logging proxy in front of any OpenAI-compatible endpoint (the OpenPipe pattern).

Point an application's `base_url` at `protege capture --upstream URL` and every chat completion
is forwarded unchanged (streams chunk by chunk, as they arrive) while the request, the answer
(for a stream: the assembled text and usage), latency and tags are written to the workspace's
`calls` table (kind=capture). Credentials are forwarded but never stored: headers are not logged
at all, and credentials in bodies, answers, tags and errors are redacted (`redact`). Each answer carries
`X-Protege-Call-Id`, the handle for `POST /v1/feedback`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from protege.store import Store, dumps

CALL_ID_HEADER = "X-Protege-Call-Id"
TAGS_HEADER = "X-Protege-Tags"
REDACTED = "[redacted]"
# A field whose name says it holds a credential. `token` only at the end of a name, so that
# `max_tokens` and `prompt_tokens` stay readable while `access_token` and `idToken` do not.
_SECRET_FIELD_RE = re.compile(
    r"api[-_]?key|apikey|access[-_]?key|private[-_]?key|secret|passw(or)?d|authori[sz]ation|credential|cookie"
    r"|bearer|token$|^auth$",
    re.I,
)
# Credentials by their shape, wherever they appear in a string. One pattern per provider so a
# test can show each is caught; an unknown key format is still caught by its field name.
SECRET_PATTERNS: dict[str, str] = {
    "openai/anthropic (sk-, pk-, rk-, ak-)": r"\b(?:sk|pk|rk|ak)-[A-Za-z0-9_\-]{8,}",
    "stripe (sk_live_, ...)": r"\b(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{8,}",
    "hugging face (hf_)": r"\bhf_[A-Za-z0-9]{16,}",
    "google (AIza)": r"\bAIza[0-9A-Za-z_\-]{30,}",
    "github (ghp_, gho_, ghu_, ghs_, ghr_)": r"\bgh[pousr]_[A-Za-z0-9]{20,}",
    "github fine-grained (github_pat_)": r"\bgithub_pat_[A-Za-z0-9_]{20,}",
    "aws access key id (AKIA, ASIA)": r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b",
    "groq (gsk_)": r"\bgsk_[A-Za-z0-9]{20,}",
    "slack (xoxb-, xoxp-, xoxa-, ...)": r"\bxox[abposr]-[A-Za-z0-9\-]{10,}",
    "jwt": r"\beyJ[A-Za-z0-9_\-]{5,}\.eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]*",
    "private key block": r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----",
    "authorization header value": r"\b(?:Bearer|Basic|Token)\s+[A-Za-z0-9_\-.=~+/]{8,}",
}
_SECRET_VALUE_RE = re.compile("|".join(f"(?:{p})" for p in SECRET_PATTERNS.values()), re.S)
# `password=...`, `"api_key": "..."`, `?token=...` inside a string (a pasted config, a URL).
_SECRET_ASSIGNMENT_RE = re.compile(
    r"""(\b(?:api[-_]?key|apikey|access[-_]?key|secret[-_]?key|client[-_]?secret|secret|passw(?:or)?d"""
    r"""|(?:access|auth|refresh|id)[-_]?token|token)\b["']?\s*[:=]\s*["']?)([^\s"',;&]{4,})""",
    re.I,
)
_HOP_HEADERS = {
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "accept-encoding",
    "te",
    "upgrade",
    "proxy-authorization",
    TAGS_HEADER.lower(),
}
_DROP_RESPONSE_HEADERS = {"content-length", "content-encoding", "transfer-encoding", "connection", "keep-alive"}


def redact(value: Any) -> Any:
    """A copy with credentials replaced, at any depth: a string value of a field named like a
    credential (api_key, password, secret, ...token, authorization), and anything shaped like a
    key (SECRET_PATTERNS) or assigned to a key-like name inside any string."""
    if isinstance(value, dict):
        return {k: _redact_field(str(k), v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


def _redact_field(name: str, value: Any) -> Any:
    # Objects and lists under such a name are walked, not dropped: a tool's JSON schema may well
    # have a `password` property, and its description is no secret.
    if _SECRET_FIELD_RE.search(name) and value is not None and not isinstance(value, dict | list | bool):
        return REDACTED
    return redact(value)


def redact_text(text: str) -> str:
    text = _SECRET_VALUE_RE.sub(REDACTED, text)
    return _SECRET_ASSIGNMENT_RE.sub(lambda m: m.group(1) + REDACTED, text)


def parse_tags(header: str | None, metadata: Any) -> list[str]:
    """Tags from `X-Protege-Tags: a,b` and the request's `metadata` ({"tags": "a,b"} or k: v pairs)."""
    tags = [t.strip() for t in (header or "").split(",") if t.strip()]
    if isinstance(metadata, dict):
        for k, v in metadata.items():
            if k in ("tag", "tags"):
                items = v if isinstance(v, list) else str(v).split(",")
                tags += [str(t).strip() for t in items if str(t).strip()]
            else:
                tags.append(f"{k}={v}")
    return list(dict.fromkeys(tags))


class SSEAssembler:
    """Rebuilds the answer of a streamed chat completion from its `data:` events, without
    altering the bytes the client receives."""

    def __init__(self) -> None:
        self.buffer = ""
        self.parts: list[str] = []
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.model: str | None = None
        self.error: Any = None

    def feed(self, chunk: bytes) -> None:
        self.buffer += chunk.decode("utf-8", errors="replace")
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            self._line(line.strip())

    def _line(self, line: str) -> None:
        if not line.startswith("data:"):
            return
        data = line[5:].strip()
        if not data or data == "[DONE]":
            return
        try:
            event = json.loads(data)
        except json.JSONDecodeError:
            return
        self.model = event.get("model") or self.model
        self.usage = event.get("usage") or self.usage
        self.error = event.get("error") or self.error
        for choice in event.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            content = (choice.get("delta") or {}).get("content")
            if content:
                self.parts.append(content)
            self.finish_reason = choice.get("finish_reason") or self.finish_reason

    def response(self) -> dict[str, Any]:
        self.feed(b"\n")
        return {
            "text": "".join(self.parts),
            "finish_reason": self.finish_reason,
            "model": self.model,
            "usage": self.usage,
            "stream": True,
        }


class CallLog:
    """The calls-table side of the proxy: a row when a request arrives (so its id can be returned
    before a stream starts), completed when the answer has been relayed."""

    def __init__(self, store: Store):
        self.store = store

    def start(self, body: dict[str, Any], tags: list[str]) -> int:
        cur = self.store.execute(
            "INSERT INTO calls (kind, model, request, status, tags, created_at) VALUES ('capture',?,?,'pending',?,?)",
            (redact(body.get("model")), dumps(redact(body)), dumps(redact(tags)), time.time()),
        )
        return int(cur.lastrowid)

    def finish(
        self,
        call_id: int,
        status_code: int,
        response: dict[str, Any] | None,
        latency_ms: float,
        error: str | None = None,
    ) -> None:
        usage = (response or {}).get("usage") or {}
        ok = error is None and 200 <= status_code < 300
        self.store.execute(
            "UPDATE calls SET response=?, status=?, error=?, prompt_tokens=?, completion_tokens=?, latency_ms=? "
            "WHERE id=?",
            (
                dumps(redact(response)),
                "ok" if ok else "error",
                redact(error) or (None if ok else f"upstream {status_code}"),
                usage.get("prompt_tokens"),
                usage.get("completion_tokens"),
                latency_ms,
                call_id,
            ),
        )


class Feedback(BaseModel):
    call_id: int
    rating: float | None = None
    correction: str | None = None
    comment: str | None = None


def _upstream_base(upstream: str) -> str:
    """The upstream as an OpenAI client's base_url; a bare host gets `/v1`."""
    upstream = upstream.rstrip("/")
    return upstream if re.search(r"://[^/]+/.+", upstream) else upstream + "/v1"


def create_app(store: Store, upstream: str, timeout_s: float = 600.0) -> FastAPI:
    base = _upstream_base(upstream)
    log = CallLog(store)
    state: dict[str, httpx.AsyncClient] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state["client"] = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=10.0))
        yield
        await state["client"].aclose()

    app = FastAPI(title="protege capture", lifespan=lifespan)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw)
            assert isinstance(body, dict)
        except (json.JSONDecodeError, AssertionError):
            return JSONResponse({"error": {"message": "request body is not a JSON object"}}, status_code=400)
        call_id = log.start(body, parse_tags(request.headers.get(TAGS_HEADER), body.get("metadata")))
        return await _forward(request, raw, call_id, bool(body.get("stream")))

    @app.post("/v1/feedback")
    async def feedback(item: Feedback) -> dict[str, Any]:
        if not store.query("SELECT 1 FROM calls WHERE id=?", (item.call_id,)):
            raise HTTPException(status_code=404, detail=f"no logged call {item.call_id}")
        cur = store.execute(
            "INSERT INTO feedback (call_id, rating, correction, comment, created_at) VALUES (?,?,?,?,?)",
            (item.call_id, item.rating, redact(item.correction), redact(item.comment), time.time()),
        )
        return {"id": cur.lastrowid, "call_id": item.call_id}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "upstream": base}

    @app.api_route("/v1/{path:path}", methods=["GET", "POST", "DELETE"])
    async def passthrough(path: str, request: Request) -> Response:
        """/v1/models and anything else: forwarded, not logged."""
        return await _forward(request, await request.body(), None, False, path="/" + path)

    async def _forward(
        request: Request, raw: bytes, call_id: int | None, stream: bool, path: str = "/chat/completions"
    ) -> Response:
        client = state["client"]
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        headers["accept-encoding"] = "identity"  # relay plain bytes: the stream is also parsed here
        url = base + path + (f"?{request.url.query}" if request.url.query else "")
        start = time.perf_counter()
        try:
            resp = await client.send(
                client.build_request(request.method, url, content=raw, headers=headers), stream=True
            )
        except httpx.HTTPError as e:
            if call_id is not None:
                log.finish(call_id, 502, None, (time.perf_counter() - start) * 1000, f"upstream unreachable: {e!r}")
            extra = {CALL_ID_HEADER: str(call_id)} if call_id is not None else {}
            return JSONResponse({"error": {"message": f"upstream unreachable: {e}"}}, status_code=502, headers=extra)
        out_headers = {k: v for k, v in resp.headers.items() if k.lower() not in _DROP_RESPONSE_HEADERS}
        if call_id is not None:
            out_headers[CALL_ID_HEADER] = str(call_id)
        if stream and resp.status_code == 200:
            return StreamingResponse(_relay(resp, call_id, start), status_code=resp.status_code, headers=out_headers)
        content = await resp.aread()
        await resp.aclose()
        if call_id is not None:
            log.finish(call_id, resp.status_code, _parse_answer(content), (time.perf_counter() - start) * 1000)
        return Response(content, status_code=resp.status_code, headers=out_headers)

    async def _relay(resp: httpx.Response, call_id: int | None, start: float) -> AsyncIterator[bytes]:
        sse = SSEAssembler()
        error = "client disconnected before the end of the stream"
        try:
            async for chunk in resp.aiter_raw():
                sse.feed(chunk)
                yield chunk
            error = None
        finally:
            await resp.aclose()
            if call_id is not None:
                answer = sse.response()
                log.finish(call_id, 200, answer, (time.perf_counter() - start) * 1000, error or _sse_error(sse))

    return app


def _sse_error(sse: SSEAssembler) -> str | None:
    return f"upstream error in stream: {str(sse.error)[:200]}" if sse.error else None


def _parse_answer(content: bytes) -> dict[str, Any]:
    try:
        body = json.loads(content)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"text": None, "raw": content[:2000].decode("utf-8", errors="replace")}
    choice = ((body.get("choices") or [{}])[0]) if isinstance(body, dict) else {}
    message = choice.get("message") or {}
    return {
        "text": message.get("content"),
        "finish_reason": choice.get("finish_reason"),
        "model": body.get("model"),
        "usage": body.get("usage"),
        "body": body,
    }


def serve_capture(store: Store, upstream: str, host: str = "127.0.0.1", port: int = 8001) -> None:
    import uvicorn

    uvicorn.run(create_app(store, upstream), host=host, port=port, log_level="warning")
