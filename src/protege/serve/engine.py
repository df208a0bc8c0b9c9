"""The engine behind `protege serve`: one base model, its LoRA adapters, a request queue and the
worker thread that batches requests and runs them.

All model compute happens on that one thread: torch already spreads a forward pass over the cores,
and a single owner of the model means adapters can be switched, loaded and unloaded between
batches without locks around the weights. HTTP handlers only tokenize, enqueue a Job and await its
events, so the event loop is never blocked by compute.

Dynamic batching: when the worker is free it waits a short window after the oldest pending request
(or until a full batch is waiting), then takes every pending job that uses the same adapter and the
same kind of work, up to `max_batch_size` sequences, and runs them as one batch.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protege.errors import UserError
from protege.models.load import ResolvedModel, load_tokenizer, pick_dtype, resolve_model
from protege.serve.decode import Decoder, FinishEvent, Row, SamplingParams, TokenEvent


class QueueFull(Exception):
    """Too many requests in flight: the client should retry later (HTTP 503)."""


class UnknownModel(Exception):
    """The request's `model` is neither the base nor a loaded adapter (HTTP 404)."""


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


class Metrics:
    """Prometheus metrics for one server, in their own registry (several apps may share a process)."""

    def __init__(self, queue_depth: Callable[[], int], inflight: Callable[[], int]):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "protege_requests", "HTTP requests answered", ["endpoint", "status"], registry=self.registry
        )
        self.tokens = Counter("protege_tokens", "Tokens processed", ["kind"], registry=self.registry)
        self.latency = Histogram(
            "protege_request_latency_seconds",
            "Time from request to last byte",
            ["endpoint"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=self.registry,
        )
        self.batch = Histogram(
            "protege_batch_size", "Sequences per batch", buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry
        )
        Gauge("protege_queue_depth", "Requests waiting for the model", registry=self.registry).set_function(queue_depth)
        Gauge("protege_requests_active", "Requests queued or running", registry=self.registry).set_function(inflight)


class Engine:
    def __init__(
        self,
        base: ResolvedModel,
        names: list[str],
        adapters: dict[str, str | Path] | None = None,
        dtype: str = "auto",
        max_batch_size: int = 32,
        max_queue: int = 256,
        batch_wait_ms: float = 10.0,
        default_model: str | None = None,
        threads: int | None = None,
        merge: bool = False,
    ):
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads or int(os.environ.get("PROTEGE_SERVE_THREADS") or os.cpu_count() or 1))
        self.base = base
        self.base_names = list(dict.fromkeys(names))
        self.dtype = pick_dtype(dtype)
        self.model: Any = AutoModelForCausalLM.from_pretrained(str(base.path), dtype=self.dtype).eval()
        self.tokenizer = load_tokenizer(base)
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 0) or 2048)
        self.adapters: dict[str, str] = {}
        self.templates: dict[str, str] = {}
        """Adapters whose saved tokenizer has a chat template of its own (a student's system prompt)."""
        self.decoder = Decoder(self.model, self.tokenizer, self._eos_ids())
        self.end_id = self.tokenizer.eos_token_id
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.batch_wait = batch_wait_ms / 1000
        self.created = int(time.time())
        self._pending: deque[Job] = deque()
        self._inflight = 0
        self._cond = threading.Condition()
        self._closed = False
        self.metrics = Metrics(lambda: len(self._pending), lambda: self._inflight)
        self.merged: str | None = None
        """The adapter folded into the weights (--merge); the base is then not served."""
        for name, path in (adapters or {}).items():
            self._load_adapter(name, path)
        if merge:
            self.merged = self._merge()
        self.default_model = default_model or self.base_names[0]
        self._thread = threading.Thread(target=self._loop, name="protege-engine", daemon=True)
        self._thread.start()

    def _eos_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        gen = getattr(self.model, "generation_config", None)
        extra = getattr(gen, "eos_token_id", None) if gen is not None else None
        ids.update(extra if isinstance(extra, list) else [extra])
        return {i for i in ids if i is not None}

    # ---- names and adapters -----------------------------------------------------------------------
    def route(self, model: str | None) -> str | None:
        """The adapter a request's `model` names (None for the base); UnknownModel otherwise."""
        model = model or self.default_model
        if model in self.adapters:
            return model
        if model in self.base_names and not self.merged:
            return None
        raise UnknownModel(model)

    def model_cards(self) -> list[dict[str, Any]]:
        """The base under each of its names (its cache path only when it has no other), then adapters."""
        shown = [n for i, n in enumerate(self.base_names) if i == 0 or not Path(n).is_absolute()]
        shown = [] if self.merged else shown
        cards = [{"id": n, "object": "model", "created": self.created, "owned_by": "protege"} for n in shown]
        for name in self.adapters:
            cards.append(
                {
                    "id": name,
                    "object": "model",
                    "created": self.created,
                    "owned_by": "protege",
                    "parent": self.base_names[0],
                }
            )
        return cards

    def _load_adapter(self, name: str, path: str | Path) -> None:
        """Runs at start-up or on the worker thread, between batches."""
        if self.merged:
            raise UserError(f"this server folded {self.merged!r} into its weights (--merge); it takes no more adapters")
        if name in self.adapters or name in self.base_names:
            raise UserError(f"adapter name {name!r} is already in use")
        resolved = resolve_model(str(path))
        if not resolved.is_adapter:
            raise UserError(f"{path}: not a LoRA adapter folder (no adapter_config.json)")
        if Path(resolved.base.path).resolve() != Path(self.base.path).resolve():
            raise UserError(f"{path}: adapter is for base {resolved.base.name!r}, this server runs {self.base.name!r}")
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(resolved.path), adapter_name=name, is_trainable=False)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(resolved.path), adapter_name=name).eval()
            self.decoder.model = self.model
        self.adapters[name] = str(resolved.path)
        template = load_tokenizer(resolved).chat_template  # a trained student's system_prompt lives here
        if template and template != self.tokenizer.chat_template:
            self.templates[name] = template

    def _merge(self) -> str:
        """Fold the one adapter into the base weights. PEFT's separate LoRA matmuls cost ~20% of a
        short request on CPU (60 ms of 310 for the 135M model, 33 tokens); merged, the student runs
        at the base's speed, but the server then answers only as that student."""
        if len(self.adapters) != 1:
            raise UserError(f"--merge serves exactly one adapter; {len(self.adapters)} were given")
        self.model = self.model.merge_and_unload()
        self.decoder.model = self.model
        return next(iter(self.adapters))

    def _unload_adapter(self, name: str) -> None:
        self.model.delete_adapter(name)
        del self.adapters[name]
        self.templates.pop(name, None)

    @contextmanager
    def _using(self, adapter: str | None) -> Iterator[None]:
        """Route the batch through one adapter, or through the bare base with adapters switched off."""
        from peft import PeftModel

        if not isinstance(self.model, PeftModel):
            yield
        elif adapter is None or not self.adapters:
            with self.model.disable_adapter():
                yield
        else:
            self.model.set_adapter(adapter)
            yield

    async def load_adapter(self, name: str, path: str) -> None:
        await self._admin(lambda: self._load_adapter(name, path))

    async def unload_adapter(self, name: str) -> None:
        if name not in self.adapters:
            raise UnknownModel(name)
        if name == self.merged:
            raise UserError(f"{name!r} is folded into this server's weights (--merge) and cannot be unloaded")
        await self._admin(lambda: self._unload_adapter(name))

    async def _admin(self, action: Callable[[], Any]) -> None:
        job = Job("admin", None, asyncio.get_running_loop(), action=action)
        self._submit(job, force=True)
        await job.result()

    # ---- tokens -----------------------------------------------------------------------------------
    def chat_prompt(self, messages: list[dict[str, str]], adapter: str | None = None) -> list[int]:
        """The prompt as the routed model was trained to see it: an adapter's own chat template if it has one."""
        template = self.templates.get(adapter) if adapter else None
        text = self.tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=True
        )
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def text_prompt(self, text: str) -> list[int]:
        return self.tokenizer(text)["input_ids"]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    # ---- submitting work --------------------------------------------------------------------------
    def generate(self, adapter: str | None, prompt_ids: list[int], params: SamplingParams, n: int = 1) -> Job:
        """Queue a generation; iterate `job.events()` for TokenEvent / FinishEvent (one per sequence)."""
        job = Job("generate", adapter, asyncio.get_running_loop(), prompt_ids=prompt_ids, params=params, n=n)
        self._submit(job)
        return job

    async def score_choices(self, adapter: str | None, prompt_ids: list[int], choices: list[str]) -> list[float]:
        encoded = [self.encode(c) for c in choices]
        job = Job("choices", adapter, asyncio.get_running_loop(), prompt_ids=prompt_ids, choices=encoded)
        self._submit(job)
        return await job.result()

    def cancel(self, job: Job) -> None:
        """The client went away: its rows leave the batch at the next step and its slot is freed."""
        job.cancelled = True
        with self._cond:
            if job in self._pending:
                self._pending.remove(job)
                self._release(job)

    def _submit(self, job: Job, force: bool = False) -> None:
        with self._cond:
            if self._closed:
                raise QueueFull("the server is shutting down")
            if self._inflight >= self.max_queue and not force:
                raise QueueFull(f"{self._inflight} requests in flight (--max-queue {self.max_queue})")
            self._inflight += 1
            self._pending.append(job)
            self._cond.notify()

    def _release(self, job: Job) -> None:
        """Called with the lock held, once per job."""
        if not job.released:
            job.released = True
            self._inflight -= 1

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=10)

    @property
    def inflight(self) -> int:
        return self._inflight

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

    def _matches(self, job: Job, first: Job) -> bool:
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

    def _run(self, batch: list[Job]) -> None:
        if batch[0].kind == "admin":
            try:
                batch[0].action()
            except Exception as e:  # the handler re-raises it: a UserError becomes a 400
                batch[0].push(e)
            else:
                batch[0].push(True)
            return
        with self._using(batch[0].adapter):
            if batch[0].kind == "choices":
                self._run_choices(batch)
            else:
                self._run_generate(batch)

    def _run_choices(self, batch: list[Job]) -> None:
        """Every waiting choice request in one pass: each prompt runs once, all choices together."""
        live = [job for job in batch if not job.cancelled]
        if live:
            self.metrics.batch.observe(len(live))
            results = self.decoder.score_choice_groups([(j.prompt_ids, j.choices) for j in live], self.end_id)
            for job, scores in zip(live, results, strict=True):
                job.push(scores)
        with self._cond:
            for job in batch:
                self._release(job)

    def _run_generate(self, batch: list[Job]) -> None:
        rows = []
        for job in batch:
            for index in range(job.n):
                rows.append(Row(job.prompt_ids, job.params, index, self._emitter(job), lambda job=job: job.cancelled))
        self.metrics.batch.observe(len(rows))
        self.metrics.tokens.labels("prompt").inc(sum(len(r.prompt_ids) for r in rows))
        generated = self.decoder.generate(rows)
        self.metrics.tokens.labels("completion").inc(generated)

    def _emitter(self, job: Job) -> Callable[[TokenEvent | FinishEvent], None]:
        def emit(event: TokenEvent | FinishEvent) -> None:
            job.push(event)
            if isinstance(event, FinishEvent):
                job.done_rows += 1
                if job.done_rows == job.n:
                    with self._cond:
                        self._release(job)

        return emit
