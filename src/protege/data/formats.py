"""Every dataset format protege reads and writes, one `Format` record each: how a file of it is
read and written, how a row of it is recognised, which fields `--map` may name, how a row becomes
a record and a record a row.

Two kinds of format: row formats (alpaca, dolly, sharegpt, openai-chat) fix what a JSON row
holds; containers (jsonl, csv, parquet, hf) hold rows of any row format, detected from the first
row, or plain columns mapped with `--map input=COLUMN,label=COLUMN`.

Beyond its own fields, every format carries the optional keys in RESERVED (what `export` writes
and the importer reads back), which makes export then import lossless.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protege.data.files import (
    RawRow,
    read_csv_rows,
    read_dataset_rows,
    read_json_rows,
    write_csv,
    write_hf,
    write_json,
    write_parquet,
)
from protege.data.records import Record

RESERVED = ("label", "metadata", "provenance", "review", "review_note", "reviewed_at", "split")
REVIEW_STATES = ("pending", "accepted", "edited", "rejected")
# ShareGPT dumps name roles inconsistently; these are the spellings seen in the wild.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant"}
SHAREGPT_ROLES |= {"system": "system"}
SHAREGPT_FROM = {"system": "system", "user": "human", "assistant": "gpt"}
OPENAI_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAPPED_FIELDS = ("input", "output", "label", "system", "history")

Row = dict[str, Any]
Mapping = dict[str, str]


class RowError(Exception):
    """A converter's complaint about one field; the importer turns it into a file:line Problem."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ExportError(Exception):
    """A record this format cannot hold (the exporter names the record)."""


# ---- reading a row ------------------------------------------------------------------------------


def get_field(row: Row, mapping: Mapping, name: str, required: bool = False, kind: type = str) -> Any:
    """The value of field `name` (through `mapping`), type-checked; RowError names the column."""
    column = mapping.get(name, name)
    value = row.get(column)
    if value is None:
        if required:
            raise RowError(column, "missing")
        return None
    if kind is str and isinstance(value, bool | int | float) and column in ("label", mapping.get("label")):
        value = str(value)  # numeric class ids are fine as labels
    if not isinstance(value, kind):
        raise RowError(column, f"expected {type_name(kind)}, got {type_name(type(value))}")
    if required and kind is str and not value.strip():
        raise RowError(column, "empty")
    return value


def type_name(kind: type) -> str:
    return {str: "a string", list: "a list", dict: "an object", int: "a number", float: "a number"}.get(
        kind, kind.__name__
    )


def join_instruction(instruction: str, extra: str | None) -> str:
    """Alpaca/Dolly user turn: the instruction, a blank line, then the input (when there is one)."""
    return f"{instruction.rstrip()}\n\n{extra.lstrip()}" if extra and extra.strip() else instruction


def _history(row: Row, mapping: Mapping) -> list[dict[str, str]]:
    """LLaMA-Factory's optional `system` and `history` ([[user, assistant], ...]) columns."""
    messages = []
    system = get_field(row, mapping, "system")
    if system is not None:
        messages.append({"role": "system", "content": system})
    for i, pair in enumerate(get_field(row, mapping, "history", kind=list) or []):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise RowError(f"history[{i}]", "expected a [user, assistant] pair of strings")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return messages


def from_alpaca(row: Row, mapping: Mapping) -> dict[str, Any]:
    instruction = get_field(row, mapping, "instruction", required=True)
    used = {"instruction", "input", "output", "system", "history"}
    if mapping.get("output", "output") not in row and isinstance(row.get("instances"), list):
        # self-instruct seed tasks: instances[{input, output}]; the first one is the example
        if not row["instances"] or not isinstance(row["instances"][0], dict):
            raise RowError("instances", "expected a non-empty list of {input, output}")
        inst = row["instances"][0]
        extra, output = get_field(inst, {}, "input"), get_field(inst, {}, "output", required=True)
        if len(row["instances"]) == 1:
            used.add("instances")  # otherwise the other instances stay in metadata
    else:
        extra = get_field(row, mapping, "input")
        output = get_field(row, mapping, "output", required=True)
    messages = _history(row, mapping)
    messages += [{"role": "user", "content": join_instruction(instruction, extra)}]
    messages += [{"role": "assistant", "content": output}]
    fields = {"instruction": instruction, "input": extra or ""}
    return {"messages": messages, "input": fields, "used": {mapping.get(u, u) for u in used}}


def from_dolly(row: Row, mapping: Mapping) -> dict[str, Any]:
    instruction = get_field(row, mapping, "instruction", required=True)
    context = get_field(row, mapping, "context")
    response = get_field(row, mapping, "response", required=True)
    category = get_field(row, mapping, "category")
    messages = _history(row, mapping)
    messages += [{"role": "user", "content": join_instruction(instruction, context)}]
    messages += [{"role": "assistant", "content": response}]
    fields = {"instruction": instruction, "context": context or ""}
    if category is not None:
        fields["category"] = category
    used = {mapping.get(u, u) for u in ("instruction", "context", "response", "category", "system", "history")}
    return {"messages": messages, "input": fields, "used": used}


def _turns(row: Row, mapping: Mapping, column: str, roles: dict[str, str], keys: tuple[str, str]) -> dict[str, Any]:
    """A list of chat turns whose role and text sit under `keys` (sharegpt: from/value)."""
    role_key, text_key = keys
    messages = []
    for i, turn in enumerate(get_field(row, mapping, column, required=True, kind=list)):
        where = f"{column}[{i}]"
        if not isinstance(turn, dict):
            raise RowError(where, f"expected an object, got {type_name(type(turn))}")
        role, content = turn.get(role_key), turn.get(text_key)
        if role not in roles:
            expected = "human, gpt or system" if role_key == "from" else "system, user or assistant"
            raise RowError(f"{where}.{role_key}", f"unknown role {role!r} (expected {expected})")
        if isinstance(content, list) and role_key == "role":  # content parts: only text can be kept
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise RowError(f"{where}.{text_key}", "only text content parts are supported")
            content = "".join(p.get("text", "") for p in content)
        if not isinstance(content, str):
            raise RowError(f"{where}.{text_key}", "missing" if content is None else "expected a string")
        messages.append({"role": roles[role], "content": content})
    return {"messages": messages, "input": None, "used": {mapping.get(column, column)}}


def from_sharegpt(row: Row, mapping: Mapping) -> dict[str, Any]:
    return _turns(row, mapping, "conversations", SHAREGPT_ROLES, ("from", "value"))


def from_openai(row: Row, mapping: Mapping) -> dict[str, Any]:
    return _turns(row, mapping, "messages", OPENAI_ROLES, ("role", "content"))


def default_mapping(row: Row) -> Mapping:
    """Guess `input`/`output`/`label` columns of a plain table (what `export --format jsonl` writes)."""
    guesses = {
        "input": ("text", "input", "prompt", "question", "sentence"),
        "output": ("output", "completion", "response", "answer"),
        "label": ("label", "labels", "category"),
        "system": ("system",),
    }
    mapping = {}
    for target, names in guesses.items():
        found = next((n for n in names if n in row and n not in mapping.values()), None)
        if found:
            mapping[target] = found
    return mapping


def from_mapped(row: Row, mapping: Mapping) -> dict[str, Any]:
    if "input" not in mapping:
        raise RowError("input", f"no input column; pass --map input=COLUMN (columns: {', '.join(row)})")
    text = get_field(row, mapping, "input", required=True)
    label = get_field(row, mapping, "label", required="label" in mapping)
    output = get_field(row, mapping, "output", required="output" in mapping and "label" not in mapping)
    messages = _history(row, mapping)
    messages.append({"role": "user", "content": text})
    if output is not None or label is not None:
        messages.append({"role": "assistant", "content": output if output is not None else label})
    fields = {k: v for k, v in row.items() if k not in RESERVED or k in mapping.values()}
    return {"messages": messages, "input": fields, "label": label, "used": set(row)}


def reserved_fields(row: Row, mapping: Mapping) -> dict[str, Any]:
    """The optional RESERVED keys of a row (JSON strings in CSV/Parquet cells are decoded)."""
    out: dict[str, Any] = {}
    for key in RESERVED:
        if key not in row or row[key] is None or (key != "label" and key in mapping.values()):
            continue
        value = row[key]
        if key in ("metadata", "provenance"):
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError as e:
                    raise RowError(key, f"invalid JSON: {e.msg}") from None
            if not isinstance(value, dict):
                raise RowError(key, f"expected an object, got {type_name(type(value))}")
        elif key == "review" and value not in REVIEW_STATES:
            raise RowError(key, f"{value!r} is not one of {', '.join(REVIEW_STATES)}")
        elif key == "reviewed_at":
            value = _number(key, value)
        elif key == "label" and isinstance(value, bool | int | float):
            value = str(value)
        elif not isinstance(value, str):
            raise RowError(key, f"expected a string, got {type_name(type(value))}")
        out[key] = value
    return out


def _number(key: str, value: Any) -> float:
    """A number, also from a CSV cell's text."""
    try:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    except (TypeError, ValueError):
        raise RowError(key, f"expected a number, got {value!r}") from None


# ---- writing a row ------------------------------------------------------------------------------


def reserved_values(record: Record) -> dict[str, Any]:
    """The RESERVED keys of a record, skipped when empty (metadata is always written: import would
    otherwise derive it from the row's other columns)."""
    out: dict[str, Any] = {"label": record.label, "metadata": record.metadata, "provenance": record.provenance}
    out |= {"review": record.review if record.review != "pending" else None}
    out |= {"review_note": record.review_note, "reviewed_at": record.reviewed_at, "split": record.split}
    return {k: v for k, v in out.items() if k == "metadata" or v not in (None, {})}


def _single_turn(record: Record, fmt: str) -> tuple[list[dict[str, str]], str, str | None]:
    """(system + history, final user turn, final assistant turn) of a record, or refuse it."""
    msgs = [m.model_dump() for m in record.messages]
    answer = msgs.pop()["content"] if msgs[-1]["role"] == "assistant" else None
    if not msgs or msgs[-1]["role"] != "user":
        raise ExportError(f"{fmt} needs a final user turn; use --format openai-chat")
    user = msgs.pop()["content"]
    return msgs, user, answer


def _history_columns(prefix: list[dict[str, str]], fmt: str) -> dict[str, Any]:
    """System and earlier turns as LLaMA-Factory's `system` / `history` columns."""
    out: dict[str, Any] = {}
    if prefix and prefix[0]["role"] == "system":
        out["system"] = prefix.pop(0)["content"]
    pairs = []
    for i in range(0, len(prefix), 2):
        pair = prefix[i : i + 2]
        if [m["role"] for m in pair] != ["user", "assistant"]:
            raise ExportError(f"{fmt} holds alternating user/assistant turns only; use openai-chat")
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


def to_alpaca(record: Record) -> Row:
    prefix, user, answer = _single_turn(record, "alpaca")
    if answer is None:
        raise ExportError("alpaca needs an assistant answer")
    instruction, extra = _split_instruction(record, user, "input")
    head = {"instruction": instruction, "input": extra, "output": answer}
    return head | _history_columns(prefix, "alpaca") | reserved_values(record)


def to_dolly(record: Record) -> Row:
    prefix, user, answer = _single_turn(record, "dolly")
    if answer is None:
        raise ExportError("dolly needs an assistant answer")
    instruction, context = _split_instruction(record, user, "context")
    head = {"instruction": instruction, "context": context, "response": answer}
    category = (record.metadata.get("input") or {}).get("category") if isinstance(record.metadata, dict) else None
    if isinstance(category, str):
        head["category"] = category
    return head | _history_columns(prefix, "dolly") | reserved_values(record)


def to_sharegpt(record: Record) -> Row:
    turns = [{"from": SHAREGPT_FROM[m.role], "value": m.content} for m in record.messages]
    return {"conversations": turns} | reserved_values(record)


def to_openai(record: Record) -> Row:
    return {"messages": [m.model_dump() for m in record.messages]} | reserved_values(record)


def to_flat(record: Record) -> Row:
    """A plain table row: `text` (the user turn), `output` when it differs from `label`."""
    prefix, user, answer = _single_turn(record, "a flat table")
    if any(m["role"] != "system" for m in prefix) or len(prefix) > 1:
        raise ExportError("a flat table holds one user turn; use --format openai-chat or sharegpt")
    row: Row = {"system": prefix[0]["content"]} if prefix else {}
    row["text"] = user
    if answer is not None and answer != record.label:
        row["output"] = answer
    return row | reserved_values(record)


def to_canonical(record: Record) -> Row:
    """Parquet/`datasets` row: messages as a list of structs, free-form dicts as JSON strings."""
    row: Row = {"messages": [m.model_dump() for m in record.messages]}
    row |= {k: getattr(record, k) for k in RESERVED}
    for key in ("metadata", "provenance"):
        row[key] = json.dumps(row[key], ensure_ascii=False, sort_keys=True)
    return row


# ---- the formats --------------------------------------------------------------------------------

Converter = Callable[[Row, Mapping], dict[str, Any]]


@dataclass(frozen=True)
class Format:
    """Everything about one format, so adding a format is adding one record."""

    name: str
    read: Callable[[str | Path], Iterator[RawRow]]
    """Rows of a file (or folder, or hub id) in this format, with their line numbers."""
    write: Callable[[list[Row], Path], None]
    """Write exported rows to a file (or folder)."""
    convert: Converter
    """A row to the parts of a record (containers: a plain row through the --map mapping)."""
    to_row: Callable[[Record], Row]
    """A record to a row (ExportError when this format cannot hold it)."""
    fields: tuple[str, ...] = MAPPED_FIELDS
    """What `--map FIELD=COLUMN` may name."""
    looks_like: Callable[[Row], bool] | None = None
    """Row formats: whether a JSON object is one of this format's rows. None: a container."""
    suffixes: tuple[str, ...] = ()
    """File suffixes that always mean this format (JSON files are recognised by their first row)."""

    @property
    def is_container(self) -> bool:
        return self.looks_like is None


def _json(source: str | Path) -> Iterator[RawRow]:
    return read_json_rows(Path(source))


def _csv(source: str | Path) -> Iterator[RawRow]:
    return read_csv_rows(Path(source))


def _is_dolly(row: Row) -> bool:
    return "instruction" in row and ("response" in row or "context" in row)


def _is_alpaca(row: Row) -> bool:
    return "instruction" in row and ("output" in row or "instances" in row)


# In detection order: the first row format whose `looks_like` accepts a row names it.
FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("openai-chat", _json, write_json, from_openai, to_openai,
               fields=("messages",), looks_like=lambda row: "messages" in row),
        Format("sharegpt", _json, write_json, from_sharegpt, to_sharegpt,
               fields=("conversations",), looks_like=lambda row: "conversations" in row),
        Format("dolly", _json, write_json, from_dolly, to_dolly,
               fields=("instruction", "context", "response", "category", "system", "history"), looks_like=_is_dolly),
        Format("alpaca", _json, write_json, from_alpaca, to_alpaca,
               fields=("instruction", "input", "output", "system", "history"), looks_like=_is_alpaca),
        Format("jsonl", _json, write_json, from_mapped, to_flat),
        Format("csv", _csv, write_csv, from_mapped, to_flat, suffixes=(".csv", ".tsv")),
        Format("parquet", read_dataset_rows, write_parquet, from_mapped, to_canonical, suffixes=(".parquet",)),
        Format("hf", read_dataset_rows, write_hf, from_mapped, to_canonical),
    )
}  # fmt: skip
PLAIN = FORMATS["jsonl"]
"""The row format of plain columns (mapped)."""


def detect_row_format(row: Any) -> Format:
    """The row format a JSON object looks like; plain columns (needing a mapping) otherwise."""
    if isinstance(row, dict):
        for fmt in FORMATS.values():
            if fmt.looks_like is not None and fmt.looks_like(row):
                return fmt
    return PLAIN
