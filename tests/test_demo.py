"""`protege demo`, reduced: the whole path (local teacher server, distillation, LoRA training, eval of
teacher/student/base over HTTP, report) on a few records, then again to check the caches are used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli


@pytest.mark.slow
def test_demo_reduced_run_and_caches(tmp_path, tiny_model):
    # the tiny model stands in for the 135M one (teacher and student base): same path, seconds not minutes
    ws = tmp_path / "demo-ws"
    args = ("--workspace", str(ws), "demo", "--inputs", "16", "--heldout", "8", "--max-steps", "2",
            "--model", str(tiny_model), "--json")  # fmt: skip
    first = run_cli(*args, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    out = json.loads(first.stdout)
    assert set(out["models"]) == {"teacher", "student", "base"}
    for m in out["models"].values():
        assert 0.0 <= m["score"] <= 1.0 and m["latency_p50_ms"] > 0 and m["cost_per_1k"] >= 0
    html = Path(out["report"]).read_text()
    assert html.count("data:image/png;base64,") >= 6  # scores, latency, cost, 3 confusion matrices (+ loss)
    assert out["distilled"]["records"] == 16

    second = run_cli(*args, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads(second.stdout)
    assert "reusing the trained student" in second.stderr, second.stderr
    assert second.stderr.count("reusing") >= 4  # the adapter and the answers of all three models
    assert again["models"] == out["models"]
