"""What a reviewer may enter: the task's own check when a task is given, else what the records show.

A label edit must be one of the labels exactly (the page offers them as keys 1-9 and buttons); a
JSON edit must parse and match the task's schema; a text edit must not be empty. A failed check
stores nothing and says why on the page.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from protege.data.records import Record
from protege.errors import DataError
from protege.review.actions import stored_answer
from protege.tasks import Task


@dataclass
class AnswerCheck:
    kind: str
    """label | text | json"""
    labels: list[str] = field(default_factory=list)
    task: Task | None = None

    def check(self, answer: str | None) -> tuple[str | None, str | None]:
        """(the answer as stored, None) when valid, else (None, why not)."""
        text = (answer or "").strip()
        if self.kind == "label":
            if text in self.labels:
                return text, None
            return None, f"{text[:60]!r} is not one of the labels {', '.join(self.labels)}"
        if self.task is not None:
            value, reason = self.task.parse_output(text)
            if reason:
                return None, reason
            return (json.dumps(value, ensure_ascii=False) if self.kind == "json" else value), None
        if self.kind == "json":
            try:
                return json.dumps(json.loads(text), ensure_ascii=False), None
            except json.JSONDecodeError as e:
                return None, f"not valid JSON: {e.msg}"
        return (text, None) if text else (None, "empty answer")


def answer_check(task: Task | None, records: list[Record], dataset: str) -> AnswerCheck:
    """The check for reviewing `records`: the task's kind and labels, after making sure the records'
    own labels are among them (a task made for another dataset is refused, naming a record); without
    a task, a label set taken from the records (text when they carry none)."""
    seen = sorted({r.label for r in records if r.label is not None})
    if task is None:
        return AnswerCheck("label", seen) if seen else AnswerCheck("text")
    if task.output.kind == "label":
        for i, r in enumerate(records):
            answer = stored_answer(r)
            if r.review != "rejected" and answer is not None and answer not in task.labels:
                raise DataError(
                    f"dataset {dataset}: record {i} has label {answer!r}, not one of the labels of task "
                    f"{task.name!r} {task.labels}: is this the task the dataset was made for?"
                )
        return AnswerCheck("label", task.labels, task)
    if seen and task.output.kind != "label":
        raise DataError(
            f"dataset {dataset}: its records carry labels ({', '.join(seen[:5])}) but task {task.name!r} "
            f"expects {task.output.kind} answers"
        )
    return AnswerCheck(task.output.kind, [], task)
