"""`protege review ...` (registered by protege.cli): serve the review page, stats, export.

`protege review predict` (a model's answers and confidence for the page) runs a model, which this
stage never does: it is registered on this group by protege.rounds_cli, beside `protege rounds`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from protege.cli_options import JsonOpt, WorkspaceOpt
from protege.names import name_option

review_app = typer.Typer(
    help="People in the loop: review records on a web page, stats, export what was approved.", no_args_is_help=True
)

TaskOpt = Annotated[Path | None, typer.Option("--task", help="Task YAML: its labels / schema check every edit.")]
PredictionsOpt = Annotated[
    Path | None,
    typer.Option(
        "--predictions",
        help="A model's answers (JSONL: `protege review predict`, a rounds round, an eval run's predictions file) "
        "[default: the dataset's file from `protege review predict`, when there is one].",
    ),
]


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the top-level app (panel: review)."""
    app.add_typer(review_app, name="review", rich_help_panel="review")


def _task(path: Path | None) -> Any:
    from protege.tasks import load_task

    return load_task(path) if path else None


def _predictions(ws: Any, dataset: str, given: Path | None) -> Path | None:
    from protege.data.records import get_dataset
    from protege.review.predictions import default_path

    if given is not None:
        return given
    path = default_path(ws.artifacts, get_dataset(ws.store, dataset)["name"])
    return path if path.exists() else None


@review_app.command("serve")
def serve_cmd(
    dataset: Annotated[str, typer.Argument(help="Dataset to review (name or name@N).")],
    task: TaskOpt = None,
    port: Annotated[int, typer.Option(help="Port of the page.")] = 8300,
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback needs a token.")] = "127.0.0.1",
    reviewer: Annotated[
        str | None, typer.Option(help="Your name on every action [default: $USER]; ?reviewer=NAME per browser.")
    ] = None,
    order: Annotated[str, typer.Option(help="uncertainty | disagreement | random | oldest.")] = "uncertainty",
    predictions: PredictionsOpt = None,
    token: Annotated[
        str | None,
        typer.Option(
            help="Required off loopback: given once as ?token=, then a cookie.", envvar="PROTEGE_REVIEW_TOKEN"
        ),
    ] = None,
    overlap: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of records two reviewers see (kappa).")] = 0.0,
    compare: Annotated[
        str | None, typer.Option(help="A,B: two eval runs (RUN or RUN/LABEL) or predictions files, side by side.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random order.")] = 0,
    workspace_: WorkspaceOpt = None,
) -> None:
    """Serve the review page: one record at a time, keyboard first, every action saved at once."""
    from protege.cli_options import workspace
    from protege.log import console
    from protege.review.app import check_host, create_app, page_url, serve_forever
    from protege.review.session import Session, Settings

    check_host(host, token)
    ws = workspace(workspace_)
    settings = Settings(
        dataset=dataset, task=_task(task), predictions=_predictions(ws, dataset, predictions), order=order,
        seed=seed, overlap=overlap, reviewer=reviewer or os.environ.get("USER") or "reviewer", compare=compare,
    )  # fmt: skip
    session = Session(ws.store, settings)
    app = create_app(session, token)
    progress = session.progress()
    if settings.predictions:
        console.print(f"model answers from {settings.predictions}")
    for note in session.notes:
        console.print(f"[yellow]{note}[/]")
    console.print(
        f"[green]review page[/] {page_url(host, port, token)} ({progress['reviewed']} of {progress['total']} "
        f"reviewed; Ctrl-C stops; every action is already saved)",
        highlight=False,
        soft_wrap=True,
    )
    serve_forever(app, host, port)


@review_app.command("stats")
def stats_cmd(
    dataset: Annotated[str, typer.Argument(help="Dataset (name or name@N).")],
    task: TaskOpt = None,
    predictions: PredictionsOpt = None,
    as_json: JsonOpt = False,
    workspace_: WorkspaceOpt = None,
) -> None:
    """Counts per status and reviewer, agreement of people with the teacher, the model and each other."""
    from protege.cli_options import print_json, workspace
    from protege.data.records import get_dataset, load_records
    from protege.review import predictions as P
    from protege.review.checks import answer_check
    from protege.review.compare import preference_summary
    from protege.review.stats import review_stats

    ws = workspace(workspace_)
    info = get_dataset(ws.store, dataset)
    records = load_records(ws.store, f"{info['name']}@{info['version']}")
    check = answer_check(_task(task), records, info["name"])
    preds = P.load(_predictions(ws, dataset, predictions), records)
    out = review_stats(ws.store, info, records, preds, check.kind)
    out["preferences"] = preference_summary(ws.store, info["name"])
    if as_json:
        return print_json(out)
    _print_stats(out)


def _print_stats(s: dict[str, Any]) -> None:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.1%}"

    def agree(a: dict[str, Any]) -> str:
        if not a["n"]:
            return "- (nothing to compare yet)"
        lo, hi = a["agreement_ci"]
        k = "" if a["kappa"] is None else f", kappa {a['kappa']:.2f}"
        return f"{a['agreement']:.1%} (95% CI {lo:.1%}-{hi:.1%}) over {a['n']}{k}"

    typer.echo(f"{s['dataset']}: {s['total']} records, {s['reviewed']} reviewed")
    typer.echo(f"  accepted {s['accepted']}, edited {s['edited']}, rejected {s['rejected']}, pending {s['pending']}")
    for name, c in s["by_reviewer"].items():
        typer.echo(f"  {name}: {c['accepted']} accepted, {c['edited']} edited, {c['rejected']} rejected "
                   f"({c['actions']} actions)")  # fmt: skip
    typer.echo(f"  people vs teacher: {agree(s['human_vs_teacher'])}")
    typer.echo(f"  people vs model:   {agree(s['human_vs_model'])}")
    typer.echo(f"  between reviewers: {agree(s['between_reviewers'])}")
    secs = s["mean_seconds_per_review"]
    typer.echo(f"  edit rate {pct(s['edit_rate'])}; {'-' if secs is None else f'{secs:.1f}'} s per review; "
               f"{s['undone']} undone")  # fmt: skip
    for p in s.get("preferences") or []:
        rate = "-"
        if p["win_rate_a"] is not None:
            lo, hi = p["win_rate_a_ci"]
            rate = f"{p['win_rate_a']:.2f} (95% CI {lo:.2f}-{hi:.2f})"
        typer.echo(f"  {p['model_a']} vs {p['model_b']}: win rate {rate} over {p['n']} verdicts, "
                   f"{p['both_bad']} both bad")  # fmt: skip


@review_app.command("export")
def export_cmd(
    dataset: Annotated[str, typer.Argument(help="Reviewed dataset (name or name@N).")],
    name: Annotated[str, typer.Option("--name", help="Name of the new dataset.", callback=name_option)],
    status: Annotated[str, typer.Option(help="Statuses to keep (comma-separated, or all).")] = "accepted,edited",
    as_json: JsonOpt = False,
    workspace_: WorkspaceOpt = None,
) -> None:
    """Save the approved records as a new dataset version: edits applied, rejected left out, provenance
    pointing back to each review."""
    from protege.cli_options import print_json, workspace
    from protege.data.export import parse_statuses
    from protege.log import console
    from protege.review.export import export_reviewed

    out = export_reviewed(workspace(workspace_).store, dataset, name, parse_statuses(status))
    if as_json:
        return print_json(out)
    left = ", ".join(f"{n} {s}" for s, n in out["left_out"].items()) or "none"
    console.print(f"[green]exported[/] {out['exported']} records -> {out['name']}@{out['version']} (left out: {left})")
