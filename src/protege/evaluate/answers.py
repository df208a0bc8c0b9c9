"""An eval run's stored answers: one predictions file per model, and their reuse.

A model asked the same prompts with the same settings answers the same way (greedy decoding), so
an earlier finished eval run's answers are reused when the cache key matches: the model's identity
(endpoint and model for a teacher, weight files for a local folder), the prompts, max_tokens and
the label set.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from protege.data.records import Record
from protege.evaluate.prompts import input_fields, student_messages, teacher_messages
from protege.evaluate.specs import ModelSpec, identity
from protege.log import console
from protege.tasks import Task
from protege.workspace import Workspace

KEPT = ("output", "latency_ms", "prompt_tokens", "completion_tokens", "choice_scores", "error")
"""What a reused answer keeps: what the model said and cost, not what an earlier run derived from it."""


def file_safe(label: str) -> str:
    """A label or run name as a file-name part."""
    return re.sub(r"[^\w.-]+", "_", label)


def predictions_path(out_dir: Path, label: str) -> Path:
    return out_dir / f"predictions-{file_safe(label)}.jsonl"


def write_predictions(path: Path, records: list[Record], refs: list, preds: list[dict[str, Any]]) -> None:
    with path.open("w") as f:
        for i, (r, ref, p) in enumerate(zip(records, refs, preds, strict=True)):
            row = {"idx": i, "input": input_fields(r) or r.prompt[-1]["content"], "reference": ref, **p}
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def load_predictions(run: dict[str, Any], label: str) -> list[dict[str, Any]]:
    path = predictions_path(Path(run["output_dir"]), label)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def cache_key(spec: ModelSpec, task: Task, records: list[Record], max_tokens: int) -> str:
    prompt = teacher_messages if spec.teacher else student_messages
    body = {
        "id": identity(spec),
        "prompts": [prompt(task, r) for r in records],
        "max_tokens": max_tokens,
        "labels": task.labels if task.output.kind == "label" else None,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def find_cached(ws: Workspace, key: str) -> tuple[str, dict[str, Any], list[dict[str, Any]]] | None:
    """(run name, that run's result for the model, its answers) of the latest finished eval run that
    asked the same model the same prompts with the same settings."""
    rows = ws.store.query("SELECT name FROM runs WHERE kind='eval' AND status='done' ORDER BY id DESC")
    for row in rows:
        run = ws.store.get_run(row["name"])
        for label, res in ((run.get("metrics") or {}).get("models") or {}).items():
            if res.get("cache_key") == key:
                preds = load_predictions(run, label)
                if preds:
                    console.print(f"[dim]reusing {label} answers from eval run {run['name']}[/]")
                    return run["name"], res, [{k: p.get(k) for k in KEPT} for p in preds]
    return None
