"""`protege rounds` and `protege review predict` (registered by protege.cli after the stages): both run a
model, which the review stage never does itself, so they live beside protege.rounds, not in review/."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from protege.cli_options import JsonOpt, WorkspaceOpt
from protege.names import name_option


def register(app: typer.Typer) -> None:
    from protege.review.cli import review_app

    app.command("rounds", rich_help_panel="review")(rounds_cmd)
    review_app.command("predict")(predict_cmd)


def rounds_cmd(
    task: Annotated[Path, typer.Argument(help="Task YAML.")],
    pool: Annotated[str, typer.Option("--pool", help="Dataset the records to review come from.")],
    base: Annotated[str, typer.Option("--base", help="The student's base model (registry name or folder).")],
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Rounds to run.")] = 5,
    per_round: Annotated[int, typer.Option("--per-round", min=1, help="Records reviewed per round (K).")] = 20,
    order: Annotated[str, typer.Option(help="uncertainty | random | disagreement | oldest.")] = "uncertainty",
    eval_data: Annotated[
        str | None, typer.Option("--eval", help="Dataset every model is scored on (needed to keep the better).")
    ] = None,
    eval_limit: Annotated[int | None, typer.Option(min=1, help="Only the first N eval records.")] = None,
    simulate_from: Annotated[
        str | None,
        typer.Option(help="A gold field of the pool answers instead of people (benchmarks, tests): 'simulated'."),
    ] = None,
    train: Annotated[
        Path | None, typer.Option("--train", help="Training config YAML (base, task, data, output set per round).")
    ] = None,
    teacher_fill: Annotated[
        str, typer.Option(help="auto | yes | no: also train on the teacher's labels of unreviewed records.")
    ] = "auto",
    scan: Annotated[
        int | None, typer.Option(min=1, help="Score at most N unreviewed records per round to choose from.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seeds the random order, sampling and training.")] = 0,
    threads: Annotated[
        int | None, typer.Option(min=1, help="CPU threads for the model (1 is faster on cores other jobs share).")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Run name [default: rounds-TASK-POOL-ORDER].", callback=name_option)
    ] = None,
    host: Annotated[str, typer.Option(help="Review page address (people review each round there).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Review page port.")] = 8300,
    token: Annotated[
        str | None, typer.Option(help="Review page token (required off loopback).", envvar="PROTEGE_REVIEW_TOKEN")
    ] = None,
    as_json: JsonOpt = False,
    workspace_: WorkspaceOpt = None,
) -> None:
    """Predict -> review -> retrain rounds: the least certain records go to people first; each round
    trains a LoRA student on everything approved and keeps it only if it beats the model it replaces."""
    from protege.cli_options import print_json, workspace
    from protege.rounds import RoundsSettings, run_rounds

    settings = RoundsSettings(
        task=str(task), pool=pool, base=base, rounds=rounds, per_round=per_round, order=order, eval=eval_data,
        eval_limit=eval_limit, simulate_from=simulate_from, train=str(train) if train else None,
        teacher_fill=teacher_fill, scan=scan, seed=seed, threads=threads, name=name, host=host, port=port, token=token,
    )  # fmt: skip
    result = run_rounds(workspace(workspace_), settings)
    if as_json:
        return print_json(result)
    print_rounds(result)


def print_rounds(result: dict[str, Any]) -> None:
    """The per-round table on stdout."""
    from rich.console import Console
    from rich.table import Table

    def num(x: float | None, digits: int = 3) -> str:
        return "-" if x is None else f"{x:.{digits}f}"

    def ci(x: list[float] | None) -> str:
        return "-" if not x else f"{x[0]:.3f}-{x[1]:.3f}"

    title = f"{result['run']}: {result['order']} order, {result['per_round']} per round"
    if result["simulated"]:
        title += " (SIMULATED review: a gold field answered in place of people)"
    table = Table("round", "labels used", "score", "95% CI", "handed over", "kappa model/human",
                  "teacher/human agreement", "edit rate", "majority", title=title)  # fmt: skip
    for r in result["rounds"]:
        table.add_row(str(r["round"]), str(r["labels_used"]), num(r["score"]), ci(r["score_ci"]), r["kept"],
                      num(r["kappa_model_human"], 2), num(r["agreement_teacher_human"], 2), num(r["edit_rate"], 2),
                      num((r.get("majority") or {}).get("score")))  # fmt: skip
    out = Console(width=200)
    out.print(table)
    start = result.get("start") or {}
    if start.get("why"):
        out.print(start["why"], highlight=False)
    h = result["handed_over"]
    out.print(f"handed over: {h['model']} ({h['path']}), score {num(h['score'])}", highlight=False)


def predict_cmd(
    dataset: Annotated[str, typer.Argument(help="Dataset under review (name or name@N).")],
    task: Annotated[Path, typer.Option("--task", help="Task YAML (prompt and labels).")],
    model: Annotated[str, typer.Option("--model", help="Registry name, folder, adapter folder or training run.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Predictions file [default: the one `review serve` reads].")
    ] = None,
    name: Annotated[str | None, typer.Option(help="The model's name on the page.", callback=name_option)] = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="Longest answer, in tokens (text and JSON tasks).")] = 256,
    as_json: JsonOpt = False,
    workspace_: WorkspaceOpt = None,
) -> None:
    """Write a model's answers to a dataset, with choice scores (labels) or mean token logprob (text):
    what the review page shows beside each record and orders by."""
    from protege.cli_options import print_json, workspace
    from protege.data.records import get_dataset, load_records
    from protege.log import console
    from protege.review import predictions as P
    from protege.rounds_model import load_student, predict
    from protege.tasks import load_task

    ws = workspace(workspace_)
    info = get_dataset(ws.store, dataset)
    records = load_records(ws.store, f"{info['name']}@{info['version']}")
    run = ws.store.get_run(model)
    path = str(ws.resolve(run["output_dir"])) if run and run["kind"] == "train" and run.get("output_dir") else model
    preds = predict(load_student(name or model, path), load_task(task), records, max_tokens=max_tokens)
    written = P.write(out or P.default_path(ws.artifacts, info["name"]), records, preds)
    if as_json:
        return print_json({"path": str(written), "records": len(preds), "model": name or model})
    console.print(f"[green]predictions[/] {len(preds)} -> {written}")
