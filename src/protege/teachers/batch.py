"""Distillation through a provider's Batch API (`/v1/files` + `/v1/batches`, OpenAI's format; half
the price there), as a step in front of the online path rather than a second implementation of it.

1. Every input whose first request (the one the online path would send) has no cached answer goes
   into a JSONL of batch requests, `custom_id` = the call's cache key.
2. The file is uploaded, the batch created, and its id saved in the workspace at once
   (`artifacts/batches/RUN.json`): an interrupted run is resumed by running the same command again
   (or with `--batch-id ID`), which polls that batch instead of creating another.
3. Polling shows the batch's progress; when it ends (completed, expired, cancelled or failed) its
   answers are written into the calls cache under their keys, at the batch price.
4. Then the online path runs over all inputs as always: the batch's answers are cache hits, and what
   the batch did not answer (failed lines, the unanswered rest of an expired batch, answers that fail
   the task's check and get a warmer re-ask) is asked online. Same cache, same records, same dataset.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import openai

from protege.errors import ProtegeError, UserError
from protege.log import console, progress
from protege.teachers.cache import TeacherSession
from protege.teachers.client import Completion

ENDPOINT = "/v1/chat/completions"
TERMINAL = ("completed", "expired", "cancelled", "failed")


@dataclass
class BatchReport:
    batch_id: str | None = None
    status: str = "nothing to send"
    """The batch's final status, or `nothing to send` when every request was cached already."""
    sent: int = 0
    answered: int = 0
    failed: int = 0
    """Lines the batch did not answer; the online path asks these again."""
    resumed: bool = False
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Pending:
    messages: list[dict[str, str]]
    params: dict[str, Any]


def batch_body(model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> dict[str, Any]:
    """The chat-completions body the online client sends for these parameters (extra_body's fields
    go at the top level, as the openai client puts them)."""
    params = dict(params)
    extra = params.pop("extra_body", None) or {}
    return {"model": model, "messages": messages, **params, **extra}


def _state_path(artifacts: Path, run: str) -> Path:
    return artifacts / "batches" / f"{run}.json"


def run_batch(
    session: TeacherSession,
    pending: dict[str, Pending],
    artifacts: Path,
    run: str,
    batch_id: str | None = None,
    poll_s: float = 30.0,
) -> BatchReport:
    """Send `pending` (cache key -> request) as one batch (or resume `batch_id` / the run's saved
    batch), wait for it, and record its answers in the cache. Returns what happened."""
    config = session.config
    if not config.base_url:
        raise UserError(f"--batch needs a teacher with a base_url (a Batch API); {session.name!r} runs in-process")
    client = openai.OpenAI(
        base_url=config.base_url,
        api_key=_key(config) or "not-needed",
        timeout=config.timeout_s,
        max_retries=config.max_retries,
    )
    state = _state_path(artifacts, run)
    report = BatchReport()
    saved = json.loads(state.read_text()) if state.exists() else None
    if batch_id is None and saved:
        batch_id = saved["batch_id"]
    if batch_id is None:
        if not pending:
            return report
        batch_id = _create(client, session, pending, run)
        state.parent.mkdir(parents=True, exist_ok=True)
        state.write_text(json.dumps({"batch_id": batch_id, "requests": len(pending), "created_at": time.time()}))
        console.print(f"batch {batch_id} created ({len(pending)} requests); an interrupted run resumes it when rerun")
    else:
        report.resumed = True
        console.print(f"resuming batch {batch_id}")
    report.batch_id = batch_id
    batch = _wait(client, batch_id, poll_s)
    report.status = batch.status
    report.sent = (batch.request_counts.total if batch.request_counts else 0) or len(pending)
    report.errors = [e.message or e.code or "" for e in (batch.errors.data or [])] if batch.errors else []
    report.answered = _record(client, session, pending, batch)
    report.failed = report.sent - report.answered
    state.unlink(missing_ok=True)  # consumed: a rerun starts afresh (and finds these answers cached)
    return report


def _key(config: Any) -> str | None:
    import os

    return os.environ.get(config.api_key_env) if config.api_key_env else None


def _create(client: openai.OpenAI, session: TeacherSession, pending: dict[str, Pending], run: str) -> str:
    model = session.config.model
    lines = [
        {"custom_id": key, "method": "POST", "url": ENDPOINT, "body": batch_body(model, p.messages, p.params)}
        for key, p in pending.items()
    ]
    data = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()
    try:
        upload = client.files.create(file=(f"{run}.jsonl", data), purpose="batch")
        batch = client.batches.create(
            input_file_id=upload.id, endpoint=ENDPOINT, completion_window="24h", metadata={"protege_run": run}
        )
    except openai.APIError as e:
        raise ProtegeError(f"teacher {session.name!r}: the Batch API refused the batch: {e}") from None
    return batch.id


def _wait(client: openai.OpenAI, batch_id: str, poll_s: float) -> Any:
    """Poll until the batch ends, with a progress bar of its request counts."""
    try:
        batch = client.batches.retrieve(batch_id)
    except openai.NotFoundError:
        raise UserError(f"batch {batch_id}: not found at the teacher") from None
    with progress() as bar:
        task = bar.add_task(f"batch {batch_id}", total=None)
        while batch.status not in TERMINAL:
            counts = batch.request_counts
            if counts and counts.total:
                bar.update(task, total=counts.total, completed=counts.completed + counts.failed)
            time.sleep(poll_s)
            batch = client.batches.retrieve(batch_id)
    if batch.status != "completed":
        console.print(f"[yellow]batch {batch_id} {batch.status}[/]: its unanswered requests are asked online")
    return batch


def _record(client: openai.OpenAI, session: TeacherSession, pending: dict[str, Pending], batch: Any) -> int:
    """Write the batch's successful answers into the cache; returns how many."""
    if not batch.output_file_id:
        return 0
    text = client.files.content(batch.output_file_id).text
    answered = 0
    tags = [f"teacher:{session.name}", f"batch:{batch.id}"]
    for line in text.splitlines():
        row = json.loads(line) if line.strip() else {}
        request = pending.get(row.get("custom_id"))
        comp = _completion(row)
        if request is None or comp is None:
            continue  # not ours any more (inputs changed), or a failed line: the online path asks it
        session.record(
            row["custom_id"], request.messages, request.params, comp, tags, session.config.batch_price_factor
        )
        answered += 1
    return answered


def _completion(row: dict[str, Any]) -> Completion | None:
    response = row.get("response") or {}
    body = response.get("body") or {}
    if response.get("status_code") != 200 or not body.get("choices"):
        return None
    try:
        text = body["choices"][0]["message"]["content"] or ""
    except (KeyError, IndexError, TypeError):
        return None
    usage = body.get("usage") or {}
    return Completion(
        text=text,
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        raw=body,
    )
