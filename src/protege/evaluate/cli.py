"""`protege` commands of the evaluate stage (registered by protege.cli)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the top-level app (panel: evaluate)."""
