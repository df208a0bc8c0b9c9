"""`protege` commands of the evaluate stage (registered by protege.cli): eval, report, demo."""

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
    app.command("demo", rich_help_panel="evaluate")(demo_cmd)


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
    as_json: JsonOpt = False,
    workspace_: WorkspaceOpt = None,
) -> None:
    """Score models on the same records through the same serving path; stores an eval run."""
    from protege.cli_options import print_json, workspace
    from protege.evaluate.runner import parse_models, run_eval
    from protege.tasks import load_task

    ws = workspace(workspace_)
    summary = run_eval(
        ws, load_task(task), data, parse_models(models), limit=limit, split=split, name=name, judge=judge,
        reference=reference, use_cache=not no_cache,
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


def demo_cmd(
    inputs: Annotated[int, typer.Option(help="Unlabelled messages the teacher labels.")] = 120,
    heldout: Annotated[int, typer.Option(help="Gold-labelled messages everything is scored on.")] = 50,
    max_steps: Annotated[int | None, typer.Option(help="Cap the student's training steps (a quicker demo).")] = None,
    model: Annotated[str, typer.Option(help="Local teacher and student base.")] = "smollm2-135m-instruct",
    as_json: JsonOpt = False,
    workspace_: WorkspaceOpt = None,
) -> None:
    """Distil a shipped task from a local teacher, train a LoRA student, evaluate and report."""
    from protege.cli_options import print_json, workspace
    from protege.demo import DemoSettings, run_demo

    settings = DemoSettings(n_inputs=inputs, n_heldout=heldout, max_steps=max_steps, model=model)
    result = run_demo(workspace(workspace_), settings)
    if as_json:
        return print_json({k: v for k, v in result.items() if k != "summary"})
    print_table(result["summary"])
    typer.echo(f"report: {result['report']}")


def print_table(summary: dict[str, Any]) -> None:
    """The comparison table on stdout (it is the command's result)."""
    from rich.console import Console
    from rich.table import Table

    from protege.evaluate.report import comparison_rows, fmt

    rows = comparison_rows(summary)
    cols = [c for c in dict.fromkeys(k for r in rows for k in r) if c != "source"]
    table = Table(*cols, title=f"{summary.get('run')}: {summary.get('data')} ({summary.get('n')} records)")
    for r in rows:
        table.add_row(*(fmt(r.get(c)) for c in cols))
    # piped or logged, rich would squeeze the table into 80 columns and cut every figure short
    Console(width=None if sys.stdout.isatty() else 200).print(table)
