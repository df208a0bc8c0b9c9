"""What every command shares: the --workspace and --json options, the workspace a command works
in, and JSON output. Its own module, importing no stage, because both the top-level CLI
(`protege.cli`, which registers the stages) and each stage's `cli.py` need it: kept in
`protege.cli`, importing a stage's CLI first would find that module half-initialised.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from protege.workspace import Workspace, open_workspace

WorkspaceOpt = Annotated[
    Path | None,
    typer.Option("--workspace", "-w", help="Workspace folder [env: PROTEGE_WORKSPACE; default ./protege-workspace]"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]

# `protege -w DIR COMMAND`: the top-level callback records DIR here for every command to use.
GLOBAL: dict[str, Path | None] = {"workspace": None}


def workspace(path: Path | None = None) -> Workspace:
    """The workspace a command works in: its own --workspace, the global one, or the default."""
    return open_workspace(path or GLOBAL["workspace"])


def print_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")
