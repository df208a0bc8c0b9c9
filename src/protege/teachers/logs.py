"""Captured production calls -> a training dataset.

A call becomes a record: the request's messages plus the answer, where a reviewer's correction
(from `POST /v1/feedback`) replaces the model's answer. `--min-rating` keeps only calls whose
latest rating reaches it, which is how production traffic gets filtered to the good examples.
"""

from __future__ import annotations

from typing import Any

from protege.data.records import Record, save_dataset
from protege.errors import DataError
from protege.names import check_name
from protege.store import Store, loads

_CALLS_SQL = """
SELECT c.*, f.rating AS rating, f.correction AS correction, f.comment AS comment
FROM calls c
LEFT JOIN feedback f ON f.id = (SELECT MAX(id) FROM feedback WHERE call_id = c.id)
WHERE c.kind = ?
"""


def list_calls(store: Store, kind: str = "capture", tag: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Newest first, with the latest feedback of each call."""
    sql, params = _CALLS_SQL, [kind]
    if tag:
        sql += " AND EXISTS (SELECT 1 FROM json_each(c.tags) WHERE value = ?)"
        params.append(tag)
    rows = store.query(sql + " ORDER BY c.id DESC LIMIT ?", (*params, limit))
    out = []
    for row in rows:
        call = dict(row)
        for key in ("request", "response", "tags"):
            call[key] = loads(call[key])
        out.append(call)
    return out


def call_to_record(call: dict[str, Any]) -> Record | None:
    """None when the call cannot be a chat training record (error, no answer, tool turns)."""
    request, response = call["request"] or {}, call["response"] or {}
    answer = call["correction"] if call["correction"] is not None else response.get("text")
    if call["status"] != "ok" or not answer:
        return None
    messages = []
    for m in request.get("messages") or []:
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if m.get("role") not in ("system", "user", "assistant") or not isinstance(content, str):
            return None
        messages.append({"role": m["role"], "content": content})
    if not messages:
        return None
    messages.append({"role": "assistant", "content": answer})
    review = "edited" if call["correction"] is not None else ("accepted" if call["rating"] is not None else "pending")
    return Record(
        messages=messages,
        metadata={"call_id": call["id"], "tags": call["tags"] or [], "original": response.get("text")},
        provenance={
            "source": "capture",
            "call_id": call["id"],
            "model": call["model"],
            "prompt_tokens": call["prompt_tokens"],
            "completion_tokens": call["completion_tokens"],
            "latency_ms": call["latency_ms"],
            "time": call["created_at"],
            "rating": call["rating"],
            "comment": call["comment"],
            "params": {k: v for k, v in request.items() if k not in ("messages", "stream", "metadata")},
        },
        review=review,
    )


def export_logs(store: Store, name: str, tag: str | None = None, min_rating: float | None = None) -> dict[str, Any]:
    """Save the captured calls matching `tag` (and rated >= `min_rating`) as dataset `name`."""
    check_name(name, "dataset name")
    calls = list_calls(store, "capture", tag, limit=-1)
    if min_rating is not None:
        calls = [c for c in calls if c["rating"] is not None and c["rating"] >= min_rating]
    calls.reverse()  # oldest first: a dataset reads in the order traffic arrived
    records = [r for r in (call_to_record(c) for c in calls) if r is not None]
    if not records:
        where = f" tagged {tag!r}" if tag else ""
        rated = f" rated >= {min_rating}" if min_rating is not None else ""
        raise DataError(f"no captured calls{where}{rated} with an answer to export")
    source = {
        "kind": "capture",
        "tag": tag,
        "min_rating": min_rating,
        "calls": [r.metadata["call_id"] for r in records],
    }
    info = save_dataset(store, name, records, source=source)
    return {**info, "skipped": len(calls) - len(records)}
