"""The benchmark harness: README figures come from stored results, a failed or skipped bench never
rewrites them (they are kept and marked stale), and the demo's figures are medians of its runs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


run_all = _load("run_all")
demo = _load("demo")

README = """# x

<!-- bench:demo-table -->
old demo table 4.3x
<!-- /bench:demo-table -->

<!-- bench:serve -->
**serve** old serve figures
<!-- /bench:serve -->

<!-- bench:distill -->
**distill** old distill figures
<!-- /bench:distill -->

<!-- bench:demo -->
**demo** old demo summary
<!-- /bench:demo -->
"""


def _results(tmp_path: Path) -> Path:
    results = tmp_path / "results"
    results.mkdir()
    (results / "serve.json").write_text(json.dumps({"summary": ["new serve figures"]}))
    (results / "distill.json").write_text(json.dumps({"summary": ["new distill figures"]}))
    (results / "demo.json").write_text(json.dumps({"summary": ["new demo summary"], "readme": ["new table"]}))
    return results


def test_failed_or_skipped_bench_keeps_its_figures_marked_stale(tmp_path):
    results = _results(tmp_path)
    status = {"serve": "ok", "distill": "failed with exit code 1", "demo": "skipped (exit 0 without rewriting)"}
    text = run_all.refresh(README, status, "2026-01-02", results)
    assert "**serve** (`bench/results/serve.json`)\n\nnew serve figures" in text and "old serve" not in text
    # the failed and the skipped bench: previous figures, a note saying why, nothing from their results
    for bench, block in (("distill", "**distill** old distill figures"), ("demo", "old demo table 4.3x")):
        assert block in text
        assert f"> **stale**: `bench/{bench}.py` {status[bench]} on 2026-01-02;" in text
    assert "new distill figures" not in text and "new table" not in text and "new demo summary" not in text
    # failing again replaces the note instead of stacking a second one; a later success clears it
    again = run_all.refresh(text, {"distill": "failed with exit code 2"}, "2026-01-03", results)
    assert again.count("> **stale**: `bench/distill.py`") == 1 and "exit code 2 on 2026-01-03" in again
    fixed = run_all.refresh(again, {"distill": "ok"}, "2026-01-04", results)
    assert "new distill figures" in fixed and "bench/distill.py` failed" not in fixed
    # re-rendering the stored results (--readme-only) keeps a stale block's note: they are still old
    rendered = run_all.refresh(again, {"distill": run_all.RENDER, "demo": run_all.RENDER}, "2026-01-05", results)
    assert "> **stale**: `bench/distill.py` failed with exit code 2" in rendered and "new distill figures" in rendered
    assert "new table" in rendered and "\n\nnew demo summary" in rendered


def test_run_tells_ok_failed_and_skipped_apart(tmp_path):
    benches, results = tmp_path / "bench", tmp_path / "results"
    benches.mkdir()
    results.mkdir()
    (results / "skips.json").write_text("{}")
    out = results.as_posix()
    (benches / "works.py").write_text(f"open('{out}/works.json', 'w').write('{{}}')\n")
    (benches / "breaks.py").write_text(f"open('{out}/breaks.json', 'w').write('{{}}')\nraise SystemExit(3)\n")
    (benches / "skips.py").write_text("print('skipped: data absent')\n")
    status = run_all.run(["works", "breaks", "skips"], benches, results)
    assert status == {"works": "ok", "breaks": "failed with exit code 3",
                      "skips": "skipped (exit 0 without rewriting its results)"}  # fmt: skip


def _run(speedup: float, latency: float, score: float = 0.56) -> dict:
    def model(p50: float) -> dict:
        return {"score": score, "score_ci": [score - 0.1, score + 0.1], "macro_f1": 0.45, "latency_p50_ms": p50,
                "latency_p95_ms": p50 * 1.1, "prompt_tokens_mean": 33.0, "cost_per_1k": 0.04,
                "vs_majority": "above"}  # fmt: skip

    majority = {"label": "payment", "score": 0.26, "score_ci": [0.14, 0.38], "macro_f1": 0.1}
    return {"models": {"teacher": model(latency * speedup), "student": model(latency)}, "majority": majority,
            "student_vs_teacher": {"score_ratio": 1.0, "speedup_p50": speedup}, "seconds": 300 + speedup}  # fmt: skip


def test_demo_bench_reports_the_median_run_not_the_best():
    host = {"device": "cpu", "cpu": "x", "cores": 2, "threads": 2, "cpu_bf16": False}
    result = demo.finish({"host": host, "cached_run_s": 15.0,
                          "runs": [_run(4.3, 280), _run(3.5, 362), _run(3.9, 300)]})  # fmt: skip
    med = result["median"]
    assert med["student_vs_teacher"]["speedup_p50"] == {"median": 3.9, "range": [3.5, 4.3]}
    assert med["models"]["student"]["latency_p50_ms"] == {"median": 300, "range": [280, 362]}
    table = "\n".join(result["readme"])
    assert "Median of 3 fresh runs" in table and "x without AVX512-BF16/AMX (2 cores, 2 threads)" in table
    assert "speed **3.9x (3.5-4.3x)** per request" in table and "4.3x**" not in table
    assert "| student (LoRA) | 0.56 (0.46-0.66) | 0.45 | above | 33 | 300 ms (280-362 ms) | $0.040 |" in table
    assert "| majority: always 'payment' (the most frequent teacher label) | 0.26 (0.14-0.38) | 0.10 |" in table
    assert "3.9x (3.5-4.3x)" in result["summary"][0]


@pytest.mark.parametrize("name", ["demo", "distill_tweeteval", "export"])
def test_stored_summaries_are_what_the_bench_code_writes(name):
    """The committed results' README lines are regenerated from their figures (no hand edits)."""
    stored = json.loads((BENCH / "results" / f"{name}.json").read_text())
    module = demo if name == "demo" else _load(name)
    if name == "demo":
        assert module.finish(dict(stored))["readme"] == stored["readme"]
    else:
        assert module.summary_lines(stored) == stored["summary"]


def test_readme_figures_are_the_stored_results():
    """Every generated README block is exactly what its stored results render to (a stale note aside):
    figures typed into the README, or results stored without `bench/run_all.py --readme-only`, fail here."""
    text = (BENCH.parent / "README.md").read_text()
    for block in run_all.BLOCKS:
        start, end = run_all.markers(block)
        assert start in text and end in text, f"README.md lacks the {start} block"
        body = text.split(start, 1)[1].split(end, 1)[0].strip().splitlines()
        figures = "\n".join(line for line in body if not line.startswith(run_all.STALE)).strip()
        assert figures == run_all.render(block), f"README block {block} differs from bench/results: rerun run_all"
