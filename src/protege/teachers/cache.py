"""Teacher calls through a response cache in the workspace's `calls` table.

Every call is keyed by sha256 of (endpoint, model, messages, parameters) and written as one autocommit
row the moment it completes, so a re-run costs nothing and a run killed with SIGKILL loses at
most the calls that were in flight: the restart asks only for what has no row yet. Datasets are
assembled from these rows afterwards, never accumulated in memory across a run.

The endpoint is part of the key: two servers that both call their model `gpt-4o-mini` (a proxy
and the real API, vLLM on two hosts) are different teachers. The API key is not: asking the same
endpoint with another key gives the same answer. An in-process teacher has no endpoint, so its
keys are what they were before endpoints were keyed, and its cached calls still count; calls to
an HTTP teacher cached before then simply miss once (their endpoint was never recorded).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from protege.config import TeacherConfig
from protege.store import Store, dumps, loads
from protege.teachers.client import Completion, Teacher, TeacherError

CACHED_STATUSES = ("ok", "rejected")


def cache_key(model: str, messages: list[dict[str, str]], params: dict[str, Any], endpoint: str | None = None) -> str:
    """What makes two calls the same call; `endpoint` is None for an in-process teacher."""
    body: dict[str, Any] = {"model": model, "messages": messages, "params": params}
    if endpoint is not None:
        body["endpoint"] = endpoint
    text = json.dumps(body, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def endpoint_id(base_url: str | None) -> str | None:
    """The server a base_url names: scheme, host, port and path, lower-cased host, no trailing
    slash. Credentials in it (`user:pass@`, `?key=...`) are left out: they are not the endpoint,
    and this value is stored with each call."""
    if not base_url:
        return None
    parts = urlsplit(base_url.strip())
    host = (parts.hostname or "").lower() + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme.lower(), host, parts.path.rstrip("/"), "", ""))


def prompt_hash(messages: list[dict[str, str]]) -> str:
    """Hash of the prompt alone: records asked the same way share it, whatever the parameters."""
    return hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


@dataclass
class CallResult:
    text: str
    call_id: int
    key: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    latency_ms: float = 0.0
    created_at: float = 0.0
    cached: bool = False
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass
class SessionStats:
    requests: int = 0
    """Calls that went to the teacher in this run (retries of one call count once)."""
    cache_hits: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    """Spent in this run; cache hits cost nothing."""

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "cost": round(self.cost, 6)}


class CallCache:
    def __init__(self, store: Store, kind: str = "teacher"):
        self.store = store
        self.kind = kind

    def get(self, key: str) -> CallResult | None:
        rows = self.store.query(
            f"SELECT * FROM calls WHERE cache_key=? AND kind=? AND status IN ({','.join('?' * len(CACHED_STATUSES))}) "
            "ORDER BY id LIMIT 1",
            (key, self.kind, *CACHED_STATUSES),
        )
        if not rows:
            return None
        row = rows[0]
        response = loads(row["response"]) or {}
        return CallResult(
            text=response.get("text", ""),
            call_id=row["id"],
            key=key,
            prompt_tokens=row["prompt_tokens"] or 0,
            completion_tokens=row["completion_tokens"] or 0,
            cost=row["cost"] or 0.0,
            latency_ms=row["latency_ms"] or 0.0,
            created_at=row["created_at"],
            cached=True,
            raw=response.get("raw") or {},
        )

    def put(
        self,
        key: str,
        request: dict[str, Any],
        comp: Completion | None,
        cost: float,
        tags: list[str],
        error: str | None = None,
        created_at: float | None = None,
    ) -> int:
        """One durable row per finished call (autocommit: SQLite syncs the WAL on commit).
        `created_at`: the caller's timestamp, so the live answer and a later cache hit carry the same
        time (provenance records it; two clock reads a second apart made a cached re-run a new version)."""
        response = {"text": comp.text, "raw": comp.raw, "attempts": comp.attempts} if comp else None
        cur = self.store.execute(
            "INSERT INTO calls (kind, cache_key, model, request, response, status, error, prompt_tokens, "
            "completion_tokens, cost, latency_ms, tags, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                self.kind,
                key,
                request.get("model"),
                dumps(request),
                dumps(response),
                "error" if error else "ok",
                error,
                comp.prompt_tokens if comp else None,
                comp.completion_tokens if comp else None,
                cost,
                comp.latency_ms if comp else None,
                dumps(tags),
                time.time() if created_at is None else created_at,
            ),
        )
        return int(cur.lastrowid)

    def mark(self, call_id: int, status: str, error: str | None = None) -> None:
        """Mark a call whose answer failed the task's check: it stays cached (asking again with the
        same parameters would give the same answer) but is visibly not training material."""
        self.store.execute("UPDATE calls SET status=?, error=? WHERE id=?", (status, error, call_id))


class TeacherSession:
    """Cached, bounded-concurrency, cost-accounted calls to one teacher. Identical requests in
    flight at the same time are sent once."""

    def __init__(
        self,
        store: Store,
        teacher: Teacher,
        config: TeacherConfig,
        name: str,
        concurrency: int = 4,
        local_compute_per_hour: float = 0.0,
    ):
        self.cache = CallCache(store)
        self.teacher = teacher
        self.config = config
        self.name = name
        self.stats = SessionStats()
        self._slots = asyncio.Semaphore(max(1, concurrency))
        self._inflight: dict[str, asyncio.Future[CallResult]] = {}
        self._local_rate = local_compute_per_hour

    def cost(self, comp: Completion) -> float:
        """From the price table; an in-process teacher costs this machine's time instead."""
        price = self.config.price
        cost = comp.prompt_tokens * price.input_per_1m / 1e6 + comp.completion_tokens * price.output_per_1m / 1e6
        if not self.config.base_url and not cost:
            cost = comp.latency_ms / 3.6e6 * self._local_rate
        return cost

    def key(self, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
        """The cache key of this call to this teacher (online and Batch API calls share it)."""
        return cache_key(self.config.model, messages, params, endpoint_id(self.config.base_url))

    def request(self, messages: list[dict[str, str]], params: dict[str, Any]) -> dict[str, Any]:
        """The request as the calls table stores it."""
        request = {"model": self.config.model, "messages": messages, "params": params}
        if self.config.base_url:
            request["endpoint"] = endpoint_id(self.config.base_url)
        return request

    def record(
        self,
        key: str,
        messages: list[dict[str, str]],
        params: dict[str, Any],
        comp: Completion,
        tags: list[str],
        price_factor: float = 1.0,
    ) -> CallResult:
        """Store an answer under `key` and count its tokens and cost (`price_factor`: e.g. the Batch
        API's discount)."""
        cost = self.cost(comp) * price_factor
        self.stats.prompt_tokens += comp.prompt_tokens
        self.stats.completion_tokens += comp.completion_tokens
        self.stats.cost += cost
        created_at = time.time()
        call_id = self.cache.put(key, self.request(messages, params), comp, cost, tags, created_at=created_at)
        return CallResult(
            text=comp.text,
            call_id=call_id,
            key=key,
            prompt_tokens=comp.prompt_tokens,
            completion_tokens=comp.completion_tokens,
            cost=cost,
            latency_ms=comp.latency_ms,
            created_at=created_at,
            raw=comp.raw,
        )

    async def chat(self, messages: list[dict[str, str]], params: dict[str, Any]) -> CallResult:
        key = self.key(messages, params)
        hit = self.cache.get(key)
        if hit is not None:
            self.stats.cache_hits += 1
            return hit
        if key in self._inflight:
            self.stats.cache_hits += 1
            return await asyncio.shield(self._inflight[key])
        future: asyncio.Future[CallResult] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await self._send(key, messages, params)
            future.set_result(result)
            return result
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters (if any) re-raise it themselves
            raise
        finally:
            del self._inflight[key]

    async def _send(self, key: str, messages: list[dict[str, str]], params: dict[str, Any]) -> CallResult:
        tags = [f"teacher:{self.name}"]
        async with self._slots:
            self.stats.requests += 1
            try:
                comp = await self.teacher.complete(messages, params)
            except TeacherError as e:
                self.stats.errors += 1
                self.cache.put(key, self.request(messages, params), None, 0.0, tags, error=str(e))
                raise
        return self.record(key, messages, params, comp, tags)
