"""The one place rows are read from and written to files: JSON lines, a JSON array, CSV/TSV,
Parquet and `datasets` folders (or hub ids).

Readers yield `RawRow`s with the line a row starts on and, for a row that cannot be parsed, the
problem instead of a value, so a validator can list every bad line. `read_rows` is the strict
form for callers that stop at the first problem (distillation inputs, seed tasks, training
files); both report `file:line: field: what is wrong`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protege.errors import DataError, UserError

CSV_SUFFIXES = (".csv", ".tsv")


@dataclass
class RawRow:
    line: int
    value: Any = None
    error: str | None = None
    field: str = "json"
    """What the error is about: `json` or `csv` syntax."""


# ---- reading ------------------------------------------------------------------------------------


def read_json_rows(path: Path) -> Iterator[RawRow]:
    """JSONL (one value a line, streamed) or one JSON array; line numbers are where each row starts."""
    with path.open(encoding="utf-8") as f:
        first = ""
        while not first and (chunk := f.read(4096)):
            first = chunk.lstrip()[:1]
        if first == "[":
            f.seek(0)
            yield from _json_array_rows(f.read())
            return
        f.seek(0)
        for number, line in enumerate(f, start=1):
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


def read_csv_rows(path: Path, empty_as_missing: bool = True) -> Iterator[RawRow]:
    """CSV or TSV with a header; line numbers count the header as line 1.

    `empty_as_missing`: an empty cell is left out of the row (how `export` writes a missing
    value); otherwise it reads as "" (a distillation input whose template uses every column)."""
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
                    yield RawRow(start, error=f"expected {len(header)} columns, found {len(cells)}", field="csv")
                else:
                    pairs = zip(header, cells, strict=True)
                    yield RawRow(start, {k: v for k, v in pairs if v != "" or not empty_as_missing})
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


def read_rows(path: str | Path, empty_as_missing: bool = True) -> Iterator[tuple[int, Any]]:
    """(line, value) of each row of a JSONL, JSON-array or CSV/TSV file (by suffix); the first
    row that cannot be parsed stops with `file:line: field: what is wrong`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    is_csv = path.suffix.lower() in CSV_SUFFIXES
    rows = read_csv_rows(path, empty_as_missing) if is_csv else read_json_rows(path)
    for raw in rows:
        if raw.error is not None:
            raise DataError(f"{path}:{raw.line}: {raw.field}: {raw.error}")
        yield raw.line, raw.value


# ---- writing ------------------------------------------------------------------------------------


def write_json(rows: list[dict[str, Any]], out: Path) -> None:
    """A `.json` path gets one JSON array, anything else JSON lines."""
    if out.suffix == ".json":
        out.write_text(json.dumps(rows, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        return
    with out.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_csv(rows: list[dict[str, Any]], out: Path) -> None:
    """Lists and objects go into cells as JSON (the importer decodes them back)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: json.dumps(v, ensure_ascii=False) if isinstance(v, dict | list) else v for k, v in row.items()}
            )


def write_parquet(rows: list[dict[str, Any]], out: Path) -> None:
    import datasets

    datasets.Dataset.from_list(rows).to_parquet(str(out))


def write_hf(rows: list[dict[str, Any]], out: Path) -> None:
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(out))
