"""Write a dataset back out in any import format, plus Parquet and a `datasets.Dataset` folder.

Each format carries its own fields plus the optional keys `label`, `metadata`, `provenance`,
`review` and `split` (skipped when empty), which the importers read back: export then import gives
the same messages, labels and metadata. Formats that cannot hold a record (a flat table cannot
hold a multi-turn chat) refuse it with the record's index rather than silently dropping turns.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protege.data.importers import join_instruction
from protege.data.records import Record, load_records
from protege.errors import DataError, UserError
from protege.store import Store

EXPORT_FORMATS = ("alpaca", "dolly", "sharegpt", "openai-chat", "jsonl", "csv", "parquet", "hf")
SHAREGPT_FROM = {"system": "system", "user": "human", "assistant": "gpt"}


def _extras(record: Record) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if record.label is not None:
        out["label"] = record.label
    out["metadata"] = record.metadata  # even when empty: import would otherwise derive it from the row
    if record.provenance:
        out["provenance"] = record.provenance
    if record.review != "pending":
        out["review"] = record.review
    if record.split is not None:
        out["split"] = record.split
    return out


def _single_turn(record: Record, index: int, fmt: str) -> tuple[list[dict[str, str]], str, str | None]:
    """(system + history, final user turn, final assistant turn) of a record, or refuse it."""
    msgs = [m.model_dump() for m in record.messages]
    answer = msgs.pop()["content"] if msgs[-1]["role"] == "assistant" else None
    if not msgs or msgs[-1]["role"] != "user":
        raise DataError(f"record {index}: {fmt} needs a final user turn; use --format openai-chat")
    user = msgs.pop()["content"]
    return msgs, user, answer


def _history(prefix: list[dict[str, str]], index: int, fmt: str) -> dict[str, Any]:
    """System and earlier turns as LLaMA-Factory's `system` / `history` columns."""
    out: dict[str, Any] = {}
    if prefix and prefix[0]["role"] == "system":
        out["system"] = prefix.pop(0)["content"]
    pairs = []
    for i in range(0, len(prefix), 2):
        pair = prefix[i : i + 2]
        if [m["role"] for m in pair] != ["user", "assistant"]:
            raise DataError(f"record {index}: {fmt} holds alternating user/assistant turns only; use openai-chat")
        pairs.append([pair[0]["content"], pair[1]["content"]])
    if pairs:
        out["history"] = pairs
    return out


def _split_instruction(record: Record, user: str, second: str) -> tuple[str, str]:
    """Recover (instruction, input) from metadata when they rebuild the same user turn."""
    fields = record.metadata.get("input") if isinstance(record.metadata.get("input"), dict) else {}
    instruction, extra = fields.get("instruction"), fields.get(second)
    if isinstance(instruction, str) and isinstance(extra, str) and join_instruction(instruction, extra) == user:
        return instruction, extra
    return user, ""


def to_alpaca(record: Record, index: int) -> dict[str, Any]:
    prefix, user, answer = _single_turn(record, index, "alpaca")
    if answer is None:
        raise DataError(f"record {index}: alpaca needs an assistant answer")
    instruction, extra = _split_instruction(record, user, "input")
    head = {"instruction": instruction, "input": extra, "output": answer}
    return head | _history(prefix, index, "alpaca") | _extras(record)


def to_dolly(record: Record, index: int) -> dict[str, Any]:
    prefix, user, answer = _single_turn(record, index, "dolly")
    if answer is None:
        raise DataError(f"record {index}: dolly needs an assistant answer")
    instruction, context = _split_instruction(record, user, "context")
    head = {"instruction": instruction, "context": context, "response": answer}
    category = (record.metadata.get("input") or {}).get("category") if isinstance(record.metadata, dict) else None
    if isinstance(category, str):
        head["category"] = category
    return head | _history(prefix, index, "dolly") | _extras(record)


def to_sharegpt(record: Record, index: int) -> dict[str, Any]:
    turns = [{"from": SHAREGPT_FROM[m.role], "value": m.content} for m in record.messages]
    return {"conversations": turns} | _extras(record)


def to_openai(record: Record, index: int) -> dict[str, Any]:
    return {"messages": [m.model_dump() for m in record.messages]} | _extras(record)


def to_flat(record: Record, index: int) -> dict[str, Any]:
    """A plain table row: `text` (the user turn), `output` when it differs from `label`."""
    prefix, user, answer = _single_turn(record, index, "a flat table")
    if any(m["role"] != "system" for m in prefix) or len(prefix) > 1:
        raise DataError(f"record {index}: a flat table holds one user turn; use --format openai-chat or sharegpt")
    row: dict[str, Any] = {"system": prefix[0]["content"]} if prefix else {}
    row["text"] = user
    if answer is not None and answer != record.label:
        row["output"] = answer
    return row | _extras(record)


def to_canonical(record: Record, index: int) -> dict[str, Any]:
    """Parquet/`datasets` row: messages as a list of structs, free-form dicts as JSON strings."""
    return {
        "messages": [m.model_dump() for m in record.messages],
        "label": record.label,
        "metadata": json.dumps(record.metadata, ensure_ascii=False, sort_keys=True),
        "provenance": json.dumps(record.provenance, ensure_ascii=False, sort_keys=True),
        "review": record.review,
        "split": record.split,
    }


ROW_WRITERS: dict[str, Callable[[Record, int], dict[str, Any]]] = {
    "alpaca": to_alpaca,
    "dolly": to_dolly,
    "sharegpt": to_sharegpt,
    "openai-chat": to_openai,
    "jsonl": to_flat,
    "csv": to_flat,
    "parquet": to_canonical,
    "hf": to_canonical,
}


def export_records(records: list[Record], fmt: str, out: str | Path) -> Path:
    """Write `records` to `out` in `fmt` (a .json path gets one JSON array, else JSON lines)."""
    if fmt not in ROW_WRITERS:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    rows = [ROW_WRITERS[fmt](r, i) for i, r in enumerate(records)]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        _write_csv(rows, out)
    elif fmt in ("parquet", "hf"):
        _write_arrow(rows, out, fmt)
    elif out.suffix == ".json":
        out.write_text(json.dumps(rows, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    else:
        with out.open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return out


def export_dataset(store: Store, name: str, fmt: str, out: str | Path, split: str | None = None) -> Path:
    """Export a stored dataset (`name` or `name@N`), optionally one split."""
    return export_records(load_records(store, name, split=split), fmt, out)


def _write_csv(rows: list[dict[str, Any]], out: Path) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: json.dumps(v, ensure_ascii=False) if isinstance(v, dict | list) else v for k, v in row.items()}
            )


def _write_arrow(rows: list[dict[str, Any]], out: Path, fmt: str) -> None:
    import datasets

    ds = datasets.Dataset.from_list(rows)
    if fmt == "parquet":
        ds.to_parquet(str(out))
    else:
        ds.save_to_disk(str(out))
