"""Console output: one rich console on stderr (stdout stays clean for --json), a quiet switch,
and progress bars for long steps."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, quiet=bool(os.environ.get("PROTEGE_QUIET")))
VERBOSE = {"on": False}


def set_verbosity(verbose: bool = False, quiet: bool = False) -> None:
    VERBOSE["on"] = verbose
    console.quiet = quiet


@contextmanager
def status(message: str) -> Iterator[None]:
    """A spinner for a step of unknown length (shown only on a terminal)."""
    if console.is_terminal and not console.quiet:
        with console.status(message):
            yield
    else:
        console.print(f"{message} ...")
        yield


def progress(*extra_columns: TextColumn) -> Progress:
    """A bar with count, rate-friendly extra columns (e.g. cost), elapsed and ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=console.quiet,
    )
