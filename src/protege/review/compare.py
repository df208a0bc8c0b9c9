"""Compare mode: two models' answers to the same input side by side; a person says which is better.

Each side is a predictions file or an eval run (`RUN` when it evaluated one model, else `RUN/LABEL`;
its `predictions-LABEL.jsonl` is read from the run's folder). Which answer is shown on the left is
decided per record by a hash (random to the reviewer, the same after a reload). Verdicts are stored
in the `preferences` table in terms of the models, never of the screen side: `a`, `b`, `tie`,
`both_bad`; the input with a preferred and a dispreferred answer is what preference tuning (DPO)
trains on. Like review actions, verdicts are append-only and an undo is a verdict of its own.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protege.data.records import Record
from protege.errors import DataError, UserError
from protege.review import predictions as P
from protege.review.actions import record_key
from protege.store import Store

VERDICTS = ("a", "b", "tie", "both_bad")


@dataclass
class Side:
    name: str
    answers: dict[int, P.Prediction]


def resolve_side(store: Store, spec: str) -> Path:
    """A predictions file, or an eval run's predictions file for `RUN` / `RUN/LABEL`."""
    if Path(spec).is_file():
        return Path(spec)
    run_name, _, label = spec.partition("/")
    run = store.get_run(run_name)
    if run is None or run["kind"] != "eval" or not run.get("output_dir"):
        raise UserError(f"--compare {spec!r}: neither a predictions file nor an eval run")
    found = sorted(Path(run["output_dir"]).glob("predictions-*.jsonl"))
    files = {p.stem.removeprefix("predictions-"): p for p in found}
    if not files:
        raise UserError(f"--compare {spec!r}: eval run {run_name} has no predictions files")
    if label:
        if label not in files:
            known = ", ".join(files)
            raise UserError(f"--compare {spec!r}: eval run {run_name} has no model {label!r}; it has {known}")
        return files[label]
    if len(files) > 1:
        raise UserError(f"--compare {spec!r}: eval run {run_name} has {len(files)} models; name one: "
                        f"{', '.join(f'{run_name}/{k}' for k in files)}")  # fmt: skip
    return next(iter(files.values()))


def load_sides(store: Store, spec: str, records: list[Record]) -> tuple[Side, Side]:
    parts = [s.strip() for s in spec.split(",") if s.strip()]
    if len(parts) != 2:
        raise UserError(f"--compare {spec!r}: expected two runs or predictions files, A,B")
    sides = tuple(Side(p, P.load(resolve_side(store, p), records)) for p in parts)
    return sides[0], sides[1]


def comparable(a: Side, b: Side) -> tuple[list[int], int]:
    """(record indices both sides answered differently, how many they answered identically)."""
    both = sorted(set(a.answers) & set(b.answers))
    differ = [i for i in both if a.answers[i].answer != b.answers[i].answer]
    if not both:
        raise DataError(f"{a.name} and {b.name} answer none of the same records of this dataset")
    return differ, len(both) - len(differ)


def left_side(key: str, reviewer: str) -> str:
    """Which model ('a' or 'b') the page shows on the left for this record and reviewer."""
    return "a" if int(hashlib.sha256(f"{reviewer}:{key}".encode()).hexdigest()[:2], 16) % 2 == 0 else "b"


def record_verdict(
    store: Store,
    info: dict[str, Any],
    idx: int,
    record: Record,
    reviewer: str,
    sides: tuple[Side, Side],
    shown: str,
    verdict: str,
    seconds: float | None = None,
) -> int:
    """Store one verdict (`verdict` in model terms: a | b | tie | both_bad)."""
    if verdict not in VERDICTS:
        raise UserError(f"unknown verdict {verdict!r}; one of {', '.join(VERDICTS)}")
    a, b = sides
    with store.transaction() as conn:
        cur = conn.execute(
            "INSERT INTO preferences (dataset, dataset_id, idx, record_key, reviewer, model_a, model_b, answer_a, "
            "answer_b, shown_left, verdict, seconds, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (info["name"], info["id"], idx, record_key(record), reviewer, a.name, b.name, a.answers[idx].answer,
             b.answers[idx].answer, shown, verdict, seconds, time.time()),
        )  # fmt: skip
        return int(cur.lastrowid)


def undo_verdict(store: Store, dataset: str, reviewer: str, depth: int = 10) -> int | None:
    """Undo the reviewer's latest standing verdict (among their last `depth`); its record index, or None."""
    with store.transaction() as conn:
        recent = conn.execute(
            "SELECT * FROM preferences WHERE dataset=? AND reviewer=? AND verdict != 'undo' ORDER BY id DESC LIMIT ?",
            (dataset, reviewer, depth),
        ).fetchall()
        undone = {r[0] for r in conn.execute("SELECT undoes FROM preferences WHERE dataset=? AND undoes IS NOT NULL",
                                              (dataset,)).fetchall()}  # fmt: skip
        target = next((r for r in recent if r["id"] not in undone), None)
        if target is None:
            return None
        conn.execute(
            "INSERT INTO preferences (dataset, dataset_id, idx, record_key, reviewer, model_a, model_b, answer_a, "
            "answer_b, shown_left, verdict, undoes, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (dataset, target["dataset_id"], target["idx"], target["record_key"], reviewer, target["model_a"],
             target["model_b"], target["answer_a"], target["answer_b"], target["shown_left"], "undo", target["id"],
             time.time()),
        )  # fmt: skip
        return int(target["idx"])


def standing_verdicts(store: Store, dataset: str) -> list[dict[str, Any]]:
    """Every reviewer's last verdict not undone, per record and pair of models."""
    rows = [dict(r) for r in store.query("SELECT * FROM preferences WHERE dataset=? ORDER BY id", (dataset,))]
    undone = {r["undoes"] for r in rows if r["verdict"] == "undo"}
    standing: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        if r["verdict"] != "undo" and r["id"] not in undone:
            standing[(r["record_key"], r["reviewer"], r["model_a"], r["model_b"])] = r
    return list(standing.values())


def preference_summary(store: Store, dataset: str) -> list[dict[str, Any]]:
    """Win rates (with 95% intervals) per pair of models compared on `dataset`."""
    from protege.review.stats import win_rates

    by_pair: dict[tuple[str, str], list[str]] = {}
    for v in standing_verdicts(store, dataset):
        by_pair.setdefault((v["model_a"], v["model_b"]), []).append(v["verdict"])
    return [win_rates(verdicts, a, b) for (a, b), verdicts in sorted(by_pair.items())]
