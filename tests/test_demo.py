"""`protege demo`, reduced: the whole path (local teacher server, distillation, LoRA training, eval of
teacher/student/base over HTTP with the majority baseline, report) on a few records, then again to
check the caches are used."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from conftest import run_cli


@pytest.mark.slow
def test_demo_reduced_run_and_caches(tmp_path, tiny_model):
    from protege.data.records import load_records
    from protege.demo_data import LABELS, heldout_rows
    from protege.evaluate.answers import load_predictions
    from protege.workspace import open_workspace

    # the tiny model stands in for the 135M one (teacher and student base): same path, seconds not minutes
    ws = tmp_path / "demo-ws"
    args = ("--workspace", str(ws), "demo", "--inputs", "16", "--heldout", "8", "--max-steps", "2",
            "--model", str(tiny_model), "--json")  # fmt: skip
    first = run_cli(*args, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    out = json.loads(first.stdout)
    assert set(out["models"]) == {"teacher", "student", "base"}
    store = open_workspace(ws).store
    run = store.get_run(out["run"])
    gold = [r["label"] for r in heldout_rows(8)]
    for label, m in out["models"].items():
        # each figure is that of the answers the eval stored, scored against the generated gold teams
        preds = load_predictions(run, label)
        assert [p["reference"] for p in preds] == gold and all(p["prediction"] in LABELS for p in preds)
        assert m["score"] == sum(p["prediction"] == g for p, g in zip(preds, gold, strict=True)) / 8
        assert m["score_ci"][0] <= m["score"] <= m["score_ci"][1]
        assert m["latency_p50_ms"] > 0 and m["cost_per_1k"] > 0 and m["prompt_tokens_mean"] > 0
        assert m["vs_majority"] in ("above", "same as majority", "below")
    # the teacher gets instructions and few-shot examples, the student the bare message
    assert out["models"]["teacher"]["prompt_tokens_mean"] > 3 * out["models"]["student"]["prompt_tokens_mean"]
    # the teacher labelled every input with one of the task's labels (constrained choice)
    teacher_labels = [r.label for r in load_records(store, "demo-distilled")]
    assert out["distilled"]["records"] == 16 and len(teacher_labels) == 16 and set(teacher_labels) <= set(LABELS)
    # the baseline: the most frequent teacher label (the student's training data), scored on the gold teams
    counts = Counter(teacher_labels)
    expected = max(LABELS, key=lambda lab: (counts[lab], -LABELS.index(lab)))
    majority = out["majority"]
    assert majority["label"] == expected and majority["score"] == gold.count(expected) / 8
    assert majority["source"] == "demo-distilled@1, training data of demo-student"
    assert store.get_run("demo-student")["metrics"]["steps"] == 2  # --max-steps reached the trainer
    html = Path(out["report"]).read_text()
    assert html.count("data:image/png;base64,") >= 6  # scores, latency, cost, 3 confusion matrices (+ loss)
    assert "Majority baseline: always answering" in html

    second = run_cli(*args, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads(second.stdout)
    assert "reusing the trained student" in second.stderr, second.stderr
    assert second.stderr.count("reusing") >= 4  # the adapter and the answers of all three models
    assert again["models"] == out["models"] and again["majority"] == majority
