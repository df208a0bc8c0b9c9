"""Read instruction and chat datasets in the common public formats into canonical records.

Every row keeps where it came from (file and line) so that a problem or a surprising record
can be traced back to the source. Reading and converting are separate steps: a format's reader
yields raw rows with their line numbers (protege.data.files), and its converter turns a row into
a Record or a list of problems (protege.data.formats). Validation is simply "convert everything
and collect the problems", so `validate` and `import` can never disagree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protege.data.files import CSV_SUFFIXES, read_json_rows
from protege.data.formats import (
    FORMATS,
    PLAIN,
    RESERVED,
    Format,
    RowError,
    default_mapping,
    detect_row_format,
    reserved_fields,
)
from protege.data.records import Record, save_dataset
from protege.errors import DataError, UserError
from protege.store import Store
from protege.tasks import Task

_FILE_SUFFIXES = (".json", ".jsonl", *CSV_SUFFIXES, ".parquet")


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


@dataclass
class Converted:
    """The outcome of reading a whole source: good records and every problem, in order."""

    source: str
    format: str
    records: list[Record] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    n_rows: int = 0


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise UserError(f"unknown format {name!r}; choose one of {', '.join(FORMATS)}")
    return FORMATS[name]


def detect_format(source: str | Path) -> str:
    """The format of a file or folder from its suffix and, for JSON, its first row."""
    path = Path(source)
    if not path.exists():
        if "/" in str(source) and not str(source).startswith((".", "/")) and path.suffix not in _FILE_SUFFIXES:
            return "hf"  # owner/name: a hub id
        raise UserError(f"{source}: file not found")
    if path.is_dir():
        return "hf"
    by_suffix = next((f.name for f in FORMATS.values() if path.suffix in f.suffixes), None)
    if by_suffix:
        return by_suffix
    first = next((raw for raw in read_json_rows(path) if raw.error is None), None)
    return detect_row_format(first.value).name if first else PLAIN.name


def parse_mapping(text: str | None) -> dict[str, str]:
    """`input=text,label=label` -> {"input": "text", "label": "label"} (field=column)."""
    mapping: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UserError(f"--map: expected FIELD=COLUMN, got {part!r}")
        mapping[key.strip()] = value.strip()
    return mapping


def _check_mapping(fmt: Format, mapping: dict[str, str] | None) -> None:
    unknown = [k for k in mapping or {} if k not in fmt.fields]
    if unknown:
        raise UserError(f"--map: {fmt.name} has no field {unknown[0]!r}; its fields: {', '.join(fmt.fields)}")


class _RowFormat:
    """How the rows of one source are converted: a row format converts as itself; a container's
    rows are mapped when --map is given, else converted as the format of its first row (plain
    rows then get their columns guessed per row, with the input column of the first row)."""

    def __init__(self, fmt: Format, mapping: dict[str, str] | None):
        self.fixed: Format | None = fmt if not fmt.is_container else (PLAIN if mapping else None)
        self.mapping = mapping or {}
        self.guess = not mapping
        self.first_guess: dict[str, str] = {}

    def for_row(self, row: dict[str, Any]) -> tuple[Format, dict[str, str]]:
        if self.fixed is None:
            self.fixed = detect_row_format(row)
            self.first_guess = default_mapping(row)
        if self.fixed is PLAIN and self.guess:
            mapping = default_mapping(row)
            if "input" in self.first_guess:
                mapping.setdefault("input", self.first_guess["input"])
            return self.fixed, mapping
        return self.fixed, self.mapping


def convert_source(
    source: str | Path,
    fmt: str | None = None,
    mapping: dict[str, str] | None = None,
    task: Task | None = None,
) -> Converted:
    """Read every row of `source` and convert it; problems are collected, never raised per row."""
    file_format = get_format(fmt or detect_format(source))
    if file_format.name != "hf" and not Path(source).is_file():
        raise UserError(f"{source}: file not found")
    _check_mapping(file_format, mapping)
    name = str(source)
    out = Converted(source=name, format=file_format.name)
    rows = _RowFormat(file_format, mapping)
    for raw in file_format.read(source):
        out.n_rows += 1
        if raw.error:
            out.problems.append(Problem(name, raw.line, raw.field, raw.error))
            continue
        if not isinstance(raw.value, dict):
            out.problems.append(Problem(name, raw.line, "row", f"expected an object, got {type(raw.value).__name__}"))
            continue
        row_format, row_mapping = rows.for_row(raw.value)
        try:
            out.records.append(row_to_record(raw.value, row_format, row_mapping, task, name, raw.line, file_format))
        except RowError as e:
            out.problems.append(Problem(name, raw.line, e.field, e.message))
    return out


def row_to_record(
    row: dict[str, Any],
    row_format: Format,
    mapping: dict[str, str],
    task: Task | None,
    source: str,
    line: int,
    file_format: Format,
) -> Record:
    """One row to one Record (raises RowError naming the field that is wrong)."""
    parts = row_format.convert(row, mapping)
    messages = parts["messages"]
    reserved = reserved_fields(row, mapping)
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
    provenance = {**reserved.get("provenance", {}), "source": source, "line": line, "format": file_format.name}
    return Record(
        messages=messages,
        label=label,
        metadata=metadata,
        provenance=provenance,
        review=reserved.get("review", "pending"),
        review_note=reserved.get("review_note"),
        reviewed_at=reserved.get("reviewed_at"),
        split=reserved.get("split"),
    )


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
