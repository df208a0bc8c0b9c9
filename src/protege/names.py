"""The one rule for names that become paths or path parts: datasets, runs, eval runs, adapters.

A name is used as a folder or file name inside the workspace (`artifacts/evals/NAME`, adapter
folders, ...), so a name that could walk out of its folder (`..`, `/`, `\\`), hide itself (a
leading dot) or corrupt a terminal or a log (control characters) is refused before anything is
written. Every stage and every CLI option calls `check_name`, so they cannot disagree.
"""

from __future__ import annotations

import unicodedata

from protege.errors import UserError

MAX_LENGTH = 200
"""Well under the 255 bytes most file systems allow for one path component."""


class InvalidName(UserError, ValueError):
    """A usage error (exit 2); also a ValueError, so pydantic validators report it per field."""


def name_problem(name: object) -> str | None:
    """Why `name` cannot be used, or None when it can."""
    if not isinstance(name, str) or not name.strip():
        return "it is empty"
    if "/" in name or "\\" in name:
        return "it contains a path separator ('/' or '\\')"
    if name.startswith("."):
        return "it starts with a dot ('.', '..' and hidden names are not allowed)"
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        return "it contains a control character"
    if name != name.strip():
        return "it starts or ends with a space"
    if len(name.encode("utf-8")) > MAX_LENGTH:
        return f"it is longer than {MAX_LENGTH} bytes"
    return None


def check_name(name: str, what: str = "name") -> str:
    """`name` unchanged when it is safe as one path component, else InvalidName saying why."""
    problem = name_problem(name)
    if problem:
        raise InvalidName(f"{what} {name!r} is not allowed: {problem} (it becomes a file or folder name)")
    return name


def name_option(value: str | None) -> str | None:
    """Typer callback for `--name` options: a bad name stops the command at once (exit 2),
    before any work (a distillation, a training run) is spent on a result that cannot be saved."""
    return None if value is None else check_name(value, "--name")
