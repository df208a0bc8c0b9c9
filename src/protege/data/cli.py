"""`protege data ...`: import, validate, export, dedup, decontaminate, split, stats, show, list.

Each command is a thin wrapper over protege.data.{importers,validate,export,quality}. Commands
that derive a dataset (dedup, decontaminate, split) save a new version with its parent's id as
lineage, under the same name unless --name says otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from protege.cli_options import JsonOpt, WorkspaceOpt
from protege.errors import UserError
from protege.log import console
from protege.names import name_option

data_app = typer.Typer(help="Datasets: import, validate, deduplicate, split, export, browse.", no_args_is_help=True)

FormatOpt = Annotated[
    str | None,
    typer.Option(
        "--format", "-f", help="alpaca, dolly, sharegpt, openai-chat, jsonl, csv, hf, parquet [default: detected]"
    ),
]
MapOpt = Annotated[
    str | None, typer.Option("--map", help="FIELD=COLUMN,... e.g. input=text,label=label (or output=teacher_output)")
]
TaskOpt = Annotated[
    Path | None, typer.Option("--task", help="Task YAML: render the user turn from it, check labels against it.")
]
NameOpt = Annotated[
    str | None,
    typer.Option("--name", help="Dataset name for the result [default: same name].", callback=name_option),
]


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the top-level app (panel: data)."""
    app.add_typer(data_app, name="data", rich_help_panel="data")


def _task(path: Path | None) -> Any:
    from protege.tasks import load_task

    return load_task(path) if path else None


def _derive(ws: Any, name: str, records: list[Any], new_name: str | None, source: dict[str, Any]) -> dict[str, Any]:
    from protege.data.records import get_dataset, save_dataset

    parent = get_dataset(ws.store, name)
    source = {**source, "parent": f"{parent['name']}@{parent['version']}"}
    return save_dataset(ws.store, new_name or parent["name"], records, source=source, parents=[parent["id"]])


def _saved(info: dict[str, Any], what: str) -> None:
    console.print(f"[green]{what}[/] {info['n_records']} records -> {info['name']}@{info['version']}")


@data_app.command("import")
def import_(
    file: Annotated[str, typer.Argument(help="File, datasets folder or hub id.")],
    fmt: FormatOpt = None,
    mapping: MapOpt = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Dataset name [default: the file's stem].", callback=name_option)
    ] = None,
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Import the valid rows, report the rest.")
    ] = False,
    task: TaskOpt = None,
    workspace_: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Import a dataset file as a new version (all rows or nothing, unless --skip-invalid)."""
    from protege.cli_options import print_json, workspace
    from protege.data.importers import InvalidData, import_file, parse_mapping

    ws = workspace(workspace_)
    try:
        info = import_file(ws.store, file, fmt, parse_mapping(mapping), name, _task(task), skip_invalid)
    except InvalidData as e:
        for p in e.problems:
            console.print(str(p), highlight=False, markup=False, soft_wrap=True)
        raise
    for p in info["skipped"]:
        line = f"{p['file']}:{p['line']}: {p['field']}: {p['message']}"
        console.print(f"[yellow]skipped[/] {escape(line)}", highlight=False, soft_wrap=True)
    if as_json:
        return print_json(info)
    _saved(info, "imported")


@data_app.command("validate")
def validate(
    file: Annotated[str, typer.Argument(help="File, datasets folder or hub id.")],
    fmt: FormatOpt = None,
    mapping: MapOpt = None,
    task: TaskOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List every problem as file:line: field: what is wrong (exit 1 when there is any)."""
    from protege.cli_options import print_json
    from protege.data.importers import parse_mapping
    from protege.data.validate import summarise, validate_file
    from protege.errors import DataError

    result = validate_file(file, fmt, parse_mapping(mapping), _task(task))
    if as_json:
        print_json(summarise(result))
    else:
        for p in result.problems:
            typer.echo(str(p))
    if result.problems:
        raise DataError(f"{file}: {len(result.problems)} problems in {result.n_rows} rows")
    console.print(f"[green]ok[/] {file}: {result.n_rows} rows, format {result.format}")


@data_app.command("export")
def export(
    name: Annotated[str, typer.Argument(help="Dataset (name or name@version).")],
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="alpaca, dolly, sharegpt, openai-chat, jsonl, csv, parquet, hf")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file (folder for hf).")],
    split: Annotated[str | None, typer.Option("--split", help="Only this split.")] = None,
    status: Annotated[
        str | None,
        typer.Option(
            "--status",
            help="Review statuses to export: some of accepted,edited,pending,rejected, or all "
            "[default: all but rejected].",
        ),
    ] = None,
    workspace_: WorkspaceOpt = None,
) -> None:
    """Write a dataset in any import format, Parquet, or a datasets.Dataset folder (hf)."""
    from protege.cli_options import workspace
    from protege.data.export import export_dataset, parse_statuses

    statuses = parse_statuses(status)
    result = export_dataset(workspace(workspace_).store, name, fmt, out, split=split, statuses=statuses)
    left = ", ".join(f"{n} {s}" for s, n in result["left_out"].items())
    note = f" ({left} left out; --status all exports them)" if left else ""
    console.print(f"[green]exported[/] {result['records']} records of {name} -> {result['path']}{note}")


@data_app.command("dedup")
def dedup(
    name: str,
    near: Annotated[bool, typer.Option("--near", help="Also near duplicates (MinHash LSH).")] = False,
    threshold: Annotated[float, typer.Option("--threshold", help="Jaccard similarity for --near.")] = 0.8,
    on: Annotated[str, typer.Option("--on", help="Compare all text, the prompt or the completion.")] = "all",
    new_name: NameOpt = None,
    workspace_: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Remove exact (normalised) and, with --near, near duplicates; writes a new version."""
    from protege.cli_options import print_json, workspace
    from protege.data import quality
    from protege.data.records import load_records

    _check_part(on)
    if not 0 < threshold <= 1:
        raise UserError("--threshold must be in (0, 1]")
    ws = workspace(workspace_)
    records = load_records(ws.store, name)
    kept, report = quality.dedup(records, near=near, threshold=threshold, part=on)  # type: ignore[arg-type]
    info = _derive(ws, name, kept, new_name, {"kind": "dedup", "near": near, "threshold": threshold, "on": on})
    report["dataset"] = f"{info['name']}@{info['version']}"
    if as_json:
        return print_json(report)
    for c in report["near_clusters"][:20]:
        texts = " | ".join(quality.record_text(records[i])[:60] for i in c["indices"][:3])
        console.print(f"cluster {c['indices']} (>= {c['similarity']}): {texts}", highlight=False, markup=False)
    console.print(
        f"removed {report['removed']} of {report['records']} ({len(report['exact_clusters'])} exact clusters)"
    )
    _saved(info, "deduplicated")


def _check_part(on: str) -> None:
    if on not in ("all", "prompt", "completion"):
        raise UserError(f"--on: expected all, prompt or completion, got {on!r}")


@data_app.command("decontaminate")
def decontaminate(
    name: str,
    against: Annotated[str, typer.Option("--against", help="Evaluation dataset (name or name@version).")],
    n: Annotated[int, typer.Option("--n", help="Word n-gram size.")] = 13,
    on: Annotated[str, typer.Option("--on", help="Compare all text, the prompt or the completion.")] = "prompt",
    new_name: NameOpt = None,
    workspace_: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Drop training records that share an n-gram with the evaluation set; writes a new version."""
    from protege.cli_options import print_json, workspace
    from protege.data import quality
    from protege.data.records import load_records

    _check_part(on)
    if n < 1:
        raise UserError("--n must be at least 1")
    ws = workspace(workspace_)
    kept, report = quality.decontaminate(load_records(ws.store, name), load_records(ws.store, against), n, on)  # type: ignore[arg-type]
    info = _derive(ws, name, kept, new_name, {"kind": "decontaminate", "against": against, "n": n, "on": on})
    report["dataset"] = f"{info['name']}@{info['version']}"
    if as_json:
        return print_json(report)
    console.print(f"removed {report['removed']} of {report['records']} records overlapping {against} ({n}-grams)")
    _saved(info, "decontaminated")


@data_app.command("split")
def split(
    name: str,
    val: Annotated[float, typer.Option("--val", help="Fraction for validation.")] = 0.1,
    test: Annotated[float, typer.Option("--test", help="Fraction for test.")] = 0.1,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    new_name: NameOpt = None,
    workspace_: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Stratified (per label), seeded train/val/test split; writes a new version."""
    from collections import Counter

    from protege.cli_options import print_json, workspace
    from protege.data import quality
    from protege.data.records import load_records

    ws = workspace(workspace_)
    try:
        records = quality.stratified_split(load_records(ws.store, name), val, test, seed)
    except ValueError as e:
        raise UserError(str(e)) from None
    info = _derive(ws, name, records, new_name, {"kind": "split", "val": val, "test": test, "seed": seed})
    counts = dict(Counter(r.split for r in records))
    if as_json:
        return print_json({"dataset": f"{info['name']}@{info['version']}", "splits": counts})
    console.print(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    _saved(info, "split")


@data_app.command("stats")
def stats(
    name: str,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Count tokens with this model's tokenizer.")
    ] = None,
    max_length: Annotated[
        int | None, typer.Option("--max-length", help="Flag records longer than this [default: context window].")
    ] = None,
    workspace_: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Counts, label distribution and a length histogram (tokens with --model, else characters)."""
    from protege.cli_options import print_json, workspace
    from protege.data.records import get_dataset, load_records
    from protege.data.report import dataset_stats, print_stats

    ws = workspace(workspace_)
    info = get_dataset(ws.store, name)
    result = dataset_stats(load_records(ws.store, name), model, max_length)
    result["dataset"] = f"{info['name']}@{info['version']}"
    if as_json:
        return print_json(result)
    print_stats(result)


@data_app.command("show")
def show(
    name: str,
    where: Annotated[
        list[str] | None, typer.Option("--where", help="KEY=VALUE: label, split, review, text, metadata.KEY")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many records.")] = 10,
    workspace_: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Browse records, optionally filtered."""
    from protege.cli_options import print_json, workspace
    from protege.data import quality
    from protege.data.records import load_records
    from protege.data.report import print_records

    records = load_records(workspace(workspace_).store, name)
    try:
        conditions = dict(_key_value(w) for w in where or [])
        indices = quality.where(records, conditions)[:limit]
    except ValueError as e:
        raise UserError(str(e)) from None
    if as_json:
        return print_json([{"index": i, **records[i].model_dump()} for i in indices])
    print_records(records, indices)


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--where: expected KEY=VALUE, got {text!r}")
    return key.strip(), value


@data_app.command("list")
def list_(workspace_: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Every dataset version: records, where it came from, its parents."""
    from protege.cli_options import print_json, workspace
    from protege.data.records import list_datasets
    from protege.data.report import print_datasets

    rows = list_datasets(workspace(workspace_).store)
    if as_json:
        return print_json(rows)
    print_datasets(rows)
