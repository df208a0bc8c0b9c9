"""The state of a `protege rounds` run: its settings, a `runs` row (kind rounds) and a folder with
state.json, written after every step so that an interrupted run resumes where it was."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from protege.data.records import get_dataset
from protege.errors import UserError
from protege.log import console
from protege.names import check_name
from protege.review.queue import ORDERS
from protege.tasks import Task
from protege.workspace import Workspace


@dataclass
class RoundsSettings:
    task: str
    pool: str
    base: str
    rounds: int = 5
    per_round: int = 20
    order: str = "uncertainty"
    eval: str | None = None
    eval_limit: int | None = None
    simulate_from: str | None = None
    """A field of each pool record (input field, metadata key, or `label`) that answers in place of a
    person. Benchmarks and tests only."""
    train: str | None = None
    """A training config YAML; the round sets its base, task, data and output."""
    teacher_fill: str = "auto"
    """auto | yes | no: also train on the teacher's labels of the pool's unreviewed records (auto: when
    a student on the teacher's labels alone beat zero-shot at the start)."""
    scan: int | None = None
    """Score at most this many unreviewed records per round (a seeded sample) to choose from."""
    seed: int = 0
    threads: int | None = None
    """CPU threads for the model (default: torch's, all cores); 1 is far faster on cores other jobs share."""
    name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8300
    token: str | None = None


KEY_SETTINGS = ("task", "pool", "base", "per_round", "order", "eval", "eval_limit", "simulate_from", "train",
                "teacher_fill", "scan", "seed")  # fmt: skip
"""What must match for a run to resume (the number of rounds may grow)."""


class Run:
    """A rounds run: a `runs` row (kind rounds) and its folder with state.json, written after every step."""

    def __init__(self, ws: Workspace, name: str, state: dict[str, Any]):
        self.ws, self.name, self.state = ws, name, state
        self.folder = ws.artifacts / "rounds" / name
        self.pool_info = get_dataset(ws.store, state["pool"])

    @property
    def pool_name(self) -> str:
        return self.pool_info["name"]

    @classmethod
    def open(cls, ws: Workspace, s: RoundsSettings, task: Task) -> Run:
        if s.order not in ORDERS:
            raise UserError(f"--order {s.order!r}: one of {', '.join(ORDERS)}")
        if s.teacher_fill not in ("auto", "yes", "no"):
            raise UserError(f"--teacher-fill {s.teacher_fill!r}: auto, yes or no")
        pool = get_dataset(ws.store, s.pool)
        name = check_name(s.name or f"rounds-{task.name}-{pool['name']}-{s.order}", "rounds run name")
        folder = ws.artifacts / "rounds" / name
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(s).items() if k in KEY_SETTINGS}
        state_file = folder / "state.json"
        if state_file.exists():
            state = json.loads(state_file.read_text())
            if state["settings"] != settings:
                diff = {k: (state["settings"].get(k), v) for k, v in settings.items() if state["settings"].get(k) != v}
                raise UserError(f"rounds run {name} exists with other settings {diff} (was, now); give another --name")
            console.print(f"resuming {name} at round {state['next_round']}")
        else:
            state = {"settings": settings, "pool": f"{pool['name']}@{pool['version']}", "next_round": 1, "rounds": []}
        ws.store.start_run(name, "rounds", {**asdict(s), "simulated": bool(s.simulate_from)}, str(folder))
        run = cls(ws, name, state)
        run.save()
        return run

    def current(self, r: int) -> dict[str, Any]:
        """What round `r` has done so far (kept across an interruption)."""
        cur = self.state.setdefault("current", {"round": r})
        if cur.get("round") != r:
            cur.clear()
            cur["round"] = r
        return cur

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / "state.json.tmp"
        tmp.write_text(json.dumps(self.state, indent=2, default=str))
        tmp.replace(self.folder / "state.json")

    def finish_round(self, best: dict[str, Any], row: dict[str, Any]) -> None:
        self.state["rounds"].append(row)
        self.state["best"] = best
        self.state["next_round"] = row["round"] + 1
        self.state.pop("current", None)
        self.save()
        kappa = "-" if row["kappa_model_human"] is None else f"{row['kappa_model_human']:.2f}"
        score = "-" if row["score"] is None else f"{row['score']:.3f}"
        console.print(f"round {row['round']}: {row['labels_used']} labels used, score {score} ({row['kept']}), "
                      f"model-vs-human kappa {kappa}{' (simulated)' if self.simulated else ''}")  # fmt: skip

    @property
    def simulated(self) -> bool:
        return bool(self.state["settings"]["simulate_from"])

    def finish(self, best: dict[str, Any]) -> dict[str, Any]:
        result = {
            "simulated": self.simulated,
            "rounds": self.state["rounds"],
            "run": self.name,
            "pool": self.state["pool"],
            "order": self.state["settings"]["order"],
            "per_round": self.state["settings"]["per_round"],
            "start": self.state.get("start"),
            "handed_over": {k: best.get(k) for k in ("model", "path", "score", "score_ci", "kept")},
        }
        if self.simulated:
            result["note"] = (f"simulated: the pool's gold field {self.state['settings']['simulate_from']!r} "
                              "answered in place of people")  # fmt: skip
        (self.folder / "result.json").write_text(json.dumps(result, indent=2, default=str))
        self.ws.store.finish_run(self.name, "done", result)
        return result
