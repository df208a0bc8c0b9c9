"""`protege` commands of the evaluate stage (registered by protege.cli): eval, report."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from protege.cli_options import JsonOpt, WorkspaceOpt


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the top-level app (panel: evaluate)."""
    app.command("eval", rich_help_panel="evaluate")(eval_cmd)
    app.command("report", rich_help_panel="evaluate")(report_cmd)


def eval_cmd(
    task: Annotated[Path, typer.Argument(help="Task YAML.")],
    data: Annotated[str, typer.Option("--data", help="Dataset with reference answers (name or name@N).")],
    models: Annotated[
        str, typer.Option("--models", help="label=MODEL,... (teacher names, registry names, folders, run names).")
    ],
    limit: Annotated[int | None, typer.Option(help="Only the first N records.")] = None,
    split: Annotated[str | None, typer.Option(help="Only records of this split.")] = None,
    name: Annotated[str | None, typer.Option(help="Eval run name (default eval-TASK-TIME).")] = None,
    judge: Annotated[str | None, typer.Option(help="Teacher that judges text answers pairwise.")] = None,
    reference: Annotated[str | None, typer.Option(help="Model label others are compared with.")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Ask every model again.")] = False,
    majority_from: Annotated[
        str | None,
        typer.Option(
            "--majority-from",
            help="Training data (dataset or JSONL) whose most frequent label is the baseline row of a label task "
            "(default: the training data of the first evaluated training run, else the eval data itself).",
        ),
    ] = None,
    max_judge_invalid: Annotated[
        float,
        typer.Option(
            "--max-judge-invalid",
            min=0.0,
            max=1.0,
            help="Fail (exit 1) when more than this share of records get an unreadable judge verdict.",
        ),
    ] = 0.1,
    as_json: JsonOpt = False,
    workspace_: WorkspaceOpt = None,
) -> None:
    """Score models on the same records through the same serving path; stores an eval run.

    Label tasks get a majority-class row; unreadable judge verdicts count as invalid, never as ties."""
    from protege.cli_options import print_json, workspace
    from protege.evaluate.runner import parse_models, run_eval
    from protege.tasks import load_task

    ws = workspace(workspace_)
    summary = run_eval(
        ws, load_task(task), data, parse_models(models), limit=limit, split=split, name=name, judge=judge,
        reference=reference, use_cache=not no_cache, majority_from=majority_from,
        max_judge_invalid=max_judge_invalid,
    )  # fmt: skip
    if as_json:
        return print_json(summary)
    print_table(summary)


def report_cmd(
    runs: Annotated[
        list[str], typer.Argument(help="Eval (or train) run; several eval runs over the same data make one comparison.")
    ],
    out: Annotated[Path | None, typer.Option("--out", help="HTML file (default: in the run's folder).")] = None,
    as_json: JsonOpt = False,
    workspace_: WorkspaceOpt = None,
) -> None:
    """Write one self-contained HTML report (plots embedded) and a Markdown summary."""
    from protege.cli_options import print_json, workspace
    from protege.evaluate.report import write_report
    from protege.log import console

    paths = write_report(workspace(workspace_), runs, out)
    if as_json:
        return print_json(paths)
    console.print(f"[green]report[/] {paths['html']} (summary: {paths['markdown']})")


def print_table(summary: dict[str, Any]) -> None:
    """The comparison table on stdout (it is the command's result)."""
    from rich.console import Console
    from rich.table import Table

    from protege.evaluate.report import baseline_notes, comparison_rows, fmt

    rows = comparison_rows(summary)
    cols = [c for c in dict.fromkeys(k for r in rows for k in r) if c != "source"]
    table = Table(*cols, title=f"{summary.get('run')}: {summary.get('data')} ({summary.get('n')} records)")
    for r in rows:
        table.add_row(*(fmt(r.get(c)) for c in cols))
    # piped or logged, rich would squeeze the table into 80 columns and cut every figure short
    out = Console(width=None if sys.stdout.isatty() else 200)
    out.print(table)
    for note in baseline_notes(summary):
        out.print(note, highlight=False)
