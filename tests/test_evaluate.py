"""Evaluation: metric functions against hand-computed values, and real eval runs over HTTP against
`protege serve` (tiny model) for a label task and a text task."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest

from conftest import run_cli
from protege.data.records import Record, save_dataset
from protege.errors import UserError
from protege.evaluate import metrics as M
from protege.evaluate.judge import outcome, parse_verdict, win_rate
from protege.evaluate.runner import load_predictions, parse_models, run_eval
from protege.tasks import Task

# ---- metrics ---------------------------------------------------------------------------------------
GOLD = ["a", "b", "a", "c"]
PRED = ["a", "b", "b", "c"]


def test_accuracy_per_class_macro_f1():
    assert M.accuracy(GOLD, PRED) == 0.75
    pc = M.per_class(GOLD, PRED, ["a", "b", "c"])
    # a: 1 of 1 predicted right, 1 of 2 found; b: 1 of 2 predicted right, 1 of 1 found; c: perfect
    assert pc["a"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert pc["b"]["precision"] == 0.5 and pc["b"]["recall"] == 1.0
    assert M.macro_f1(GOLD, PRED, ["a", "b", "c"]) == pytest.approx(7 / 9)
    with pytest.raises(ValueError, match="length mismatch"):
        M.accuracy(GOLD, PRED[:2])


def test_confusion_matrix_with_invalid_answers():
    cm = M.confusion_matrix(GOLD, ["a", None, "b", "c"], ["a", "b", "c"])
    assert cm["cols"] == ["a", "b", "c", M.INVALID]
    assert cm["matrix"] == [[1, 1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]]
    assert M.confusion_matrix(GOLD, PRED, ["a", "b", "c"])["cols"] == ["a", "b", "c"]


def test_rouge_l_and_exact_match():
    # LCS of 5 tokens: precision 5/5, recall 5/6 -> F1 10/11
    assert M.rouge_l("the cat sat on the mat", "the cat on the mat") == pytest.approx(10 / 11)
    assert M.rouge_l("abc", "") == 0.0
    assert M.rouge_l("Same words here", "same WORDS here!") == 1.0
    assert M.exact_match("Hello, World!", "hello   world") == 1.0
    assert M.exact_match("hello world", "hello") == 0.0


def test_json_scores():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a"]}
    out = M.json_scores([{"a": 1, "b": 2}, {"a": 3, "b": 4}, {"a": 5, "b": 6}],
                        ['{"a": 1, "b": 5}', "not json", '```json\n{"a": "x"}\n```'], schema)  # fmt: skip
    assert out["json_valid_rate"] == pytest.approx(2 / 3)
    assert out["schema_valid_rate"] == pytest.approx(1 / 3)
    assert out["field_accuracy"] == {"a": pytest.approx(1 / 3), "b": 0.0}
    assert out["per_record"] == [0.5, 0.0, 0.0]


def test_bootstrap_intervals():
    assert M.mean_ci([1.0] * 20) == (1.0, 1.0)
    lo, hi = M.mean_ci([0.0, 1.0] * 50)
    assert 0.35 < lo < 0.5 < hi < 0.65
    assert M.mean_ci([0.0, 1.0] * 50) == (lo, hi)  # seeded: the same data gives the same interval
    lo, hi = M.macro_f1_ci(GOLD * 10, PRED * 10, ["a", "b", "c"])
    assert lo <= 7 / 9 <= hi


def test_latency_and_cost():
    s = M.latency_summary([10, 20, 30, 40])
    assert s["latency_p50_ms"] == 25 and s["latency_p95_ms"] == pytest.approx(38.5)
    # mean 200 prompt tokens at $2.5/1M + mean 20 completion tokens at $10/1M = $0.0007 a request
    assert M.api_cost_per_1k([100, 300], [10, 30], 2.5, 10.0) == pytest.approx(0.7)
    # 3.6 s a request at $0.50/hour = $0.0005 a request
    assert M.local_cost_per_1k(36.0, 10, 0.5) == pytest.approx(0.5)
    assert M.local_cost_per_1k(0.0, 0, 0.5) == 0.0


def test_judge_verdicts_both_orders():
    assert [parse_verdict(t) for t in ["A", "b.", "Tie", "Answer B is better", "??"]] == ["A", "B", "tie", "B", "tie"]
    # the model is A in the first order and B in the second: it wins only if preferred both times
    assert outcome("A", "B") == "win" and outcome("B", "A") == "loss" and outcome("A", "A") == "tie"
    wr = win_rate(["win", "win", "tie", "loss"])
    assert wr["win_rate"] == pytest.approx(2.5 / 4) and (wr["wins"], wr["losses"], wr["ties"]) == (2, 1, 1)


def test_parse_models():
    assert parse_models("teacher=local, student=runs/x") == {"teacher": "local", "student": "runs/x"}
    for bad in ["nolabel", "a=x,a=y", ""]:
        with pytest.raises(UserError):
            parse_models(bad)


# ---- eval runs over HTTP ----------------------------------------------------------------------------
LABELS = ["billing", "delivery"]


def _label_data(ws, task: Task, n: int = 6) -> str:
    rows = [(f"message number {i} about a {'refund' if i % 2 else 'parcel'}", LABELS[i % 2]) for i in range(n)]
    records = [
        Record(messages=task.student_messages({"message": m}) + [{"role": "assistant", "content": lab}], label=lab,
               metadata={"input": {"message": m}}, split="test")
        for m, lab in rows
    ]  # fmt: skip
    save_dataset(ws.store, "route-test", records)
    return "route-test"


@pytest.mark.slow  # over 10 s
def test_label_eval_over_http(ws, tiny_model):
    from protege.config import TeacherConfig
    from protege.serve.launch import ServerProcess

    task = Task(name="route", instructions="Route the message.", input="{{ message }}",
                output={"kind": "label", "labels": LABELS},
                examples=[{"input": {"message": "refund please"}, "output": "billing"}])  # fmt: skip
    data = _label_data(ws, task)
    with ServerProcess(tiny_model) as srv:
        ws.config.teachers["t"] = TeacherConfig(base_url=srv.base_url, model=str(tiny_model), constrained_choices=True)
        summary = run_eval(ws, task, data, {"teacher": "t", "local": str(tiny_model)}, name="ev1")
    teacher, local = summary["models"]["teacher"], summary["models"]["local"]
    assert summary["n"] == 6 and summary["reference"] == "teacher"
    for res in (teacher, local):
        assert 0.0 <= res["score"] <= 1.0 and res["score_ci"][0] <= res["score"] <= res["score_ci"][1]
        assert res["errors"] == 0 and res["latency_p95_ms"] >= res["latency_p50_ms"] > 0
        assert res["cost_per_1k"] > 0  # both local: priced by measured compute time
        assert sum(map(sum, res["confusion"]["matrix"])) == 6
    # the teacher prompt (instructions + a few-shot turn) is longer than the student prompt
    assert teacher["prompt_tokens_mean"] > local["prompt_tokens_mean"]
    run = ws.store.get_run("ev1")
    assert (
        run["kind"] == "eval"
        and run["status"] == "done"
        and run["metrics"]["models"]["local"]["score"] == local["score"]
    )
    preds = load_predictions(run, "local")
    assert len(preds) == 6 and all(p["prediction"] in LABELS for p in preds)  # constrained choice: always a label
    assert all(set(p["choice_scores"]) == set(LABELS) for p in preds)

    # a second run with the same model, prompts and settings reuses the stored answers
    again = run_eval(ws, task, data, {"local": str(tiny_model)}, name="ev2")
    assert again["models"]["local"]["cached_from"] == "ev1"
    assert again["models"]["local"]["score"] == local["score"]


@pytest.mark.slow  # over 10 s
def test_text_eval_with_judge_and_cli(ws, tiny_model, tmp_path):
    """`protege eval` as a user runs it: a teacher from protege.yaml (also the judge) and a local model."""
    from protege.serve.launch import ServerProcess

    task_file = tmp_path / "echo.yaml"
    task_file.write_text("name: echo\ninput: '{{ text }}'\noutput: {kind: text}\n")
    records = [Record(messages=[{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": w}],
                      metadata={"input": {"text": f"say {w}"}}) for w in ["hello", "thanks", "bye"]]  # fmt: skip
    save_dataset(ws.store, "echo-test", records)
    ws.store.close()
    with ServerProcess(tiny_model) as srv:
        (ws.root / "protege.yaml").write_text(
            f"teachers:\n  j:\n    base_url: {srv.base_url}\n    model: {tiny_model}\n    max_tokens: 6\n"
            "    constrained_choices: true\n    price: {input_per_1m: 1.0, output_per_1m: 2.0}\n"
        )
        models = f"ref=j,tiny={tiny_model}"
        proc = run_cli("--workspace", str(ws.root), "eval", str(task_file), "--data", "echo-test", "--models", models,
                       "--limit", "2", "--judge", "j", "--json", "--name", "ev-text")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    res, ref = out["models"]["tiny"], out["models"]["ref"]
    assert out["n"] == 2 and out["reference"] == "ref"
    assert res["score_name"] == "rouge_l" and 0.0 <= res["score"] <= 1.0 and 0.0 <= res["exact_match"] <= 1.0
    assert res["completion_tokens_mean"] > 0 and not math.isnan(res["latency_p50_ms"])
    # the remote-priced teacher costs its token price; the local model its compute time
    assert "API price" in ref["cost_basis"] and "compute time" in res["cost_basis"]
    judged = res["judge"]
    assert judged["versus"] == "ref" and judged["wins"] + judged["losses"] + judged["ties"] == 2
    assert 0.0 <= judged["win_rate"] <= 1.0
    calls = sqlite3.connect(ws.root / "protege.db").execute("SELECT COUNT(*) FROM calls WHERE kind='judge'")
    assert calls.fetchone()[0] == 4  # two records, both orders
    proc = run_cli("--workspace", str(ws.root), "report", "ev-text", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "<img" in Path(json.loads(proc.stdout)["html"]).read_text()
    bad = run_cli("--workspace", str(ws.root), "eval", str(task_file), "--data", "echo-test", "--models", "x=nope")
    assert bad.returncode == 2 and "unknown model" in bad.stderr


def test_demo_task_and_data_are_shipped_and_deterministic(tmp_path):
    from protege.demo import task_path
    from protege.evaluate.demo_data import LABELS as DEMO_LABELS
    from protege.evaluate.demo_data import write_demo_data
    from protege.tasks import load_task

    root = Path(__file__).resolve().parents[1]
    assert (root / "examples" / "tasks" / "support.yaml").read_text() == task_path().read_text()
    task = load_task(task_path())
    assert task.labels == DEMO_LABELS and all(ex.output in DEMO_LABELS for ex in task.examples)
    a, b = write_demo_data(tmp_path / "a", 40, 20), write_demo_data(tmp_path / "b", 40, 20)
    assert a["heldout"].read_text() == b["heldout"].read_text()
    gold = [json.loads(line)["label"] for line in a["heldout"].read_text().splitlines()]
    assert sorted(set(gold)) == sorted(DEMO_LABELS) and gold.count(DEMO_LABELS[0]) == 5
    inputs = {json.loads(line)["message"] for line in a["inputs"].read_text().splitlines()}
    assert all("label" not in line for line in a["inputs"].read_text().splitlines()) and len(inputs) > 30
    load_task(root / "examples" / "tasks" / "emotion.yaml")
