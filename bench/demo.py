"""The demo's promise, measured: `protege demo` in a fresh workspace, then again (caches).

The student must match or beat the teacher's score on the held-out set and answer at least 3x
faster per request; both are ratios against the teacher measured in the same run. The second run
shows what the caches save (teacher calls, the adapter, the eval answers).

    .venv/bin/python bench/demo.py

Writes bench/results/demo.json with a `summary` for the README.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "demo.json"


def run_demo(workspace: Path) -> tuple[dict, float]:
    cmd = [sys.executable, "-m", "protege.cli", "--workspace", str(workspace), "demo", "--json"]
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_BASE_URL", "OPENAI_API_KEY")}  # local teacher
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        sys.exit(f"protege demo failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout), time.perf_counter() - start


def summary_lines(result: dict) -> list[str]:
    models, ratio = result["models"], result["student_vs_teacher"]
    lines = [
        "`protege demo` (support routing, 120 teacher-labelled inputs, 50 held-out gold labels), fresh "
        f"workspace with the model already pulled: {result['first_run_s']:.0f} s; second run (caches): "
        f"{result['second_run_s']:.0f} s.",
        "",
        "| model | accuracy (95% CI) | p50 latency | cost / 1k requests |",
        "|---|---|---|---|",
    ]
    for label, m in models.items():
        lo, hi = m["score_ci"]
        lines.append(f"| {label} | {m['score']:.2f} ({lo:.2f}-{hi:.2f}) | {m['latency_p50_ms']:,.0f} ms | "
                     f"${m['cost_per_1k']:.3f} |")  # fmt: skip
    lines += ["", f"Student vs teacher (baseline): score **{ratio['score_ratio']:.2f}x** (target >= 1), "
              f"speed **{ratio['speedup_p50']:.1f}x** per request (target >= 3x)."]  # fmt: skip
    return lines


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="protege-bench-demo-") as tmp:
        first, first_s = run_demo(Path(tmp) / "ws")
        second, second_s = run_demo(Path(tmp) / "ws")
    result = {
        "models": first["models"],
        "student_vs_teacher": first["student_vs_teacher"],
        "first_run_s": round(first_s, 1),
        "second_run_s": round(second_s, 1),
        "second_run_same_answers": second["models"] == first["models"],
    }
    result["summary"] = summary_lines(result)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(result["summary"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
