"""`protege` commands of the train stage (registered by protege.cli)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from protege.cli_options import JsonOpt, WorkspaceOpt


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the top-level app (panel: train)."""
    app.command("train", rich_help_panel="train", epilog=config_keys_help())(train_cmd)


def config_keys_help() -> str:
    """Every config key with its type, default and docstring, for `protege train --help` (litgpt's
    pattern): the docstrings in train/config.py are the one source of this text."""
    from protege.config import field_docs
    from protege.train.config import TrainConfig

    lines = ["[bold]Config keys[/] (in CONFIG.yaml, or --set KEY=VALUE; --schema prints the JSON Schema):"]
    for row in field_docs(TrainConfig):
        lines.append(f"[bold cyan]{row['key']}[/] [dim]{escape(row['type'])} = {escape(row['default'])}[/]")
        doc = textwrap.wrap(row["doc"], 80, initial_indent=" " * 4, subsequent_indent=" " * 4)
        lines += [escape(line) for line in doc]
    return "\n".join(lines)


def _print_schema(value: bool) -> None:
    if value:
        from protege.cli_options import print_json
        from protege.train.config import TrainConfig

        print_json(TrainConfig.model_json_schema())
        raise typer.Exit()


def train_cmd(
    config: Annotated[Path, typer.Argument(help="train.yaml (see examples/train/ and the keys below).")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key: --set lr=1e-4 --set lora.r=8.")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint in output/.")] = False,
    workspace_: WorkspaceOpt = None,
    as_json: JsonOpt = False,
    schema: Annotated[
        bool,
        typer.Option(
            "--schema", callback=_print_schema, is_eager=True, help="Print the config's JSON Schema and exit."
        ),
    ] = False,
) -> None:
    """Fine-tune a model (full, lora, qlora or kd); also runs under `accelerate launch`."""
    from protege.cli_options import print_json, workspace
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
