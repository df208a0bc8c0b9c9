"""The canonical record every stage reads and writes, and named, versioned datasets.

A record is TRL's conversational shape (`messages`) plus what distillation and review need:
an optional `label`, free `metadata`, `provenance` (source file and line, teacher, prompt hash,
cost), a `review` status (with the reviewer's note and time) and a `split`. Datasets are
versioned by the hash of everything a record stores: saving identical records under the same name
returns the existing version, and any change (a review status, a note, provenance) makes a new one.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from protege.errors import UserError
from protege.names import check_name
from protege.store import Store, dumps, loads

Role = Literal["system", "user", "assistant"]
ReviewStatus = Literal["pending", "accepted", "edited", "rejected"]


class Message(BaseModel):
    role: Role
    content: str


class Record(BaseModel):
    messages: list[Message]
    label: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    provenance: dict[str, Any] = Field(default_factory=dict)
    review: ReviewStatus = "pending"
    review_note: str | None = None
    """What a reviewer wrote about the record (why it was edited or rejected)."""
    reviewed_at: float | None = None
    """When it was last reviewed (Unix seconds)."""
    split: str | None = None

    @field_validator("messages")
    @classmethod
    def _non_empty(cls, v: list[Message]) -> list[Message]:
        if not v:
            raise ValueError("at least one message is needed")
        return v

    @property
    def prompt(self) -> list[dict[str, str]]:
        """Messages before the final assistant turn (what a model is asked)."""
        msgs = [m.model_dump() for m in self.messages]
        return msgs[:-1] if msgs and msgs[-1]["role"] == "assistant" else msgs

    @property
    def completion(self) -> str | None:
        """The final assistant turn (the answer a student learns), if any."""
        last = self.messages[-1]
        return last.content if last.role == "assistant" else None

    def content_hash(self) -> str:
        """Hash of every field, so that a dataset version is exactly what was stored: a re-save
        that changes only a review status or provenance is a new version, never dropped."""
        body = self.model_dump(mode="json")
        return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def dataset_hash(records: Iterable[Record]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(r.content_hash().encode())
    return h.hexdigest()


def save_dataset(
    store: Store,
    name: str,
    records: list[Record],
    source: dict[str, Any] | None = None,
    parents: list[int] | None = None,
) -> dict[str, Any]:
    """Write `records` as a new version of `name` in one transaction; when the latest version
    holds exactly these records (every field), that version is returned instead.

    Only the latest counts: saving A, then B, then A again makes A the latest (version 3), so
    `name` always means what was saved last. The check runs inside the insert's transaction, so
    two processes saving the same records at once get one version between them."""
    check_name(name, "dataset name")
    digest = dataset_hash(records)
    with store.transaction() as conn:
        latest = conn.execute(
            "SELECT version, hash FROM datasets WHERE name=? ORDER BY version DESC LIMIT 1", (name,)
        ).fetchone()
        if latest and latest["hash"] == digest:
            version = latest["version"]
        else:
            version = _insert(conn, name, digest, records, source, parents)
    return get_dataset(store, name, version)


def _insert(
    conn: Any, name: str, digest: str, records: list[Record], source: dict[str, Any] | None, parents: list[int] | None
) -> int:
    """The rows of a new version (the caller holds the transaction)."""
    row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM datasets WHERE name=?", (name,)).fetchone()
    version = row[0] + 1
    cur = conn.execute(
        "INSERT INTO datasets (name, version, hash, n_records, source, parents, created_at) VALUES (?,?,?,?,?,?,?)",
        (name, version, digest, len(records), dumps(source), dumps(parents or []), time.time()),
    )
    ds_id = cur.lastrowid
    conn.executemany(
        "INSERT INTO records (dataset_id, idx, messages, label, metadata, provenance, review, review_note, "
        "reviewed_at, split) VALUES (?,?,?,?,?,?,?,?,?,?)",
        [
            (
                ds_id,
                i,
                dumps([m.model_dump() for m in r.messages]),
                r.label,
                dumps(r.metadata),
                dumps(r.provenance),
                r.review,
                r.review_note,
                r.reviewed_at,
                r.split,
            )
            for i, r in enumerate(records)
        ],
    )
    return version


def get_dataset(store: Store, name: str, version: int | None = None) -> dict[str, Any]:
    """Dataset info; `name` may be `name@version`. Latest version when none is given."""
    if version is None and "@" in name:
        name, v = name.rsplit("@", 1)
        if not v.isdigit():
            raise UserError(f"dataset {name}@{v}: the version after '@' must be a number")
        version = int(v)
    if version is None:
        rows = store.query("SELECT * FROM datasets WHERE name=? ORDER BY version DESC LIMIT 1", (name,))
    else:
        rows = store.query("SELECT * FROM datasets WHERE name=? AND version=?", (name, version))
    if not rows:
        known = [r[0] for r in store.query("SELECT DISTINCT name FROM datasets ORDER BY name")]
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(known) or 'none'}")
    return _info(rows[0])


def load_records(store: Store, name: str, split: str | None = None, review: list[str] | None = None) -> list[Record]:
    """Records of a dataset (latest version unless `name@N`), optionally one split / review statuses."""
    info = get_dataset(store, name)
    sql = "SELECT * FROM records WHERE dataset_id=?"
    params: list[Any] = [info["id"]]
    if split is not None:
        sql += " AND split=?"
        params.append(split)
    if review:
        sql += f" AND review IN ({','.join('?' * len(review))})"
        params += review
    rows = store.query(sql + " ORDER BY idx", tuple(params))
    return [row_to_record(r) for r in rows]


def row_to_record(row: Any) -> Record:
    return Record(
        messages=loads(row["messages"]),
        label=row["label"],
        metadata=loads(row["metadata"]) or {},
        provenance=loads(row["provenance"]) or {},
        review=row["review"],
        review_note=row["review_note"],
        reviewed_at=row["reviewed_at"],
        split=row["split"],
    )


def list_datasets(store: Store) -> list[dict[str, Any]]:
    return [_info(r) for r in store.query("SELECT * FROM datasets ORDER BY name, version")]


def _info(row: Any) -> dict[str, Any]:
    info = dict(row)
    info["source"], info["parents"] = loads(info["source"]), loads(info["parents"])
    return info
