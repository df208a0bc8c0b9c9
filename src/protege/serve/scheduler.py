"""The request queue and the one worker thread that batches requests and runs them.

All model compute happens on that one thread: torch already spreads a forward pass over the cores,
and a single owner of the model means adapters can be switched, loaded and unloaded between
batches without locks around the weights. HTTP handlers only tokenize, enqueue a Job and await its
events, so the event loop is never blocked by compute.

Dynamic batching: when the worker is free it waits a short window after the oldest pending request
(or until a full batch is waiting), then takes every pending job that uses the same adapter and the
same kind of work, up to `max_batch_size` sequences, and runs them as one batch. An adapter
operation ("admin" job) runs alone, in arrival order: no batch ever crosses it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from protege.serve.decode import FinishEvent, SamplingParams


class QueueFull(Exception):
    """Too many requests in flight: the client should retry later (HTTP 503)."""


@dataclass
class Job:
    """One request: `n` generated sequences, a choice scoring, or an adapter operation."""

    kind: str  # generate | choices | admin
    adapter: str | None
    loop: asyncio.AbstractEventLoop
    prompt_ids: list[int] = field(default_factory=list)
    params: SamplingParams | None = None
    n: int = 1
    choices: list[list[int]] = field(default_factory=list)
    action: Callable[[], Any] | None = None
    arrived: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    done_rows: int = 0
    released: bool = False

    @property
    def size(self) -> int:
        return self.n if self.kind == "generate" else 1

    def push(self, event: Any) -> None:
        """Called on the worker thread; hands the event to the request's event loop."""
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    async def events(self) -> AsyncIterator[Any]:
        """Token and finish events until every sequence of the request has finished."""
        finished = 0
        while finished < self.size:
            event = await self.queue.get()
            if isinstance(event, BaseException):
                raise event
            if isinstance(event, FinishEvent):
                finished += 1
            yield event

    async def result(self) -> Any:
        event = await self.queue.get()
        if isinstance(event, BaseException):
            raise event
        return event


class Scheduler:
    """Pending jobs, the in-flight count behind 503s, and the worker thread calling `run(batch)`."""

    def __init__(
        self, run: Callable[[list[Job]], None], max_batch_size: int, max_queue: int, batch_wait_ms: float
    ) -> None:
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.batch_wait = batch_wait_ms / 1000
        self._pending: deque[Job] = deque()
        self._inflight = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="protege-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def depth(self) -> int:
        return len(self._pending)

    def submit(self, job: Job, force: bool = False) -> None:
        """Queue a job; QueueFull past `max_queue` in flight (`force`: adapter operations always queue)."""
        with self._cond:
            if self._closed:
                raise QueueFull("the server is shutting down")
            if self._inflight >= self.max_queue and not force:
                raise QueueFull(f"{self._inflight} requests in flight (--max-queue {self.max_queue})")
            self._inflight += 1
            self._pending.append(job)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """The client went away: its rows leave the batch at the next step and its slot is freed."""
        job.cancelled = True
        with self._cond:
            if job in self._pending:
                self._pending.remove(job)
                self._release(job)

    def release(self, job: Job) -> None:
        """A job's work is done (its slot frees); safe to call more than once."""
        with self._cond:
            self._release(job)

    def _release(self, job: Job) -> None:
        """Called with the lock held."""
        if not job.released:
            job.released = True
            self._inflight -= 1

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    # ---- the worker thread ------------------------------------------------------------------------
    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._run(batch)
            except Exception as e:  # a failed batch fails its requests, never the server
                from protege.log import console

                console.print_exception(max_frames=4)
                for job in batch:
                    job.push(RuntimeError(f"{type(e).__name__}: {e}"))
            finally:
                with self._cond:
                    for job in batch:
                        self._release(job)

    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            first = self._pending[0]
            if first.kind == "admin":
                return [self._pending.popleft()]
            deadline = first.arrived + self.batch_wait
            while self._waiting_rows(first) < self.max_batch_size and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            return self._take(first)

    @staticmethod
    def _matches(job: Job, first: Job) -> bool:
        return job.kind == first.kind and job.adapter == first.adapter

    def _waiting_rows(self, first: Job) -> int:
        total = 0
        for job in self._pending:
            if job.kind == "admin":
                break
            total += job.size if self._matches(job, first) else 0
        return total

    def _take(self, first: Job) -> list[Job]:
        """Matching jobs in arrival order up to a full batch; never past an adapter operation."""
        taken, rows = [], 0
        for job in list(self._pending):
            if job.kind == "admin":
                break
            if not self._matches(job, first) or (taken and rows + job.size > self.max_batch_size):
                continue
            taken.append(job)
            rows += job.size
            self._pending.remove(job)
        return taken
