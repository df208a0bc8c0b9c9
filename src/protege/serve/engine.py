"""The engine behind `protege serve`: one base model with its adapters (adapters.py), the queue and
worker thread that batch requests (scheduler.py), and what a batch runs: generation (decode.py) or
constrained-choice scoring (models/choice.py, the scorer every stage shares).

HTTP handlers call the async methods here; everything that touches the model runs on the worker.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protege.models.choice import answer_tokens, score_token_groups
from protege.models.load import ResolvedModel, load_tokenizer, pick_dtype
from protege.serve.adapters import AdapterRegistry, UnknownModel
from protege.serve.decode import Decoder, FinishEvent, Row, SamplingParams, TokenEvent
from protege.serve.metrics import Metrics
from protege.serve.scheduler import Job, QueueFull, Scheduler

__all__ = ["Engine", "Job", "QueueFull", "UnknownModel"]


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
        self.dtype = pick_dtype(dtype)
        model: Any = AutoModelForCausalLM.from_pretrained(str(base.path), dtype=self.dtype).eval()
        self.tokenizer = load_tokenizer(base)
        self.context_length = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        self.decoder = Decoder(model, self.tokenizer, _eos_ids(model, self.tokenizer))
        self.registry = AdapterRegistry(
            model, base, list(dict.fromkeys(names)), self.tokenizer, lambda m: setattr(self.decoder, "model", m)
        )
        self.created = int(time.time())
        self.scheduler = Scheduler(self._run, max_batch_size, max_queue, batch_wait_ms)
        self.metrics = Metrics(lambda: self.scheduler.depth, lambda: self.scheduler.inflight)
        for name, path in (adapters or {}).items():
            self.registry.load(name, path)
        if merge:
            self.registry.merge()
        self.default_model = default_model or self.registry.base_names[0]
        self.scheduler.start()

    # ---- names and adapters -----------------------------------------------------------------------
    @property
    def model(self) -> Any:
        return self.registry.model

    @property
    def base_names(self) -> list[str]:
        return self.registry.base_names

    @property
    def adapters(self) -> dict[str, str]:
        """Loaded adapters: client-facing name -> folder."""
        return self.registry.paths

    @property
    def merged(self) -> str | None:
        return self.registry.merged

    def route(self, model: str | None) -> str | None:
        """The adapter a request's `model` names (None for the base); UnknownModel otherwise."""
        return self.registry.route(model or self.default_model)

    def model_cards(self) -> list[dict[str, Any]]:
        return self.registry.model_cards(self.created)

    async def load_adapter(self, name: str, path: str) -> None:
        await self._admin(lambda: self.registry.load(name, path))

    async def unload_adapter(self, name: str) -> None:
        self.registry.check_unload(name)
        await self._admin(lambda: self.registry.unload(name))

    async def _admin(self, action: Callable[[], Any]) -> None:
        job = Job("admin", None, asyncio.get_running_loop(), action=action)
        self.scheduler.submit(job, force=True)
        await job.result()

    # ---- tokens -----------------------------------------------------------------------------------
    def chat_prompt(self, messages: list[dict[str, str]], adapter: str | None = None) -> list[int]:
        """The prompt as the routed model was trained to see it: an adapter's own chat template if it has one."""
        text = self.tokenizer.apply_chat_template(
            messages, chat_template=self._template(adapter), tokenize=False, add_generation_prompt=True
        )
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def choice_prompt(
        self, messages: list[dict[str, str]], choices: list[str], adapter: str | None = None
    ) -> tuple[list[int], list[list[int]]]:
        """(prompt ids, each choice's ids) by the one constrained-choice rule (models/choice.py);
        DataError when the chat template cannot place an answer."""
        return answer_tokens(self.tokenizer, messages, choices, self._template(adapter))

    def _template(self, adapter: str | None) -> str | None:
        return self.registry.templates.get(adapter) if adapter else None

    def text_prompt(self, text: str) -> list[int]:
        return self.tokenizer(text)["input_ids"]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    # ---- submitting work --------------------------------------------------------------------------
    def generate(self, adapter: str | None, prompt_ids: list[int], params: SamplingParams, n: int = 1) -> Job:
        """Queue a generation; iterate `job.events()` for TokenEvent / FinishEvent (one per sequence)."""
        job = Job("generate", adapter, asyncio.get_running_loop(), prompt_ids=prompt_ids, params=params, n=n)
        self.scheduler.submit(job)
        return job

    async def score_choices(self, adapter: str | None, prompt_ids: list[int], choices: list[list[int]]) -> list[float]:
        """Scores of token choices (from `choice_prompt`) after the prompt, batched with other requests."""
        job = Job("choices", adapter, asyncio.get_running_loop(), prompt_ids=prompt_ids, choices=choices)
        self.scheduler.submit(job)
        return await job.result()

    def cancel(self, job: Job) -> None:
        self.scheduler.cancel(job)

    @property
    def inflight(self) -> int:
        return self.scheduler.inflight

    def close(self) -> None:
        self.scheduler.close()

    # ---- running a batch (worker thread) ----------------------------------------------------------
    def _run(self, batch: list[Job]) -> None:
        if batch[0].kind == "admin":
            try:
                batch[0].action()
            except Exception as e:  # the handler re-raises it: a UserError becomes a 400
                batch[0].push(e)
            else:
                batch[0].push(True)
            return
        with self.registry.using(batch[0].adapter):
            if batch[0].kind == "choices":
                self._run_choices(batch)
            else:
                self._run_generate(batch)

    def _run_choices(self, batch: list[Job]) -> None:
        """Every waiting choice request in one pass: each prompt runs once, all choices together."""
        live = [job for job in batch if not job.cancelled]
        if live:
            self.metrics.batch.observe(len(live))
            groups = [(j.prompt_ids, j.choices) for j in live]
            for job, scores in zip(live, score_token_groups(self.model, groups, self.decoder.pad_id), strict=True):
                job.push(scores)
        for job in batch:
            self.scheduler.release(job)

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
                    self.scheduler.release(job)

        return emit


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids = {tokenizer.eos_token_id}
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None) if gen is not None else None
    ids.update(extra if isinstance(extra, list) else [extra])
    return {i for i in ids if i is not None}
