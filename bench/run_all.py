"""`make bench`: run every benchmark, each in its own process, then refresh the README's summary.

Each bench writes bench/results/<name>.json with a `summary` (Markdown lines) and its raw figures;
ratios are always against a baseline measured in the same run, so a busy machine skews both sides.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHES = ["serve", "distill", "train", "distill_tweeteval", "demo"]
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def run(names: list[str]) -> int:
    failed = 0
    for name in names:
        print(f"== bench/{name}.py", flush=True)
        rc = subprocess.call([sys.executable, str(ROOT / "bench" / f"{name}.py")], cwd=ROOT)
        if rc != 0:
            print(f"bench/{name}.py failed with exit code {rc}", file=sys.stderr)
            failed += 1
    return failed


def summary_markdown() -> str:
    parts = []
    for name in BENCHES:
        path = ROOT / "bench" / "results" / f"{name}.json"
        if not path.exists():
            parts.append(f"**{name}**: not run yet (`python bench/{name}.py`).")
            continue
        data = json.loads(path.read_text())
        summary = data.get("summary")
        lines = summary if isinstance(summary, list) else [summary or json.dumps(data)[:400]]
        parts.append(f"**{name}** (`bench/results/{name}.json`)\n\n" + "\n".join(lines))
    return "\n\n".join(parts)


def refresh_readme() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        return
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{summary_markdown()}\n{END}{tail}")


if __name__ == "__main__":
    names = sys.argv[1:] or BENCHES
    failures = run(names)
    refresh_readme()
    sys.exit(1 if failures else 0)
