"""LLM-as-judge pairwise comparison for text tasks.

Each record is judged twice, with the two answers in both orders, because judges prefer one
position; a model wins a record only when the judge prefers it in both orders, loses when the
judge prefers the other in both, and anything else (a tie, or the verdict flipping with the
order) is a tie. Win rate counts a tie as half a win. A verdict that names none of A, B, tie is
*invalid*, never a tie: a record with an invalid verdict in either order is left out of the win
rate and counted in `invalid` / `invalid_rate` (a judge that answers garbage would otherwise report
a ~0.5 win rate; `protege eval` fails above `--max-judge-invalid`). Every judge call is logged
(calls, kind=judge).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from protege.data.records import Record
from protege.errors import UserError
from protege.evaluate.answers import predictions_path
from protege.evaluate.prompts import student_messages
from protege.log import progress
from protege.metrics import mean_ci
from protege.store import dumps
from protege.tasks import Task
from protege.workspace import Workspace

VERDICTS = ["A", "B", "tie"]
INVALID = "invalid"
"""A verdict (or an outcome) that names none of VERDICTS."""
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
    """The verdict "A", "B" or "tie"; INVALID when the reply names none of them (or both answers)."""
    norm = (text or "").strip().strip(".*\"'").lower()
    if norm.startswith("tie") or "tie" in norm.split()[:3]:
        return "tie"
    if norm[:1] in ("a", "b") and (len(norm) == 1 or not norm[1].isalpha()):
        return norm[0].upper()
    named = [tag[-1].upper() for tag in ("answer a", "answer b") if tag in norm]
    return named[0] if len(named) == 1 else INVALID


def outcome(verdict_ab: str, verdict_ba: str) -> str:
    """'win' / 'loss' / 'tie' for the model shown first in the A-B order (second in the B-A order);
    INVALID when either verdict is."""
    if INVALID in (verdict_ab, verdict_ba):
        return INVALID
    if verdict_ab == "A" and verdict_ba == "B":
        return "win"
    if verdict_ab == "B" and verdict_ba == "A":
        return "loss"
    return "tie"


def win_rate(outcomes: list[str]) -> dict[str, Any]:
    """Win rate over the records with readable verdicts (None when there are none), and how many
    records were judged and how many of them had an unreadable verdict."""
    points = [1.0 if o == "win" else 0.5 if o == "tie" else 0.0 for o in outcomes if o != INVALID]
    invalid = outcomes.count(INVALID)
    return {
        "win_rate": sum(points) / len(points) if points else None,
        "win_rate_ci": list(mean_ci(points)) if points else None,
        "wins": outcomes.count("win"),
        "losses": outcomes.count("loss"),
        "ties": outcomes.count("tie"),
        "invalid": invalid,
        "judged": len(outcomes),
        "invalid_rate": invalid / len(outcomes) if outcomes else 0.0,
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
        verdict = parse_verdict(text)
        usage = resp.usage
        self.ws.store.execute(
            "INSERT INTO calls (kind, model, request, response, status, prompt_tokens, completion_tokens, "
            "latency_ms, tags, created_at) VALUES ('judge',?,?,?,'ok',?,?,?,?,?)",
            (
                self.cfg.model,
                dumps({k: v for k, v in kwargs.items() if k != "model"}),
                dumps({"content": text, "verdict": verdict}),
                getattr(usage, "prompt_tokens", None),
                getattr(usage, "completion_tokens", None),
                (time.perf_counter() - start) * 1000,
                json.dumps(["eval", self.name]),
                time.time(),
            ),
        )
        return verdict


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
    j = Judge(ws, judge)
    answers = {label: _read_outputs(predictions_path(out_dir, label)) for label in results}
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
