"""One review session: a dataset version, what a valid answer is, the model's predictions, the order,
and what the page shows for a record. The web app (review.app) is a thin layer over this.

The records, keys, predictions and the order are computed once when the session opens (ordering a
few thousand records with MinHash takes a second; a keypress must take milliseconds); every action
goes straight to the database, and statuses are read back from it, so two browsers, a restart or a
second server on the same workspace all see the same state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protege.data.records import Record, get_dataset, load_records
from protege.errors import DataError
from protege.review import actions as A
from protege.review import predictions as P
from protege.review.checks import AnswerCheck, answer_check
from protege.review.compare import Side, comparable, left_side, load_sides
from protege.review.queue import ORDERS, needs_review, order
from protege.review.stats import counts
from protege.store import Store
from protege.tasks import Task

FILTERS = ("label", "status", "source")


@dataclass
class Settings:
    dataset: str
    task: Task | None = None
    predictions: str | Path | None = None
    order: str = "uncertainty"
    seed: int = 0
    overlap: float = 0.0
    reviewer: str = "reviewer"
    only: list[int] | None = None
    """Review exactly these records, in this order (a round of `protege rounds`)."""
    compare: str | None = None
    """`A,B`: compare mode over two runs' or files' answers."""
    title: str | None = None


def source_of(record: Record) -> str:
    """Where a record's answer came from, for the source filter: the teacher, else the source file."""
    prov = record.provenance
    return str(prov.get("teacher") or prov.get("source") or prov.get("format") or "-")


@dataclass
class Session:
    store: Store
    settings: Settings
    info: dict[str, Any] = field(init=False)
    records: list[Record] = field(init=False)
    keys: list[str] = field(init=False)
    check: AnswerCheck = field(init=False)
    preds: dict[int, P.Prediction] = field(init=False)
    sides: tuple[Side, Side] | None = field(init=False, default=None)
    notes: list[str] = field(init=False, default_factory=list)
    _queues: dict[tuple, list[int]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        s = self.settings
        if s.order not in ORDERS:
            raise DataError(f"--order {s.order!r}: one of {', '.join(ORDERS)}")
        self.info = get_dataset(self.store, s.dataset)
        self.records = load_records(self.store, f"{self.info['name']}@{self.info['version']}")
        if not self.records:
            raise DataError(f"dataset {s.dataset}: no records to review")
        self.keys = [A.record_key(r) for r in self.records]
        self.check = answer_check(s.task, self.records, self.info["name"])
        self.preds = P.load(s.predictions, self.records)
        if s.compare:
            self.sides = load_sides(self.store, s.compare, self.records)
        if s.order in ("uncertainty", "disagreement") and not self.preds and s.only is None and not s.compare:
            self.notes.append(f"no model predictions given: {s.order} order falls back to the dataset's order "
                              "(write some with `protege review predict` or pass --predictions)")  # fmt: skip

    @property
    def name(self) -> str:
        return self.info["name"]

    # ---- states and the queue ---------------------------------------------------------------------
    def states(self) -> list[A.State]:
        latest = A.latest_states(self.store, self.name)
        return [latest.get(k) or A.initial_state(r) for k, r in zip(self.keys, self.records, strict=True)]

    def progress(self) -> dict[str, int]:
        states = self.states()
        if self.settings.only is not None:
            states = [states[i] for i in self.settings.only]
        return counts(states)

    def queue(self, filters: dict[str, str] | None = None) -> list[int]:
        """Record indices in review order, after the filters (label, status, source)."""
        filters = {k: v for k, v in (filters or {}).items() if k in FILTERS and v}
        key = tuple(sorted(filters.items()))
        if key not in self._queues:
            self._queues[key] = self._ordered(self._filtered(filters))
        return self._queues[key]

    def _filtered(self, filters: dict[str, str]) -> list[int]:
        base = self.settings.only if self.settings.only is not None else range(len(self.records))
        if self.sides is not None:
            base = comparable(*self.sides)[0]
        states = self.states() if "status" in filters else None
        out = []
        for i in base:
            r = self.records[i]
            if "label" in filters and A.stored_answer(r) != filters["label"]:
                continue
            if "source" in filters and source_of(r) != filters["source"]:
                continue
            if states is not None and states[i].status != filters["status"]:
                continue
            out.append(i)
        return out

    def _ordered(self, indices: list[int]) -> list[int]:
        s = self.settings
        if s.only is not None or self.sides is not None:
            return indices
        how = s.order if (self.preds or s.order not in ("uncertainty", "disagreement")) else "oldest"
        answers = {i: A.stored_answer(self.records[i]) for i in indices}
        return order(self.records, indices, how, self.preds, answers, s.seed)

    def pending_for(self, reviewer: str) -> set[int]:
        """Records this reviewer still has to see (see queue.needs_review)."""
        if self.sides is not None:
            return self._compare_pending(reviewer)
        states = self.states()
        verdicts = A.reviewer_verdicts(A.all_actions(self.store, self.name)) if self.settings.overlap > 0 else {}
        return {
            i
            for i, (k, st) in enumerate(zip(self.keys, states, strict=True))
            if needs_review(
                k,
                st,
                verdicts.get(k) if verdicts else ({st.reviewer: st} if st.reviewed else {}),
                reviewer,
                self.settings.overlap,
            )  # fmt: skip
        }

    def next_position(self, reviewer: str, filters: dict[str, str], after: int = -1) -> int | None:
        """Queue position of the next record the reviewer still has to see after `after` (wrapping
        round to the start), or None when there is none left."""
        q = self.queue(filters)
        todo = self.pending_for(reviewer)
        for pos in [*range(after + 1, len(q)), *range(0, after + 1)]:
            if q[pos] in todo:
                return pos
        return None

    # ---- actions ------------------------------------------------------------------------------------
    def act(self, idx: int, reviewer: str, action: str, answer: str | None, note: str | None,
            seconds: float | None) -> A.State:  # fmt: skip
        """Check and store one action (nothing is stored when the check fails: DataError says why)."""
        record = self.records[idx]
        if action == "edit":
            value, reason = self.check.check(answer)
            if reason:
                raise DataError(f"record {idx}: edit refused: {reason}")
            answer = value
            if value == self.proposed(idx):  # "editing" to the answer already shown is approving it
                action = "accept"
        elif action == "accept":
            answer = self.proposed(idx)
            if answer is None:
                raise DataError(f"record {idx}: there is no answer to accept yet; edit it instead")
        else:
            answer = None
        return A.act(self.store, self.info, idx, record, reviewer, action, answer, self.check.kind, note, seconds)

    def proposed(self, idx: int) -> str | None:
        """What `accept` approves: the record's current answer, else the model's answer."""
        state = A.current_state(self.store, self.name, self.records[idx], self.keys[idx])
        if state.answer is not None:
            return state.answer
        pred = self.preds.get(idx)
        return pred.answer if pred else None

    # ---- compare mode -------------------------------------------------------------------------------
    def _compare_pending(self, reviewer: str) -> set[int]:
        from protege.review.compare import standing_verdicts

        a, b = self.sides
        done = {v["record_key"] for v in standing_verdicts(self.store, self.name)
                if v["reviewer"] == reviewer and (v["model_a"], v["model_b"]) == (a.name, b.name)}  # fmt: skip
        return {i for i in comparable(a, b)[0] if self.keys[i] not in done}

    # ---- what the page shows ------------------------------------------------------------------------
    def view(self, idx: int, reviewer: str) -> dict[str, Any]:
        r = self.records[idx]
        key = self.keys[idx]
        state = A.current_state(self.store, self.name, r, key)
        pred = self.preds.get(idx)
        fields = r.metadata.get("input") if isinstance(r.metadata.get("input"), dict) else None
        out = {
            "idx": idx,
            "key": key,
            "turns": r.prompt,
            "fields": fields,
            "teacher_answer": A.stored_answer(r),
            "answer": state.answer,
            "status": state.status,
            "reviewed": state.reviewed,
            "note": state.note,
            "prediction": _prediction_view(pred),
            "provenance": _provenance(r),
            "history": [_history_row(h) for h in A.history(self.store, self.name, key)],
            "kind": self.check.kind,
            "labels": self.check.labels,
            "shown_at": time.time(),
        }
        if self.sides is not None:
            a, b = self.sides
            left = left_side(key, reviewer)
            pair = {"a": (a.name, a.answers[idx].answer), "b": (b.name, b.answers[idx].answer)}
            right = "b" if left == "a" else "a"
            out["pair"] = {"left": pair[left][1], "right": pair[right][1], "shown_left": left}
        return out


def _prediction_view(pred: P.Prediction | None) -> dict[str, Any] | None:
    if pred is None:
        return None
    scores = None
    if pred.scores:
        scores = sorted(pred.scores.items(), key=lambda kv: kv[1], reverse=True)
    return {"answer": pred.answer, "model": pred.model, "confidence": pred.confidence, "margin": pred.margin,
            "mean_logprob": pred.mean_logprob, "scores": scores}  # fmt: skip


PROVENANCE_KEYS = (
    "teacher", "model", "call_id", "source", "line", "format", "prompt_hash", "rejected_reason", "review",
)  # fmt: skip


def _provenance(record: Record) -> list[tuple[str, str]]:
    return [(k, str(record.provenance[k])) for k in PROVENANCE_KEYS if record.provenance.get(k) is not None]


def _history_row(h: dict[str, Any]) -> dict[str, Any]:
    old, new = h["old_value"] or {}, h["new_value"] or {}
    return {
        "when": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["created_at"])),
        "reviewer": h["reviewer"],
        "action": h["action"],
        "from": f"{old.get('status')}: {old.get('answer')}",
        "to": f"{new.get('status')}: {new.get('answer')}",
        "note": h["note"],
    }
