"""`protege demo` (registered by protege.cli beside the stages' commands): the demo runs every stage,
so its command belongs to none of them."""

from __future__ import annotations

from typing import Annotated

import typer

from protege.cli_options import JsonOpt, WorkspaceOpt


def register(app: typer.Typer) -> None:
    app.command("demo", rich_help_panel="demo")(demo_cmd)


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
    from protege.evaluate.cli import print_table

    settings = DemoSettings(n_inputs=inputs, n_heldout=heldout, max_steps=max_steps, model=model)
    result = run_demo(workspace(workspace_), settings)
    if as_json:
        return print_json({k: v for k, v in result.items() if k != "summary"})
    print_table(result["summary"])
    typer.echo(f"report: {result['report']}")
