"""LLM-as-judge pairwise comparison for text tasks.

Each record is judged twice, with the two answers in both orders, because judges prefer one
position; a model wins a record only when the judge prefers it in both orders, loses when the
judge prefers the other in both, and anything else (a tie, or the verdict flipping with the
order) is a tie. Win rate counts a tie as half a win. Every judge call is logged (calls, kind=judge).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from protege.data.records import Record
from protege.errors import UserError
from protege.evaluate.metrics import mean_ci
from protege.log import progress
from protege.store import dumps
from protege.tasks import Task
from protege.workspace import Workspace

VERDICTS = ["A", "B", "tie"]
JUDGE_SYSTEM = (
    "You compare two answers to the same request. Judge which answer better does what the task asks: "
    "correct, complete, concise. Reply with exactly one of: A, B, tie."
)


def judge_messages(task: Task, request: str, first: str, second: str) -> list[dict[str, str]]:
    body = (
        f"Task: {task.instructions.strip() or task.name}\n\nRequest:\n{request}\n\n"
        f"Answer A:\n{first}\n\nAnswer B:\n{second}\n\nWhich answer is better? Reply A, B or tie."
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": body}]


def parse_verdict(text: str) -> str:
    norm = (text or "").strip().strip(".*\"'").lower()
    if norm.startswith("tie") or "tie" in norm.split()[:3]:
        return "tie"
    if norm[:1] in ("a", "b") and (len(norm) == 1 or not norm[1].isalpha()):
        return norm[0].upper()
    for tag in ("answer a", "answer b"):
        if tag in norm:
            return tag[-1].upper()
    return "tie"


def outcome(verdict_ab: str, verdict_ba: str) -> str:
    """'win' / 'loss' / 'tie' for the model shown first in the A-B order (second in the B-A order)."""
    if verdict_ab == "A" and verdict_ba == "B":
        return "win"
    if verdict_ab == "B" and verdict_ba == "A":
        return "loss"
    return "tie"


def win_rate(outcomes: list[str]) -> dict[str, Any]:
    points = [1.0 if o == "win" else 0.5 if o == "tie" else 0.0 for o in outcomes]
    return {
        "win_rate": sum(points) / len(points) if points else 0.0,
        "win_rate_ci": list(mean_ci(points)),
        "wins": outcomes.count("win"),
        "losses": outcomes.count("loss"),
        "ties": outcomes.count("tie"),
    }


class Judge:
    def __init__(self, ws: Workspace, name: str):
        if name not in ws.config.teachers:
            raise UserError(f"--judge {name!r}: not a teacher in protege.yaml ({', '.join(ws.config.teachers)})")
        from openai import OpenAI

        self.ws, self.name, self.cfg = ws, name, ws.config.teachers[name]
        key = os.environ.get(self.cfg.api_key_env or "") or "none"
        self.client = OpenAI(base_url=self.cfg.base_url, api_key=key, timeout=self.cfg.timeout_s)

    def verdict(self, messages: list[dict[str, str]]) -> str:
        kwargs: dict[str, Any] = {"model": self.cfg.model, "messages": messages, "temperature": 0.0, "max_tokens": 8}
        if self.cfg.constrained_choices:
            kwargs["extra_body"] = {"choices": VERDICTS}
        start = time.perf_counter()
        resp = self.client.chat.completions.create(**kwargs)
        text = resp.choices[0].message.content or ""
        usage = resp.usage
        self.ws.store.execute(
            "INSERT INTO calls (kind, model, request, response, status, prompt_tokens, completion_tokens, "
            "latency_ms, tags, created_at) VALUES ('judge',?,?,?,'ok',?,?,?,?,?)",
            (
                self.cfg.model,
                dumps({k: v for k, v in kwargs.items() if k != "model"}),
                dumps({"content": text}),
                getattr(usage, "prompt_tokens", None),
                getattr(usage, "completion_tokens", None),
                (time.perf_counter() - start) * 1000,
                json.dumps(["eval", self.name]),
                time.time(),
            ),
        )
        return parse_verdict(text)


def pairwise_win_rates(
    ws: Workspace,
    task: Task,
    records: list[Record],
    judge: str,
    reference: str,
    out_dir: Path,
    results: dict[str, dict[str, Any]],
) -> None:
    """Adds `judge` {win_rate vs the reference model, ...} to each other model's results."""
    from protege.evaluate.runner import file_safe, student_messages

    j = Judge(ws, judge)
    answers = {label: _read_outputs(out_dir / f"predictions-{file_safe(label)}.jsonl") for label in results}
    for label in results:
        if label == reference:
            continue
        outcomes = []
        with progress() as bar:
            job = bar.add_task(f"judge {label} vs {reference}", total=len(records))
            for i, rec in enumerate(records):
                request = student_messages(task, rec)[-1]["content"]
                mine, theirs = answers[label][i] or "", answers[reference][i] or ""
                ab = j.verdict(judge_messages(task, request, mine, theirs))
                ba = j.verdict(judge_messages(task, request, theirs, mine))
                outcomes.append(outcome(ab, ba))
                bar.advance(job)
        results[label]["judge"] = {"judge": judge, "versus": reference, **win_rate(outcomes)}


def _read_outputs(path: Path) -> list[str | None]:
    return [json.loads(line).get("output") for line in path.read_text().splitlines() if line.strip()]
