"""`protege` commands of the train stage (registered by protege.cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from protege.cli import JsonOpt, WorkspaceOpt


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the top-level app (panel: train)."""
    app.command("train", rich_help_panel="train")(train_cmd)


def train_cmd(
    config: Annotated[Path, typer.Argument(help="train.yaml (see examples/train/).")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key: --set lr=1e-4 --set lora.r=8.")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint in output/.")] = False,
    workspace_: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fine-tune a model (full, lora, qlora or kd); also runs under `accelerate launch`."""
    from protege.cli import print_json, workspace
    from protege.config import parse_set_options
    from protege.train.config import load_train_config
    from protege.train.run import train

    cfg = load_train_config(config, parse_set_options(set_))
    ws = workspace(workspace_)
    metrics = train(cfg, ws, resume=resume)
    if as_json:
        from protege.train.run import is_main_process

        if is_main_process():
            print_json({"run": cfg.run_name, "output": str(ws.resolve(cfg.output)), **metrics})
