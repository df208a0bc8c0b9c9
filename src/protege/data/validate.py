"""Check a data file before importing it: every problem, each as `file:line: field: what is wrong`.

Validation runs the very conversion `import` runs, so a file that validates imports, and one that
does not is refused as a whole (or imported without its bad rows with --skip-invalid).
"""

from __future__ import annotations

from pathlib import Path

from protege.data.importers import Converted, Problem, convert_source
from protege.tasks import Task


def validate_file(
    source: str | Path,
    fmt: str | None = None,
    mapping: dict[str, str] | None = None,
    task: Task | None = None,
) -> Converted:
    """Convert every row of `source`; the result lists valid records and every problem found."""
    return convert_source(source, fmt, mapping, task)


def summarise(result: Converted) -> dict[str, object]:
    """What `protege data validate --json` prints."""
    return {
        "file": result.source,
        "format": result.format,
        "rows": result.n_rows,
        "valid": len(result.records),
        "problems": [p.to_dict() for p in result.problems],
    }


def format_problems(problems: list[Problem]) -> list[str]:
    return [str(p) for p in problems]
