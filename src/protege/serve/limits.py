"""Refuse an oversize request body with 413 before anything parses or tokenises it.

Without a limit a 20 MB prompt was read, parsed and tokenised (5.2M tokens, seconds of CPU) only
to be refused as longer than the context window. This ASGI middleware answers 413 from the
Content-Length header alone, and counts a streamed (chunked) body as it arrives, stopping at the
limit, so no handler ever sees more than `max_bytes`.
"""

from __future__ import annotations

import json
from typing import Any

from protege.serve.protocol import error_payload

DEFAULT_MAX_BODY_MB = 8.0
"""Far above any prompt that fits a small model's context window (8,192 tokens is ~40 KB)."""

Scope = dict[str, Any]


class BodyLimit:
    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if _content_length(scope) > self.max_bytes:
            return await self._refuse(send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None  # the client left before sending its body: nobody to answer
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await self._refuse(send)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict[str, Any]:
            """The buffered body once, then the real channel (disconnects during streaming)."""
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        return await self.app(scope, replay, send)

    async def _refuse(self, send: Any) -> None:
        mb = self.max_bytes / 2**20
        message = f"request body over {mb:g} MiB (--max-body-mb); send less, or start the server with a larger limit"
        body = json.dumps(error_payload(message, "invalid_request_error", None, "request_too_large")).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": [*headers, (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0  # the HTTP server refuses malformed lengths before we see them
    return 0
