"""Review actions: every accept, edit, reject and undo, stored the moment it is made.

The `review_actions` table is append-only: an undo is an action of its own that restores the value
the undone action replaced. So the whole history of a record stays readable, a server or browser
killed mid-review loses nothing (each action is committed before the page moves on), and a record's
current state is simply its latest action, or, before anyone acted on it, the status it was stored
with (teachers store invalid answers as `rejected`, captured feedback as `accepted` / `edited`).

Records are found by dataset *name* and `record_key` (a hash of the input), not by row id: a later
version of the dataset (more records, a re-run teacher) keeps the reviews of the inputs it shares.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from protege.data.records import Record
from protege.errors import DataError, UserError
from protege.store import Store, dumps, loads

ACTIONS = {"accept": "accepted", "edit": "edited", "reject": "rejected"}
"""Action -> the status it gives the record."""
UNDO_DEPTH = 10
"""`u` undoes one of the reviewer's last this-many actions (most recent first)."""


def record_key(record: Record) -> str:
    """What identifies a record to review: its input (the prompt), hashed."""
    body = json.dumps(record.prompt, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(body.encode()).hexdigest()[:24]


def stored_answer(record: Record) -> str | None:
    """The record's own answer (the teacher's pre-annotation): its label, else its final assistant turn."""
    return record.label if record.label is not None else record.completion


@dataclass
class State:
    """Where a record stands: status, the answer it carries, and whether a person put it there."""

    status: str
    answer: str | None
    reviewed: bool = False
    action_id: int | None = None
    reviewer: str | None = None
    at: float | None = None
    note: str | None = None
    kind: str | None = None
    """The task kind the answer was entered for (label answers also become the record's label)."""

    def value(self) -> dict[str, Any]:
        """What an action stores as its old / new value."""
        return {"status": self.status, "answer": self.answer, "reviewed": self.reviewed}


def initial_state(record: Record) -> State:
    return State(record.review, stored_answer(record), reviewed=False, at=record.reviewed_at, note=record.review_note)


def _state(row: Any) -> State:
    value = loads(row["new_value"]) or {}
    return State(
        status=row["status"],
        answer=value.get("answer"),
        reviewed=bool(value.get("reviewed")),
        action_id=row["id"],
        reviewer=row["reviewer"],
        at=row["created_at"],
        note=row["note"],
        kind=value.get("kind"),
    )


def latest_states(store: Store, dataset: str) -> dict[str, State]:
    """record_key -> state from its latest action, for every record of `dataset` anyone acted on."""
    rows = store.query(
        "SELECT a.* FROM review_actions a JOIN (SELECT MAX(id) AS id FROM review_actions WHERE dataset=? "
        "GROUP BY record_key) m ON a.id = m.id",
        (dataset,),
    )
    return {row["record_key"]: _state(row) for row in rows}


def current_state(store: Store, dataset: str, record: Record, key: str | None = None) -> State:
    rows = store.query(
        "SELECT * FROM review_actions WHERE dataset=? AND record_key=? ORDER BY id DESC LIMIT 1",
        (dataset, key or record_key(record)),
    )
    return _state(rows[0]) if rows else initial_state(record)


def act(
    store: Store,
    info: dict[str, Any],
    idx: int,
    record: Record,
    reviewer: str,
    action: str,
    answer: str | None = None,
    kind: str | None = None,
    note: str | None = None,
    seconds: float | None = None,
) -> State:
    """Store one action on record `idx` of dataset version `info` and return the record's new state.

    accept: the answer shown is right (`answer`: the record's own, or the model's where it has none);
    edit: `answer` replaces it (the caller has checked it against the task); reject: unusable."""
    if action not in ACTIONS:
        raise UserError(f"unknown review action {action!r}; one of {', '.join(ACTIONS)}")
    if not reviewer or not reviewer.strip():
        raise UserError("a review action needs a reviewer name")
    key = record_key(record)
    with store.transaction() as conn:
        old = _latest_in(conn, info["name"], key) or initial_state(record)
        if action == "accept" and answer is None:
            answer = old.answer
        if action == "accept" and answer is None:
            raise DataError(f"record {idx}: nothing to accept (no answer yet); edit it instead")
        if action == "reject":
            answer = old.answer
        new = State(ACTIONS[action], answer, reviewed=True, reviewer=reviewer, note=note, kind=kind)
        cur = conn.execute(
            "INSERT INTO review_actions (dataset, dataset_id, idx, record_key, reviewer, action, status, old_value, "
            "new_value, note, seconds, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (info["name"], info["id"], idx, key, reviewer, action, new.status, dumps(old.value()),
             dumps({**new.value(), "kind": kind}), note, seconds, time.time()),
        )  # fmt: skip
        new.action_id = cur.lastrowid
    return new


def _latest_in(conn: Any, dataset: str, key: str) -> State | None:
    row = conn.execute(
        "SELECT * FROM review_actions WHERE dataset=? AND record_key=? ORDER BY id DESC LIMIT 1", (dataset, key)
    ).fetchone()
    return _state(row) if row else None


def undo_last(store: Store, dataset: str, reviewer: str) -> dict[str, Any] | None:
    """Undo the reviewer's most recent action not yet undone, among their last UNDO_DEPTH actions:
    a new action restores what it replaced. Returns {idx, key, state} of that record, or None when
    there is nothing left to undo. Refused when someone acted on the record since (their action
    would be lost)."""
    with store.transaction() as conn:
        recent = conn.execute(
            "SELECT * FROM review_actions WHERE dataset=? AND reviewer=? AND action != 'undo' ORDER BY id DESC LIMIT ?",
            (dataset, reviewer, UNDO_DEPTH),
        ).fetchall()
        undone = {
            r[0]
            for r in conn.execute(
                "SELECT undoes FROM review_actions WHERE dataset=? AND undoes IS NOT NULL", (dataset,)
            ).fetchall()
        }
        target = next((r for r in recent if r["id"] not in undone), None)
        if target is None:
            return None
        standing = _standing_in(conn, dataset, target["record_key"])
        if standing is not None and standing["id"] != target["id"]:
            raise DataError(
                f"record {target['idx']} was changed by {standing['reviewer']} after your action; not undone"
            )
        old = loads(target["old_value"]) or {}
        cur = conn.execute(
            "INSERT INTO review_actions (dataset, dataset_id, idx, record_key, reviewer, action, status, old_value, "
            "new_value, note, seconds, undoes, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (dataset, target["dataset_id"], target["idx"], target["record_key"], reviewer, "undo",
             old.get("status", "pending"), target["new_value"], dumps(old), None, None, target["id"], time.time()),
        )  # fmt: skip
        row = conn.execute("SELECT * FROM review_actions WHERE id=?", (cur.lastrowid,)).fetchone()
    return {"idx": target["idx"], "key": target["record_key"], "state": _state(row), "undid": target["action"]}


def _standing_in(conn: Any, dataset: str, key: str) -> Any:
    """The action the record's state comes from: its latest action that is not an undo nor undone."""
    rows = conn.execute(
        "SELECT * FROM review_actions WHERE dataset=? AND record_key=? ORDER BY id DESC", (dataset, key)
    ).fetchall()
    undone = {r["undoes"] for r in rows if r["action"] == "undo"}
    return next((r for r in rows if r["action"] != "undo" and r["id"] not in undone), None)


def history(store: Store, dataset: str, key: str) -> list[dict[str, Any]]:
    """Every action on one record, oldest first: who, when, what, from which value to which."""
    rows = store.query("SELECT * FROM review_actions WHERE dataset=? AND record_key=? ORDER BY id", (dataset, key))
    return [_public(r) for r in rows]


def all_actions(store: Store, dataset: str) -> list[dict[str, Any]]:
    return [_public(r) for r in store.query("SELECT * FROM review_actions WHERE dataset=? ORDER BY id", (dataset,))]


def _public(row: Any) -> dict[str, Any]:
    out = dict(row)
    out["old_value"], out["new_value"] = loads(out["old_value"]), loads(out["new_value"])
    return out


def reviewer_verdicts(actions: list[dict[str, Any]]) -> dict[str, dict[str, State]]:
    """record_key -> reviewer -> that reviewer's standing verdict (their last action not undone):
    what agreement between reviewers and with models is computed on."""
    undone = {a["undoes"] for a in actions if a["action"] == "undo"}
    out: dict[str, dict[str, State]] = {}
    for a in actions:
        if a["action"] == "undo" or a["id"] in undone:
            continue
        value = a["new_value"] or {}
        state = State(a["status"], value.get("answer"), True, a["id"], a["reviewer"], a["created_at"], a["note"],
                      value.get("kind"))  # fmt: skip
        out.setdefault(a["record_key"], {})[a["reviewer"]] = state
    return out


def as_dict(state: State) -> dict[str, Any]:
    return asdict(state)
