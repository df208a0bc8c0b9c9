"""`protege` commands of the teachers stage (registered by protege.cli): distill, synth, capture, logs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from protege.cli_options import JsonOpt, WorkspaceOpt
from protege.names import name_option

PANEL = "teachers"


def distill_cmd(
    task: Annotated[Path, typer.Argument(help="Task spec (YAML).")],
    inputs: Annotated[Path, typer.Option("--inputs", help="Input records: JSONL (one object per line) or CSV.")],
    teacher: Annotated[str, typer.Option("--teacher", help="A teacher name from protege.yaml `teachers:`.")],
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="Requests in flight at once.")] = 4,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Only the first N inputs.")] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Dataset name (default: TASK-distilled).", callback=name_option)
    ] = None,
    retries_invalid: Annotated[
        int | None,
        typer.Option(
            "--retries-invalid", min=0, help="Re-asks for an invalid answer (default: the teacher's invalid_retries)."
        ),
    ] = None,
    batch: Annotated[
        bool, typer.Option("--batch", help="Send through the teacher's Batch API first (half price at OpenAI).")
    ] = False,
    batch_id: Annotated[
        str | None, typer.Option("--batch-id", help="Resume this batch (implies --batch; a rerun finds its own).")
    ] = None,
    poll_seconds: Annotated[float, typer.Option("--poll-seconds", min=0.01, help="Batch status poll interval.")] = 30.0,
    workspace_: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a teacher over a task's inputs: one record per input, cached, resumable."""
    from protege.cli_options import print_json, workspace
    from protege.log import console
    from protege.tasks import load_task
    from protege.teachers.distill import distill

    result = distill(
        workspace(workspace_),
        load_task(task),
        inputs,
        teacher,
        concurrency,
        limit,
        name,
        retries_invalid,
        batch=batch,
        batch_id=batch_id,
        poll_s=poll_seconds,
    )
    summary = result.summary()
    if as_json:
        return print_json(summary)
    if result.batch:
        b = result.batch
        console.print(
            f"batch {b['batch_id'] or '-'}: {b['status']}, {b['answered']} of {b['sent']} answered"
            + (f", {b['failed']} asked online" if b["failed"] else "")
        )
    console.print(
        f"[green]distilled[/] {summary['dataset']}: {result.n_records} records ({result.n_rejected} rejected) in "
        f"{summary['seconds']}s; {summary['requests']} requests sent, {summary['cache_hits']} cache hits, "
        f"{summary['prompt_tokens']}+{summary['completion_tokens']} tokens, ${summary['cost']:.4f}"
    )


synth_app = typer.Typer(help="Synthesise training data from a few seed tasks.", no_args_is_help=True)


@synth_app.command("self-instruct")
def self_instruct_cmd(
    seeds: Annotated[Path, typer.Option("--seeds", help="Seed tasks (Alpaca seed_tasks.jsonl format).")],
    num: Annotated[int, typer.Option("--num", min=1, help="New tasks to generate.")],
    teacher: Annotated[str, typer.Option("--teacher", help="A teacher name from protege.yaml `teachers:`.")],
    name: Annotated[str, typer.Option("--name", help="Dataset name.", callback=name_option)] = "self-instruct",
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1)] = 4,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed: the same seed re-runs from the cache.")] = 0,
    workspace_: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Stanford Alpaca's self-instruct: new instructions, filtered by ROUGE-L, each with an instance."""
    from protege.cli_options import print_json, workspace
    from protege.log import console
    from protege.teachers.selfinstruct import self_instruct

    result = self_instruct(workspace(workspace_), seeds, num, teacher, name, concurrency, seed)
    summary = result.summary()
    if as_json:
        return print_json(summary)
    dropped = ", ".join(f"{n} {why}" for why, n in result.dropped.items()) or "none"
    console.print(
        f"[green]synthesised[/] {summary['dataset']}: {result.kept} tasks; dropped: {dropped}; "
        f"{summary['requests']} requests, {summary['cache_hits']} cache hits, ${summary['cost']:.4f}"
    )


def capture_cmd(
    upstream: Annotated[str, typer.Option("--upstream", help="The OpenAI-compatible base URL to forward to.")],
    port: Annotated[int, typer.Option("--port")] = 8001,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    workspace_: WorkspaceOpt = None,
) -> None:
    """A logging proxy: point clients at it; calls are logged to the workspace, keys never are."""
    from protege.cli_options import workspace
    from protege.log import console
    from protege.teachers.capture import serve_capture

    ws = workspace(workspace_)
    console.print(f"capturing http://{host}:{port}/v1 -> {upstream} (logging to {ws.root})")
    serve_capture(ws.store, upstream, host, port)


logs_app = typer.Typer(help="Captured calls: list them, turn them into a dataset.", no_args_is_help=True)


@logs_app.command("list")
def logs_list(
    tag: Annotated[str | None, typer.Option("--tag", help="Only calls with this tag.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1)] = 20,
    kind: Annotated[str, typer.Option("--kind", help="capture | teacher | judge")] = "capture",
    workspace_: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Newest calls first, with tags, tokens, latency and the latest rating."""
    from rich.console import Console
    from rich.table import Table

    from protege.cli_options import print_json, workspace
    from protege.teachers.logs import list_calls

    calls = list_calls(workspace(workspace_).store, kind, tag, limit)
    if as_json:
        return print_json(calls)
    table = Table("id", "model", "status", "tags", "tokens", "ms", "rating", "answer")
    for c in calls:
        text = ((c["response"] or {}).get("text") or "").replace("\n", " ")
        tokens = f"{c['prompt_tokens'] or 0}+{c['completion_tokens'] or 0}"
        latency = f"{c['latency_ms']:.0f}" if c["latency_ms"] else "-"
        rating = "-" if c["rating"] is None else f"{c['rating']:g}"
        table.add_row(
            str(c["id"]), c["model"] or "-", c["status"], ",".join(c["tags"] or []), tokens, latency, rating, text[:60]
        )
    Console().print(table)


@logs_app.command("export")
def logs_export(
    name: Annotated[str, typer.Option("--name", help="Dataset to create.", callback=name_option)],
    tag: Annotated[str | None, typer.Option("--tag", help="Only calls with this tag.")] = None,
    min_rating: Annotated[float | None, typer.Option("--min-rating", help="Only calls rated at least this.")] = None,
    workspace_: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Captured calls -> a dataset (a correction from feedback replaces the answer)."""
    from protege.cli_options import print_json, workspace
    from protege.log import console
    from protege.teachers.logs import export_logs

    info = export_logs(workspace(workspace_).store, name, tag, min_rating)
    if as_json:
        return print_json(info)
    console.print(f"[green]exported[/] {info['name']}@{info['version']}: {info['n_records']} records")


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the top-level app (panel: teachers)."""
    app.command("distill", rich_help_panel=PANEL)(distill_cmd)
    app.command("capture", rich_help_panel=PANEL)(capture_cmd)
    app.add_typer(synth_app, name="synth", rich_help_panel=PANEL)
    app.add_typer(logs_app, name="logs", rich_help_panel=PANEL)
