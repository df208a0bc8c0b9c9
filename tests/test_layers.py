"""Data flows one way: a stage imports earlier stages and the base, never a later stage or the CLI.
Checked on the source (every import, also those inside functions), so a shortcut cannot creep in."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "protege"
STAGES = ["data", "teachers", "review", "train", "evaluate", "serve"]
# modules above every stage: they run the pipeline (demo*, rounds*) or the command line
ORCHESTRATION = {"cli", "__main__"}
ORCHESTRATION_PREFIXES = ("demo", "rounds")


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n.split(".")[1] for n in names if n.startswith("protege.")}


def _rank(top: str) -> int:
    """-1 for the base, the stage's position for a stage, len(STAGES) for the CLI and orchestration."""
    if top in STAGES:
        return STAGES.index(top)
    return len(STAGES) if top in ORCHESTRATION or top.startswith(ORCHESTRATION_PREFIXES) else -1


def test_no_module_imports_a_later_stage_or_the_cli():
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        own = _rank(parts[0])
        if own == len(STAGES):
            continue  # orchestration may import every stage
        for top in _imported(path):
            if _rank(top) > own:
                wrong.append(f"{path.relative_to(SRC)} imports protege.{top}")
    assert not wrong, "\n".join(wrong)
