"""Distillation: run a teacher over a task's inputs and keep one record per input.

Each input is asked with the task's teacher prompt (instructions, few-shot examples), but the
record stores the student's short prompt (`task.student_messages`), so the small model learns to
answer without the long instructions. An answer that fails the task's check is asked again with
a different seed and a warmer temperature; after the last try it is kept as `rejected` with the
reason, so it is visible for review but never mixed into training data.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

from rich.progress import TextColumn

from protege.config import TeacherConfig
from protege.data.files import read_rows
from protege.data.records import Record, save_dataset
from protege.errors import DataError, ProtegeError, UserError
from protege.log import console, progress
from protege.names import check_name
from protege.tasks import Task
from protege.teachers.cache import CallResult, TeacherSession, prompt_hash
from protege.teachers.client import TeacherError, get_teacher_config, make_teacher
from protege.workspace import Workspace


@dataclass
class Input:
    fields: dict[str, Any]
    line: int


@dataclass
class DistillResult:
    dataset: dict[str, Any]
    run: str
    n_records: int
    n_rejected: int
    stats: dict[str, Any]
    seconds: float
    batch: dict[str, Any] | None = None
    """What the Batch API step did (`--batch`), or None for an online-only run."""

    def summary(self) -> dict[str, Any]:
        out = {
            "dataset": f"{self.dataset['name']}@{self.dataset['version']}",
            "run": self.run,
            "records": self.n_records,
            "rejected": self.n_rejected,
            "seconds": round(self.seconds, 2),
            **self.stats,
        }
        return out | ({"batch": self.batch} if self.batch is not None else {})


def read_inputs(path: str | Path, limit: int | None = None) -> list[Input]:
    """JSONL, a JSON array or CSV/TSV (a header row); a bad line names file:line. An empty CSV
    cell reads as "" (every row has every column, so a template can use any of them)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: inputs file not found")
    rows: list[Input] = []
    for n, obj in islice(read_rows(path, empty_as_missing=False), limit or None):  # lines past it are not read
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{n}: expected a JSON object of fields, got {type(obj).__name__}")
        rows.append(Input(obj, n))
    if not rows:
        raise DataError(f"{path}: no inputs")
    return rows


def teacher_params(config: TeacherConfig, task: Task, attempt: int = 0) -> dict[str, Any]:
    """Request parameters; part of the cache key, so a retry (new seed, warmer) is a new call."""
    params: dict[str, Any] = {"temperature": config.temperature, "max_tokens": config.max_tokens}
    if attempt:
        params["temperature"] = round(min(1.0, config.temperature + 0.3 * attempt), 2)
        params["seed"] = attempt
    if config.constrained_choices and task.output.kind == "label":
        params["extra_body"] = {"choices": task.labels}
    return params


def format_output(task: Task, value: Any, text: str) -> str:
    """The assistant turn the student learns: the canonical label, compact JSON, or the text."""
    if task.output.kind == "label":
        return str(value)
    if task.output.kind == "json":
        return json.dumps(value, ensure_ascii=False)
    return text.strip()


class Distiller:
    def __init__(self, task: Task, session: TeacherSession, teacher_name: str, retries_invalid: int, source: str):
        self.task = task
        self.session = session
        self.teacher_name = teacher_name
        self.retries_invalid = retries_invalid
        self.source = source

    async def one(self, item: Input) -> Record:
        try:
            messages = self.task.teacher_messages(item.fields)
        except DataError as e:
            raise DataError(f"{self.source}:{item.line}: {e}") from None
        config = self.session.config
        result: CallResult | None = None
        reason = ""
        for attempt in range(self.retries_invalid + 1):
            params = teacher_params(config, self.task, attempt)
            try:
                result = await self.session.chat(messages, params)
            except TeacherError as e:
                if e.retryable:
                    raise  # the teacher is down: stop the run; finished calls are cached
                return self._record(item, messages, params, None, attempt, f"teacher refused the request: {e}")
            value, reason = self.task.parse_output(result.text)
            if reason is None:
                return self._record(item, messages, params, result, attempt, None, value)
            self.session.cache.mark(result.call_id, "rejected", reason)
        return self._record(item, messages, params, result, self.retries_invalid, reason)

    def _record(
        self,
        item: Input,
        messages: list[dict[str, str]],
        params: dict[str, Any],
        result: CallResult | None,
        attempt: int,
        reason: str | None,
        value: Any = None,
    ) -> Record:
        config = self.session.config
        prov: dict[str, Any] = {
            "source": self.source,
            "line": item.line,
            "teacher": self.teacher_name,
            "model": config.model,
            "prompt_hash": prompt_hash(messages),
            "params": params,
            "attempts": attempt + 1,
            "terms": config.terms,
        }
        answer: list[dict[str, str]] = []
        if result is not None:
            prov |= {
                "call_id": result.call_id,
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
                "cost": round(result.cost, 8),
                "latency_ms": round(result.latency_ms, 1),
                "time": datetime.fromtimestamp(result.created_at, UTC).isoformat(timespec="seconds"),
            }
            text = result.text if reason else format_output(self.task, value, result.text)
            answer = [{"role": "assistant", "content": text}]
        if reason:
            prov["rejected_reason"] = reason
        return Record(
            messages=self.task.student_messages(item.fields) + answer,
            label=str(value) if (value is not None and self.task.output.kind == "label") else None,
            metadata={"input": item.fields},
            provenance=prov,
            review="rejected" if reason else "pending",
        )


async def _run_all(distiller: Distiller, inputs: list[Input]) -> list[Record]:
    stats = distiller.session.stats
    start = time.perf_counter()
    with progress(TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[cost]}")) as bar:
        task_id = bar.add_task("distilling", total=len(inputs), rate="", cost="$0.0000")

        async def tracked(item: Input) -> Record:
            record = await distiller.one(item)
            done = bar.tasks[0].completed + 1
            rate = done / max(time.perf_counter() - start, 1e-6)
            bar.update(task_id, advance=1, rate=f"{rate:.1f} rec/s", cost=f"${stats.cost:.4f}")
            return record

        jobs = [asyncio.ensure_future(tracked(item)) for item in inputs]
        try:
            return list(await asyncio.gather(*jobs))
        finally:
            for job in jobs:
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)


def distill(
    ws: Workspace,
    task: Task,
    inputs_path: str | Path,
    teacher: str,
    concurrency: int = 4,
    limit: int | None = None,
    name: str | None = None,
    retries_invalid: int | None = None,
    batch: bool = False,
    batch_id: str | None = None,
    poll_s: float = 30.0,
) -> DistillResult:
    """Run `teacher` over the inputs, save dataset `name` and a `runs` row (kind=distill). `batch`:
    send the first asks through the teacher's Batch API first (teachers/batch.py), resuming
    `batch_id` or the run's saved batch; the online path then asks only what the batch did not answer."""
    config = get_teacher_config(ws.config.teachers, teacher)
    inputs = read_inputs(inputs_path, limit)
    name = check_name(name or f"{task.name}-distilled", "dataset name")  # before any call is paid for
    run = f"distill-{name}"
    retries = config.invalid_retries if retries_invalid is None else retries_invalid
    if config.terms:
        console.print(f"[yellow]warning:[/] teacher {teacher!r} has terms on using its outputs: {config.terms}")
    run_config = {
        "task": task.name,
        "inputs": str(inputs_path),
        "teacher": teacher,
        "model": config.model,
        "concurrency": concurrency,
        "limit": limit,
        "retries_invalid": retries,
        "batch": bool(batch or batch_id),
    }
    ws.store.start_run(run, "distill", run_config, None)
    start = time.perf_counter()
    client = make_teacher(config, teacher)
    session = TeacherSession(ws.store, client, config, teacher, concurrency, ws.config.local_compute_per_hour)
    distiller = Distiller(task, session, teacher, retries, str(inputs_path))

    async def main() -> list[Record]:
        try:
            return await _run_all(distiller, inputs)
        finally:
            await client.aclose()

    report = None
    try:
        if batch or batch_id:
            report = _batch_first(distiller, inputs, ws, run, batch_id, poll_s)
        records = asyncio.run(main())
    except TeacherError as e:
        ws.store.finish_run(run, "failed", session.stats.as_dict())
        raise ProtegeError(f"{e}; {_done_note(session)}") from e
    except ProtegeError:
        ws.store.finish_run(run, "failed", session.stats.as_dict())
        raise
    except BaseException:
        ws.store.finish_run(run, "interrupted", session.stats.as_dict())
        raise
    n_rejected = sum(r.review == "rejected" for r in records)
    source = {
        "kind": "distill",
        "run": run,
        "task": task.name,
        "inputs": str(inputs_path),
        "teacher": teacher,
        "model": config.model,
        "terms": config.terms,
    }
    info = save_dataset(ws.store, name, records, source=source)
    elapsed = time.perf_counter() - start
    batch_info = report.as_dict() if report else None
    result = DistillResult(info, run, len(records), n_rejected, session.stats.as_dict(), elapsed, batch_info)
    ws.store.finish_run(run, "done", result.summary())
    return result


def _batch_first(
    distiller: Distiller, inputs: list[Input], ws: Workspace, run: str, batch_id: str | None, poll_s: float
) -> Any:
    """The Batch API step: the first ask of every input with no cached answer, as one batch."""
    from protege.teachers.batch import Pending, run_batch

    session = distiller.session
    pending: dict[str, Pending] = {}
    for item in inputs:
        try:
            messages = distiller.task.teacher_messages(item.fields)
        except DataError as e:
            raise DataError(f"{distiller.source}:{item.line}: {e}") from None
        params = teacher_params(session.config, distiller.task, 0)
        key = session.key(messages, params)
        if key not in pending and session.cache.get(key) is None:
            pending[key] = Pending(messages, params)
    try:
        return run_batch(session, pending, ws.artifacts, run, batch_id, poll_s)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: the batch goes on at the teacher; run the same command to resume it[/]")
        raise


def _done_note(session: TeacherSession) -> str:
    return (
        f"{session.stats.requests - session.stats.errors} answers this run are cached: run the same command to resume"
    )
