"""From reviews to data: each record as its review left it, and `protege review export`.

Reviews live in their own table; a dataset version is never changed in place (its hash covers every
field, review status included). Exporting writes a **new dataset version** whose records carry the
reviewed state: an edited answer replaces the original (the label and the final assistant turn),
`review`, `review_note` and `reviewed_at` are set, and `provenance.review` points back to the action
(dataset, action id, reviewer), so every training example can be traced to the person who approved it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from protege.data.records import Message, Record, get_dataset, load_records, save_dataset
from protege.errors import DataError
from protege.review.actions import State, stored_answer
from protege.review.stats import current_states
from protege.store import Store

APPROVED = ("accepted", "edited")


def apply_review(record: Record, state: State, dataset: str) -> Record:
    """`record` as its latest review left it (unchanged when nobody reviewed it)."""
    if not state.reviewed:
        return record
    out = record.model_copy(deep=True)
    out.review = state.status  # type: ignore[assignment]
    out.review_note = state.note
    out.reviewed_at = state.at
    out.provenance = {
        **out.provenance,
        "review": {"dataset": dataset, "action_id": state.action_id, "reviewer": state.reviewer},
    }
    if state.answer is not None and state.answer != stored_answer(record):
        _set_answer(out, state.answer, label=record.label is not None or state.kind == "label")
    return out


def _set_answer(record: Record, answer: str, label: bool) -> None:
    if record.messages[-1].role == "assistant":
        record.messages[-1] = Message(role="assistant", content=answer)
    else:
        record.messages.append(Message(role="assistant", content=answer))
    if label:
        record.label = answer


def reviewed_records(store: Store, name: str, statuses: Sequence[str] | None = None) -> list[Record]:
    """The records of dataset `name` (or `name@N`) as their reviews left them, optionally only those
    whose current status is in `statuses` (what a training config's `review:` selects)."""
    info = get_dataset(store, name)
    records = load_records(store, f"{info['name']}@{info['version']}")
    states = current_states(store, info["name"], records)
    out = [apply_review(r, s, info["name"]) for r, s in zip(records, states, strict=True)]
    return [r for r in out if statuses is None or r.review in statuses]


def export_reviewed(store: Store, name: str, new_name: str, statuses: Sequence[str] = APPROVED) -> dict[str, Any]:
    """Save the records of `name` whose current status is in `statuses` as a new version of
    `new_name` (lineage: the reviewed version). Returns the new dataset's info and the counts."""
    info = get_dataset(store, name)
    everything = reviewed_records(store, f"{info['name']}@{info['version']}")
    kept = [r for r in everything if r.review in statuses]
    if not kept:
        raise DataError(
            f"{info['name']}@{info['version']}: no record has review status {', '.join(statuses)}; nothing exported"
        )
    source = {"review_export": f"{info['name']}@{info['version']}", "statuses": list(statuses)}
    saved = save_dataset(store, new_name, kept, source=source, parents=[info["id"]])
    left_out: dict[str, int] = {}
    for r in everything:
        if r.review not in statuses:
            left_out[r.review] = left_out.get(r.review, 0) + 1
    return {**saved, "exported": len(kept), "left_out": left_out}
