"""Read instruction and chat datasets in the common public formats into canonical records.

Every row keeps where it came from (file and line) so that a problem or a surprising record
can be traced back to the source. Reading and converting are separate steps: readers yield raw
rows with their line numbers (JSON/JSONL, CSV, Parquet, a `datasets` folder or hub id), and one
converter per format turns a row into a Record or a list of problems. Validation is simply
"convert everything and collect the problems", so `validate` and `import` can never disagree.

Beyond each format's own fields, every format reads the optional keys `label`, `metadata`,
`provenance`, `review` and `split` (what `export` writes), which makes export then import lossless.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protege.data.records import Record, save_dataset
from protege.errors import DataError, UserError
from protege.store import Store
from protege.tasks import Task

FORMATS = ("alpaca", "dolly", "sharegpt", "openai-chat", "jsonl", "csv", "hf", "parquet")
RESERVED = ("label", "metadata", "provenance", "review", "split")
REVIEW_STATES = ("pending", "accepted", "edited", "rejected")
# ShareGPT dumps name roles inconsistently; these are the spellings seen in the wild.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant"}
SHAREGPT_ROLES |= {"system": "system"}
OPENAI_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_FILE_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one row, printed as `file:line: field: what is wrong`."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "field": self.field, "message": self.message}


class InvalidData(DataError):
    """Raised with every problem found, so a caller (the CLI) can list them all."""

    def __init__(self, problems: list[Problem], what: str):
        self.problems = problems
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{problems[0]}{more}; {what}")


class RowError(Exception):
    """A converter's complaint about one field; collected into Problems by the caller."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass
class RawRow:
    line: int
    value: Any = None
    error: str | None = None


@dataclass
class Converted:
    """The outcome of reading a whole source: good records and every problem, in order."""

    source: str
    format: str
    records: list[Record] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    n_rows: int = 0


# ---- readers ------------------------------------------------------------------------------------


def read_json_rows(path: Path) -> Iterator[RawRow]:
    """JSONL (one object a line) or one JSON array; line numbers are where each row starts."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        yield from _json_array_rows(text)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield RawRow(number, json.loads(line))
        except json.JSONDecodeError as e:
            yield RawRow(number, error=f"invalid JSON: {e.msg} (column {e.colno})")


def _json_array_rows(text: str) -> Iterator[RawRow]:
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    while True:
        pos = _skip_ws(text, pos)
        if pos >= len(text) or text[pos] == "]":
            return
        line = text.count("\n", 0, pos) + 1
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            yield RawRow(e.lineno, error=f"invalid JSON: {e.msg} (column {e.colno})")
            return  # an array cannot be resynchronised after a syntax error
        yield RawRow(line, value)
        pos = _skip_ws(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos += 1


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def read_csv_rows(path: Path) -> Iterator[RawRow]:
    """CSV with a header; empty cells read as missing, line numbers count the header as line 1."""
    with path.open(newline="", encoding="utf-8") as f:
        sample = f.read(4096)
        f.seek(0)
        delimiter = "\t" if path.suffix == ".tsv" or ("\t" in sample and "," not in sample) else ","
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader, None)
        if not header:
            return
        start = reader.line_num + 1
        for cells in reader:
            if cells and any(c.strip() for c in cells):
                if len(cells) != len(header):
                    yield RawRow(start, error=f"expected {len(header)} columns, found {len(cells)}")
                else:
                    yield RawRow(start, {k: v for k, v in zip(header, cells, strict=True) if v != ""})
            start = reader.line_num + 1


def read_dataset_rows(source: str | Path) -> Iterator[RawRow]:
    """A `datasets` folder (save_to_disk), a Parquet file, or a hub id; line = 1-based row number."""
    ds = load_hf(source)
    names = _class_label_names(ds)
    for i, row in enumerate(ds, start=1):
        for col, labels in names.items():
            if isinstance(row.get(col), int):
                row[col] = labels[row[col]]  # ClassLabel ids become their names
        yield RawRow(i, row)


def load_hf(source: str | Path) -> Any:
    import datasets

    path = Path(source)
    if path.suffix == ".parquet" and path.is_file():
        return datasets.Dataset.from_parquet(str(path))
    if path.is_dir():
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
        return ds
    try:
        return datasets.load_dataset(str(source), split="train")
    except Exception as e:  # the hub raises many kinds; the user needs one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{source}: not a local dataset and the hub could not provide it ({first[:200]})") from None


def _class_label_names(ds: Any) -> dict[str, list[str]]:
    import datasets

    return {k: f.names for k, f in ds.features.items() if isinstance(f, datasets.ClassLabel)}


# ---- detection ----------------------------------------------------------------------------------


def detect_row_format(row: Any) -> str:
    """Which format a JSON object looks like (`jsonl` = plain columns, needing a mapping)."""
    if not isinstance(row, dict):
        return "jsonl"
    if "messages" in row:
        return "openai-chat"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row and ("response" in row or "context" in row):
        return "dolly"
    if "instruction" in row and ("output" in row or "instances" in row):
        return "alpaca"
    return "jsonl"


def detect_format(source: str | Path) -> str:
    """The format of a file or folder from its suffix and, for JSON, its first row."""
    path = Path(source)
    if not path.exists():
        if "/" in str(source) and not str(source).startswith((".", "/")) and path.suffix not in _FILE_SUFFIXES:
            return "hf"  # owner/name: a hub id
        raise UserError(f"{source}: file not found")
    if path.is_dir():
        return "hf"
    if path.suffix in (".csv", ".tsv"):
        return "csv"
    if path.suffix == ".parquet":
        return "parquet"
    for raw in read_json_rows(path):
        if raw.error is None:
            return detect_row_format(raw.value)
    return "jsonl"


def parse_mapping(text: str | None) -> dict[str, str]:
    """`input=text,label=label` -> {"input": "text", "label": "label"} (field=column)."""
    mapping: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UserError(f"--map: expected FIELD=COLUMN, got {part!r}")
        mapping[key.strip()] = value.strip()
    return mapping


# ---- converters ---------------------------------------------------------------------------------


def _get(row: dict[str, Any], mapping: dict[str, str], name: str, required: bool = False, kind: type = str) -> Any:
    column = mapping.get(name, name)
    value = row.get(column)
    if value is None:
        if required:
            raise RowError(column, "missing")
        return None
    if kind is str and isinstance(value, bool | int | float) and column in ("label", mapping.get("label")):
        value = str(value)  # numeric class ids are fine as labels
    if not isinstance(value, kind):
        raise RowError(column, f"expected {_type_name(kind)}, got {_type_name(type(value))}")
    if required and kind is str and not value.strip():
        raise RowError(column, "empty")
    return value


def _type_name(kind: type) -> str:
    return {str: "a string", list: "a list", dict: "an object", int: "a number", float: "a number"}.get(
        kind, kind.__name__
    )


def join_instruction(instruction: str, extra: str | None) -> str:
    """Alpaca/Dolly user turn: the instruction, a blank line, then the input (when there is one)."""
    return f"{instruction.rstrip()}\n\n{extra.lstrip()}" if extra and extra.strip() else instruction


def _history(row: dict[str, Any], mapping: dict[str, str]) -> list[dict[str, str]]:
    """LLaMA-Factory's optional `system` and `history` ([[user, assistant], ...]) columns."""
    messages = []
    system = _get(row, mapping, "system")
    if system is not None:
        messages.append({"role": "system", "content": system})
    for i, pair in enumerate(_get(row, mapping, "history", kind=list) or []):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise RowError(f"history[{i}]", "expected a [user, assistant] pair of strings")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return messages


def from_alpaca(row: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    instruction = _get(row, mapping, "instruction", required=True)
    used = {"instruction", "input", "output", "system", "history"}
    if mapping.get("output", "output") not in row and isinstance(row.get("instances"), list):
        # self-instruct seed tasks: instances[{input, output}]; the first one is the example
        if not row["instances"] or not isinstance(row["instances"][0], dict):
            raise RowError("instances", "expected a non-empty list of {input, output}")
        inst = row["instances"][0]
        extra, output = _get(inst, {}, "input"), _get(inst, {}, "output", required=True)
        if len(row["instances"]) == 1:
            used.add("instances")  # otherwise the other instances stay in metadata
    else:
        extra = _get(row, mapping, "input")
        output = _get(row, mapping, "output", required=True)
    messages = _history(row, mapping)
    messages += [{"role": "user", "content": join_instruction(instruction, extra)}]
    messages += [{"role": "assistant", "content": output}]
    fields = {"instruction": instruction, "input": extra or ""}
    return {"messages": messages, "input": fields, "used": {mapping.get(u, u) for u in used}}


def from_dolly(row: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    instruction = _get(row, mapping, "instruction", required=True)
    context = _get(row, mapping, "context")
    response = _get(row, mapping, "response", required=True)
    category = _get(row, mapping, "category")
    messages = _history(row, mapping)
    messages += [{"role": "user", "content": join_instruction(instruction, context)}]
    messages += [{"role": "assistant", "content": response}]
    fields = {"instruction": instruction, "context": context or ""}
    if category is not None:
        fields["category"] = category
    used = {mapping.get(u, u) for u in ("instruction", "context", "response", "category", "system", "history")}
    return {"messages": messages, "input": fields, "used": used}


def from_sharegpt(row: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    turns = _get(row, mapping, "conversations", required=True, kind=list)
    messages = []
    for i, turn in enumerate(turns):
        where = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise RowError(where, f"expected an object, got {_type_name(type(turn))}")
        role, value = turn.get("from"), turn.get("value")
        if role not in SHAREGPT_ROLES:
            raise RowError(f"{where}.from", f"unknown role {role!r} (expected human, gpt or system)")
        if not isinstance(value, str):
            raise RowError(f"{where}.value", "missing" if value is None else "expected a string")
        messages.append({"role": SHAREGPT_ROLES[role], "content": value})
    return {"messages": messages, "input": None, "used": {mapping.get("conversations", "conversations")}}


def from_openai(row: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    turns = _get(row, mapping, "messages", required=True, kind=list)
    messages = []
    for i, turn in enumerate(turns):
        where = f"messages[{i}]"
        if not isinstance(turn, dict):
            raise RowError(where, f"expected an object, got {_type_name(type(turn))}")
        role, content = turn.get("role"), turn.get("content")
        if role not in OPENAI_ROLES:
            raise RowError(f"{where}.role", f"unknown role {role!r} (expected system, user or assistant)")
        if isinstance(content, list):  # content parts: only text can be kept
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise RowError(f"{where}.content", "only text content parts are supported")
            content = "".join(p.get("text", "") for p in content)
        if not isinstance(content, str):
            raise RowError(f"{where}.content", "missing" if content is None else "expected a string")
        messages.append({"role": OPENAI_ROLES[role], "content": content})
    return {"messages": messages, "input": None, "used": {mapping.get("messages", "messages")}}


def default_mapping(row: dict[str, Any]) -> dict[str, str]:
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


def from_mapped(row: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    if "input" not in mapping:
        raise RowError("input", f"no input column; pass --map input=COLUMN (columns: {', '.join(row)})")
    text = _get(row, mapping, "input", required=True)
    label = _get(row, mapping, "label", required="label" in mapping)
    output = _get(row, mapping, "output", required="output" in mapping and "label" not in mapping)
    messages = _history(row, mapping)
    messages.append({"role": "user", "content": text})
    if output is not None or label is not None:
        messages.append({"role": "assistant", "content": output if output is not None else label})
    fields = {k: v for k, v in row.items() if k not in RESERVED or k in mapping.values()}
    return {"messages": messages, "input": fields, "label": label, "used": set(row)}


CONVERTERS: dict[str, Callable[[dict[str, Any], dict[str, str]], dict[str, Any]]] = {
    "alpaca": from_alpaca,
    "dolly": from_dolly,
    "sharegpt": from_sharegpt,
    "openai-chat": from_openai,
    "jsonl": from_mapped,
    "csv": from_mapped,
}


# ---- the whole file -----------------------------------------------------------------------------


def convert_source(
    source: str | Path,
    fmt: str | None = None,
    mapping: dict[str, str] | None = None,
    task: Task | None = None,
) -> Converted:
    """Read every row of `source` and convert it; problems are collected, never raised per row."""
    fmt = fmt or detect_format(source)
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    path = Path(source)
    if fmt not in ("hf",) and not path.is_file():
        raise UserError(f"{source}: file not found")
    _check_mapping(fmt, mapping)
    rows = _rows(source, fmt)
    name = str(source)
    out = Converted(source=name, format=fmt)
    row_format, fixed, guess, first_guess = _row_format(fmt, mapping), None, not mapping, {}
    for raw in rows:
        out.n_rows += 1
        if raw.error:
            out.problems.append(Problem(name, raw.line, "json" if fmt != "csv" else "csv", raw.error))
            continue
        if not isinstance(raw.value, dict):
            out.problems.append(Problem(name, raw.line, "row", f"expected an object, got {type(raw.value).__name__}"))
            continue
        if fixed is None:  # tables and dataset folders: decide the row format once, from the first row
            fixed = row_format or detect_row_format(raw.value)
            first_guess = default_mapping(raw.value)
        if fixed == "jsonl" and guess:  # plain rows without --map: guessed per row, input as in the first row
            mapping = default_mapping(raw.value)
            if "input" in first_guess:
                mapping.setdefault("input", first_guess["input"])
        try:
            out.records.append(row_to_record(raw.value, fixed, mapping or {}, task, name, raw.line, fmt))
        except RowError as e:
            out.problems.append(Problem(name, raw.line, e.field, e.message))
    return out


FIELDS = {
    "alpaca": ("instruction", "input", "output", "system", "history"),
    "dolly": ("instruction", "context", "response", "category", "system", "history"),
    "sharegpt": ("conversations",),
    "openai-chat": ("messages",),
}
MAPPED_FIELDS = ("input", "output", "label", "system", "history")


def _check_mapping(fmt: str, mapping: dict[str, str] | None) -> None:
    allowed = FIELDS.get(fmt, MAPPED_FIELDS)
    unknown = [k for k in mapping or {} if k not in allowed]
    if unknown:
        raise UserError(f"--map: {fmt} has no field {unknown[0]!r}; its fields: {', '.join(allowed)}")


def _rows(source: str | Path, fmt: str) -> Iterator[RawRow]:
    if fmt == "csv":
        return read_csv_rows(Path(source))
    if fmt in ("hf", "parquet"):
        return read_dataset_rows(source)
    return read_json_rows(Path(source))


def _row_format(fmt: str, mapping: dict[str, str] | None) -> str | None:
    """Named formats convert as themselves; tables with a mapping are mapped; others are detected."""
    if fmt in ("alpaca", "dolly", "sharegpt", "openai-chat"):
        return fmt
    if fmt in ("jsonl", "csv") and mapping:
        return "jsonl"
    if fmt in ("hf", "parquet") and mapping:
        return "jsonl"
    return None


def row_to_record(
    row: dict[str, Any],
    row_format: str,
    mapping: dict[str, str],
    task: Task | None,
    source: str,
    line: int,
    file_format: str,
) -> Record:
    """One row to one Record (raises RowError naming the field that is wrong)."""
    parts = CONVERTERS[row_format](row, mapping)
    messages = parts["messages"]
    reserved = _reserved(row, mapping)
    label = parts.get("label") if parts.get("label") is not None else reserved.get("label")
    if task is not None and parts["input"] is not None:
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        try:
            messages[last_user] = {"role": "user", "content": task.render(parts["input"])}
        except DataError as e:
            raise RowError("input", str(e)) from None
    label = _check_label(task, label, messages)
    _check_messages(messages)
    metadata = reserved.get("metadata")
    if metadata is None:
        metadata = {k: v for k, v in row.items() if k not in parts["used"] and k not in RESERVED}
        if parts["input"] is not None:
            metadata["input"] = parts["input"]
    provenance = {**reserved.get("provenance", {}), "source": source, "line": line, "format": file_format}
    return Record(
        messages=messages,
        label=label,
        metadata=metadata,
        provenance=provenance,
        review=reserved.get("review", "pending"),
        split=reserved.get("split"),
    )


def _reserved(row: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    """The optional keys `export` writes (JSON strings in CSV/Parquet cells are decoded)."""
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
                raise RowError(key, f"expected an object, got {_type_name(type(value))}")
        elif key == "review" and value not in REVIEW_STATES:
            raise RowError(key, f"{value!r} is not one of {', '.join(REVIEW_STATES)}")
        elif key == "label" and isinstance(value, bool | int | float):
            value = str(value)
        elif not isinstance(value, str):
            raise RowError(key, f"expected a string, got {_type_name(type(value))}")
        out[key] = value
    return out


def _check_label(task: Task | None, label: str | None, messages: list[dict[str, str]]) -> str | None:
    """With a label task, the label (or the final answer) must be one of the task's labels."""
    if task is None or task.output.kind != "label":
        return label
    value = label if label is not None else (messages[-1]["content"] if messages[-1]["role"] == "assistant" else None)
    if value is None:
        return None
    if value.strip() not in task.labels:
        raise RowError("label", f"{value!r} is not one of the labels of task {task.name!r}: {', '.join(task.labels)}")
    return value.strip()


def _check_messages(messages: list[dict[str, str]]) -> None:
    if not messages:
        raise RowError("messages", "no messages")
    for i, m in enumerate(messages):
        if not m["content"].strip():
            raise RowError(f"messages[{i}].content", f"empty {m['role']} turn")
    if not any(m["role"] == "user" for m in messages):
        raise RowError("messages", "no user turn")


def import_file(
    store: Store,
    source: str | Path,
    fmt: str | None = None,
    mapping: dict[str, str] | None = None,
    name: str | None = None,
    task: Task | None = None,
    skip_invalid: bool = False,
) -> dict[str, Any]:
    """Import a file as a new dataset version, all or nothing unless `skip_invalid`.

    Returns the dataset info plus `skipped` (the problems of rows left out)."""
    result = convert_source(source, fmt, mapping, task)
    if result.problems and not skip_invalid:
        raise InvalidData(result.problems, "nothing imported (--skip-invalid imports the valid rows)")
    if not result.records:
        raise DataError(f"{source}: no valid rows to import")
    src = {"kind": "import", "file": str(source), "format": result.format, "mapping": mapping or None}
    src |= {"task": task.name if task else None, "rows": result.n_rows, "skipped": len(result.problems)}
    info = save_dataset(store, name or default_name(source), result.records, source=src)
    return {**info, "skipped": [p.to_dict() for p in result.problems]}


def default_name(source: str | Path) -> str:
    """A dataset is named after its file (stem) or folder, or the last part of a hub id."""
    path = Path(str(source).rstrip("/" + os.sep))
    return path.stem if path.suffix else path.name
