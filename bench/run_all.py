"""`make bench`: run every benchmark, each in its own process, then refresh the README's generated blocks.

Each bench writes bench/results/<name>.json with a `summary` (Markdown lines) and its raw figures;
ratios are always against a baseline measured in the same run, so a busy machine skews both sides.
The README holds one generated block per bench (`<!-- bench:NAME -->` ... `<!-- /bench:NAME -->`) in
its benchmark section, and the demo's table (`<!-- bench:demo-table -->`, the `readme` lines of
demo.json) under "What `make demo` shows".

A bench that fails (non-zero exit) or skips (exits 0 without rewriting its results) never rewrites
its blocks: they keep their previous figures under a note saying they are stale and why. Benches
not run this time are left as they are.

    .venv/bin/python bench/run_all.py [NAME ...]     # run these (default: all), then refresh
    .venv/bin/python bench/run_all.py --readme-only  # re-render every block from the stored results
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BENCHES = ["serve", "distill", "train", "distill_tweeteval", "export", "demo", "active_learning"]
BLOCKS = {name: (name, "summary") for name in BENCHES} | {"demo-table": ("demo", "readme")}
"""README block -> (the bench that fills it, which key of its results)."""
STALE = "> **stale**"
OK, RENDER = "ok", "render"
"""Statuses that render a block from its results; any other status is why the block is stale."""


def markers(block: str) -> tuple[str, str]:
    return f"<!-- bench:{block} -->", f"<!-- /bench:{block} -->"


# ---- running ---------------------------------------------------------------------------------------
def run(names: list[str], benches: Path = ROOT / "bench", results: Path = RESULTS) -> dict[str, str]:
    """bench -> "ok", or why its results are not fresh ("failed with exit code N", "skipped ...")."""
    status = {}
    for name in names:
        print(f"== bench/{name}.py", flush=True)
        before = _stamp(results / f"{name}.json")
        rc = subprocess.call([sys.executable, str(benches / f"{name}.py")], cwd=ROOT)
        if rc != 0:
            status[name] = f"failed with exit code {rc}"
        elif _stamp(results / f"{name}.json") == before:
            status[name] = "skipped (exit 0 without rewriting its results)"
        else:
            status[name] = OK
        if status[name] != OK:
            print(f"bench/{name}.py {status[name]}", file=sys.stderr)
    return status


def _stamp(path: Path) -> tuple[int, int] | None:
    return (path.stat().st_mtime_ns, path.stat().st_size) if path.exists() else None


# ---- rendering -------------------------------------------------------------------------------------
def render(block: str, results: Path = RESULTS) -> str:
    """A block's Markdown from its bench's stored results."""
    bench, key = BLOCKS[block]
    path = results / f"{bench}.json"
    if not path.exists():
        return f"**{bench}**: not run yet (`python bench/{bench}.py`)."
    data = json.loads(path.read_text())
    lines = data.get(key)
    if key != "summary":
        return "\n".join(lines) if lines else f"`bench/results/{bench}.json` has no `{key}`: rerun bench/{bench}.py."
    lines = lines if isinstance(lines, list) else [lines or json.dumps(data)[:400]]
    return f"**{bench}** (`bench/results/{bench}.json`)\n\n" + "\n".join(lines)


def stale_note(bench: str, why: str, day: str) -> str:
    return (
        f"{STALE}: `bench/{bench}.py` {why} on {day}; the figures below are from its last successful run, "
        "not rewritten."
    )


def refresh(text: str, status: dict[str, str], day: str, results: Path = RESULTS) -> str:
    """`text` (the README) with each block whose bench has a status re-rendered (ok / render) or marked
    stale (any other status); a missing block is reported, never invented."""
    for block, (bench, _) in BLOCKS.items():
        if bench not in status:
            continue
        start, end = markers(block)
        if start not in text or end not in text:
            print(f"README has no {start} block: bench/{bench}.py's figures are not shown", file=sys.stderr)
            continue
        head, rest = text.split(start, 1)
        old, tail = rest.split(end, 1)
        old_note = [line for line in old.strip().splitlines() if line.startswith(STALE)]
        figures = "\n".join(line for line in old.strip().splitlines() if not line.startswith(STALE)).strip()
        if status[bench] == OK:
            body = render(block, results)
        elif status[bench] == RENDER:  # re-rendered from the same stored results: still as stale as before
            body = "\n\n".join([*old_note, render(block, results)])
        else:
            body = stale_note(bench, status[bench], day) + "\n\n" + figures
        text = f"{head}{start}\n{body}\n{end}{tail}"
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help=f"Benches to run (default: all of {', '.join(BENCHES)}).")
    ap.add_argument("--readme-only", action="store_true", help="Run nothing; re-render the README's blocks.")
    args = ap.parse_args()
    if unknown := [n for n in args.names if n not in BENCHES]:
        ap.error(f"unknown bench {', '.join(unknown)} (known: {', '.join(BENCHES)})")
    status = {name: RENDER for name in BENCHES} if args.readme_only else run(args.names or BENCHES)
    readme = ROOT / "README.md"
    readme.write_text(refresh(readme.read_text(), status, time.strftime("%Y-%m-%d")))
    return 1 if any(s not in (OK, RENDER) for s in status.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
