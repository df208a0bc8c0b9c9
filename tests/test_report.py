"""The HTML report: self-contained, and its plots really render in a browser (headless Chromium)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from protege.evaluate.report import loss_history, write_report
from protege.evaluate.scoring import score, speed_and_cost
from protege.evaluate.specs import ModelSpec
from protege.metrics import majority_baseline, versus_majority
from protege.tasks import Task

LABELS = ["billing", "delivery", "account"]


def _task() -> Task:
    return Task(name="route", input="{{ message }}", output={"kind": "label", "labels": LABELS})


def _fake_eval(ws, tmp_path: Path) -> str:
    """An eval run built by the real scoring code from fixed answers, plus the training run it points at."""
    task = _task()
    gold = ["billing", "delivery", "account", "billing", "account", "delivery"]
    answers = {
        "teacher": ["billing", "delivery", "billing", "billing", "account", "delivery"],
        "student": ["billing", "delivery", "account", "billing", "account", "account"],
    }
    out = tmp_path / "train-out"
    out.mkdir()
    (out / "metrics.json").write_text(json.dumps({"history": [{"step": i, "loss": 2.0 / i} for i in range(1, 9)]}))
    ws.store.start_run("student-run", "train", {}, str(out))
    ws.store.finish_run("student-run", "done", {"final_loss": 0.25})
    models = {}
    for label, preds in answers.items():
        rows = [{"output": p, "latency_ms": 10.0 * (i + 1), "prompt_tokens": 40, "completion_tokens": 2}
                for i, p in enumerate(preds)]  # fmt: skip
        spec = ModelSpec(label, "student-run" if label == "student" else "local")
        models[label] = {**score(task, gold, rows), **speed_and_cost(spec, rows, 0.5), "source": spec.source}
        models[label].pop("per_record")
    majority = majority_baseline(["billing"] * 3 + ["account"], gold, LABELS, "train-set@1")
    for m in models.values():
        m["vs_majority"] = versus_majority(m["score_ci"], majority["score"])
    summary = {"task": "route", "kind": "label", "data": "d@1", "n": 6, "reference": "teacher", "models": models,
               "majority": majority}  # fmt: skip
    ws.store.start_run("eval-x", "eval", {"models": {"teacher": "local", "student": "student-run"}}, str(tmp_path))
    ws.store.finish_run("eval-x", "done", summary)
    return "eval-x"


def test_report_files_are_self_contained(ws, tmp_path):
    paths = write_report(ws, _fake_eval(ws, tmp_path), tmp_path / "r.html")
    html = Path(paths["html"]).read_text()
    # score, latency, cost, two confusion matrices, the loss curve: all inline PNGs, nothing fetched
    assert len(re.findall(r'src="data:image/png;base64,', html)) == 6
    assert "http://" not in html and "https://" not in html
    md = Path(paths["markdown"]).read_text()
    assert "| teacher |" in md and "| student |" in md
    assert "0.8333" in md  # teacher and student both got 5 of 6
    # every label table ends with the majority row: always "billing" is right for 2 of 6
    row = next(line for line in md.splitlines() if line.startswith("| majority"))
    assert row.startswith("| majority (always 'billing') | most frequent label of train-set@1 | 0.3333 |")
    assert "Majority baseline: always answering 'billing'" in md and "Majority baseline" in html
    assert md.count("| above |") == 2  # 5 of 6 right: the interval's low end is above 2 of 6


def test_a_model_at_the_majority_baseline_is_called_out():
    from protege.evaluate.report import baseline_notes, comparison_rows

    majority = {"label": "anger", "source": "emotion-gold@1 (--majority-from)", "score": 0.417,
                "score_ci": [0.36, 0.47], "macro_f1": 0.147}  # fmt: skip
    student = {"score": 0.427, "score_ci": [0.37, 0.483], "vs_majority": "same as majority", "macro_f1": 0.18,
               "latency_p50_ms": 1.0, "latency_p95_ms": 1.0, "prompt_tokens_mean": 1, "cost_per_1k": 0.0}  # fmt: skip
    summary = {"models": {"student": student}, "majority": majority}
    notes = baseline_notes(summary)
    assert notes[0].startswith("Majority baseline: always answering 'anger', the most frequent label of emotion-gold@1")
    assert notes[1] == (
        "student: accuracy 0.427 (0.370-0.483) is indistinguishable from the majority baseline's 0.417: "
        "no evidence it knows more than the label counts."
    )
    assert [r["model"] for r in comparison_rows(summary)] == ["student", "majority (always 'anger')"]


def test_eval_runs_over_the_same_records_compare_in_one_report(ws, tmp_path):
    from protege.errors import UserError

    first = _fake_eval(ws, tmp_path)
    summary = ws.store.get_run(first)["metrics"]
    ws.store.start_run("eval-y", "eval", {"models": {"student": "student-run"}}, None)
    ws.store.finish_run("eval-y", "done", {**summary, "models": {"student": summary["models"]["student"]}})
    paths = write_report(ws, [first, "eval-y"])
    md = Path(paths["markdown"]).read_text()
    assert "| eval-x/teacher |" in md and "| eval-x/student |" in md and "| eval-y/student |" in md
    html = Path(paths["html"]).read_text()
    assert Path(paths["html"]).name == "compare-eval-x-eval-y.html" and "training loss" in html

    ws.store.start_run("eval-z", "eval", {}, None)
    ws.store.finish_run("eval-z", "done", {**summary, "data": "other@1"})
    with pytest.raises(UserError, match="scored different records"):
        write_report(ws, [first, "eval-z"])


def test_loss_history_reads_trainer_state(tmp_path):
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": [{"step": 5, "loss": 1.5}, {"eval": 1}]}))
    assert loss_history(tmp_path) == [(5.0, 1.5)]
    assert loss_history(tmp_path / "missing") == []


def test_unknown_run_is_a_usage_error(ws):
    from protege.errors import UserError

    with pytest.raises(UserError, match="unknown run"):
        write_report(ws, "nope")


def test_report_renders_in_chromium(ws, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("chromium is not installed (make test installs it): cannot check the report renders")
    html = Path(write_report(ws, _fake_eval(ws, tmp_path), tmp_path / "r.html")["html"]).read_text()
    # a probe that records each image's decoded size in the DOM once the page has loaded
    probe = (
        "<script>window.addEventListener('load',()=>{const o=document.createElement('pre');o.id='probe';"
        "o.textContent=JSON.stringify([...document.images].map(i=>[i.naturalWidth,i.naturalHeight]));"
        "document.body.appendChild(o);});</script>"
    )
    page = tmp_path / "probe.html"
    page.write_text(html.replace("</body>", probe + "</body>"))
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    m = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout)
    assert m, f"no probe output from chromium: {proc.stderr[-500:]}"
    sizes = json.loads(m.group(1))
    assert len(sizes) == 6
    assert all(w > 100 and h > 100 for w, h in sizes), sizes
