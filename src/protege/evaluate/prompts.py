"""What each model is asked and what the right answer is.

Teachers get the teacher prompt (instructions and few-shot examples), local models the short
student prompt they were trained with; both are re-rendered from a record's kept input fields when
it has them, so an eval set made for one side serves the other.
"""

from __future__ import annotations

from typing import Any

from protege.data.records import Record
from protege.evaluate.metrics import parse_json
from protege.tasks import Task


def input_fields(record: Record) -> dict[str, Any] | None:
    fields = record.metadata.get("input")
    return fields if isinstance(fields, dict) else None


def student_messages(task: Task, record: Record) -> list[dict[str, str]]:
    fields = input_fields(record)
    return task.student_messages(fields) if fields else record.prompt


def teacher_messages(task: Task, record: Record) -> list[dict[str, str]]:
    """Instructions and few-shot turns before the record's input (re-rendered when the fields are kept)."""
    fields = input_fields(record)
    if fields:
        return task.teacher_messages(fields)
    return _teacher_head(task) + [m for m in record.prompt if m["role"] != "system"]


def _teacher_head(task: Task) -> list[dict[str, str]]:
    msgs = task.teacher_messages(task.examples[0].input) if task.examples else None
    if msgs:
        return msgs[:-1]
    system = task.instructions.strip()
    if task.output.kind == "label":
        system += "\nAnswer with exactly one of: " + ", ".join(task.labels) + "."
    return [{"role": "system", "content": system.strip()}]


def reference_of(task: Task, record: Record) -> Any:
    """The gold answer: the label for label tasks, the final assistant turn otherwise (parsed for JSON)."""
    if task.output.kind == "label":
        return record.label or (record.completion or "").strip() or None
    ref = record.completion if record.completion is not None else record.label
    if task.output.kind == "json":
        ok, value = parse_json(ref)
        return value if ok else None
    return ref
