"""Evaluation: metric functions against hand-computed values, and real eval runs over HTTP against
`protege serve` (tiny model) for a label task and a text task, and against a fake OpenAI-shaped
judge that answers garbage."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest

from conftest import run_cli
from fake_openai import FakeOpenAI, last_user
from protege.data.records import Record, save_dataset
from protege.errors import DataError, UserError
from protege.evaluate import metrics as M
from protege.evaluate.answers import load_predictions
from protege.evaluate.judge import INVALID, outcome, parse_verdict, win_rate
from protege.evaluate.runner import run_eval
from protege.evaluate.specs import ModelSpec, parse_models
from protege.tasks import Task, load_task
from protege.workspace import open_workspace

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


def test_macro_f1_is_one_rule_over_all_task_labels():
    """Training's eval_macro_f1 and `protege eval` agree, also when a label is absent from the eval
    records (it counts 0 for every model) and when an answer names no label."""
    from sklearn.metrics import f1_score

    from protege.train.classify import label_metrics

    labels = ["a", "b", "c", "d"]  # "d" occurs in neither gold nor predictions
    pred = ["a", None, "b", "c"]
    # a: P 1 R 1/2 -> 2/3; b: P 0 -> 0; c: 1; d: 0 -> (2/3 + 0 + 1 + 0) / 4
    assert M.macro_f1(GOLD, pred, labels) == pytest.approx((2 / 3 + 1) / 4)
    # scikit-learn's default label set (those that occur) would give 7/9 here; the task's set gives 7/12
    assert f1_score(GOLD, PRED, average="macro") == pytest.approx(7 / 9)
    trained = label_metrics([*GOLD, None], [*PRED, "a"], labels)  # a record without gold is left out
    assert trained == {"accuracy": 0.75, "macro_f1": pytest.approx(M.macro_f1(GOLD, PRED, labels))}
    assert trained["macro_f1"] == pytest.approx(7 / 12)  # not 7/9: "d" is one of the task's labels


def test_macro_f1_bootstrap_statistic_equals_macro_f1_on_each_resample():
    import numpy as np

    from protege.metrics import macro_f1_resampled

    gold = ["a", "b", "c", "a", "b", "a", "c", "c"]
    pred = ["a", "b", "b", None, "b", "c", "c", "zzz"]
    labels = ["a", "b", "c", "d"]
    idx = np.random.default_rng(3).integers(0, len(gold), (6, len(gold)))
    got = macro_f1_resampled(gold, pred, labels)(idx)
    want = [M.macro_f1([gold[i] for i in row], [pred[i] for i in row], labels) for row in idx]
    assert got.tolist() == pytest.approx(want)
    lo, hi = M.macro_f1_ci(gold, pred, labels)
    assert lo < M.macro_f1(gold, pred, labels) < hi


def test_majority_baseline():
    train = ["b", "a", "b", None, "c", "b", "a", "x"]
    gold = ["a", "b", "b", "c", "b"]
    row = M.majority_baseline(train, gold, ["a", "b", "c"], "train-set@1")
    # always "b": 3 of 5 right; F1(b) = 2*(3/5)*1/(3/5+1) = 3/4, a and c 0 -> macro 1/4
    assert row["label"] == "b" and row["score"] == pytest.approx(0.6) and row["macro_f1"] == pytest.approx(0.25)
    assert row["counted_on"] == 6 and row["source"] == "train-set@1"
    assert row["score_ci"][0] <= 0.6 <= row["score_ci"][1]
    # a tie goes to the label the task lists first, whatever the eval data holds
    assert M.majority_baseline(["c", "a"], gold, ["a", "b", "c"], "t")["label"] == "a"
    from protege.metrics import versus_majority

    assert versus_majority([0.37, 0.48], 0.417) == "same as majority"
    assert versus_majority([0.64, 0.74], 0.417) == "above" and versus_majority([0.1, 0.3], 0.417) == "below"


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
    texts = ["A", "b.", "Tie", "Answer B is better", "??", "Both answers are good", "answer a or answer b", ""]
    assert [parse_verdict(t) for t in texts] == ["A", "B", "tie", "B", INVALID, INVALID, INVALID, INVALID]
    # the model is A in the first order and B in the second: it wins only if preferred both times
    assert outcome("A", "B") == "win" and outcome("B", "A") == "loss" and outcome("A", "A") == "tie"
    assert outcome("A", INVALID) == INVALID and outcome(INVALID, "tie") == INVALID
    wr = win_rate(["win", "win", "tie", "loss"])
    assert wr["win_rate"] == pytest.approx(2.5 / 4) and (wr["wins"], wr["losses"], wr["ties"]) == (2, 1, 1)
    assert wr["invalid"] == 0 and wr["invalid_rate"] == 0.0
    # an unreadable verdict is not half a win: it is left out, and counted
    wr = win_rate(["win", INVALID, INVALID, "loss"])
    assert wr["win_rate"] == 0.5 and wr["invalid"] == 2 and wr["judged"] == 4 and wr["invalid_rate"] == 0.5
    assert win_rate([INVALID] * 3)["win_rate"] is None


def test_parse_models():
    assert parse_models("teacher=local, student=runs/x") == {"teacher": "local", "student": "runs/x"}
    for bad in ["nolabel", "a=x,a=y", ""]:
        with pytest.raises(UserError):
            parse_models(bad)


# ---- eval runs over HTTP ----------------------------------------------------------------------------
LABELS = ["billing", "delivery"]


def _stored_run(root: Path, name: str) -> dict:
    """A run as a separate process (the CLI) stored it."""
    from protege.store import Store

    store = Store(root / "protege.db")
    try:
        return store.get_run(name)
    finally:
        store.close()


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
    from sklearn.metrics import f1_score

    from protege.config import TeacherConfig
    from protege.server_process import ServerProcess

    task = Task(name="route", instructions="Route the message.", input="{{ message }}",
                output={"kind": "label", "labels": LABELS},
                examples=[{"input": {"message": "refund please"}, "output": "billing"}])  # fmt: skip
    data = _label_data(ws, task)
    with ServerProcess(tiny_model) as srv:
        ws.config.teachers["t"] = TeacherConfig(base_url=srv.base_url, model=str(tiny_model), constrained_choices=True)
        summary = run_eval(ws, task, data, {"teacher": "t", "local": str(tiny_model)}, name="ev1")
    teacher, local = summary["models"]["teacher"], summary["models"]["local"]
    assert summary["n"] == 6 and summary["reference"] == "teacher"
    run = ws.store.get_run("ev1")
    assert run["kind"] == "eval" and run["status"] == "done" and run["metrics"]["models"]["local"] == local
    for label, res in summary["models"].items():
        preds = load_predictions(run, label)
        assert len(preds) == 6 and all(p["prediction"] in LABELS for p in preds)  # constrained: always a label
        # the prediction is the best-scored choice, and the figures are those of the stored answers
        assert all(p["prediction"] == max(p["choice_scores"], key=p["choice_scores"].get) for p in preds)
        gold, got = [p["reference"] for p in preds], [p["prediction"] for p in preds]
        assert res["score"] == sum(g == p for g, p in zip(gold, got, strict=True)) / 6
        assert res["macro_f1"] == pytest.approx(f1_score(gold, got, labels=LABELS, average="macro", zero_division=0))
        assert res["score_ci"][0] <= res["score"] <= res["score_ci"][1]
        assert res["errors"] == 0 and res["latency_p95_ms"] >= res["latency_p50_ms"] > 0
        assert res["cost_per_1k"] > 0  # both local: priced by measured compute time
        assert res["confusion"]["matrix"] == [[sum(g == r and p == c for g, p in zip(gold, got, strict=True))
                                               for c in LABELS] for r in LABELS]  # fmt: skip
    # the teacher prompt (instructions + a few-shot turn) is longer than the student prompt
    assert teacher["prompt_tokens_mean"] > local["prompt_tokens_mean"]
    assert teacher["dtype"] == local["dtype"] == "float32"  # what the servers report: auto on a CPU
    # no training run among the models: the majority comes from the eval data (3 and 3: the task's first label)
    majority = summary["majority"]
    assert majority["label"] == "billing" and majority["score"] == 0.5
    assert majority["source"] == "the eval data route-test@1 (no training data known)"
    assert all(res["vs_majority"] in ("above", "same as majority", "below") for res in summary["models"].values())

    # a second run with the same model, prompts and settings reuses the stored answers
    again = run_eval(ws, task, data, {"local": str(tiny_model)}, name="ev2")
    assert again["models"]["local"]["cached_from"] == "ev1"
    assert again["models"]["local"]["score"] == local["score"]
    assert again["models"]["local"]["dtype"] == "float32"


@pytest.mark.slow  # over 10 s
def test_text_eval_with_judge_and_cli(ws, tiny_model, tmp_path):
    """`protege eval` as a user runs it: a teacher from protege.yaml (also the judge) and a local model."""
    from protege.server_process import ServerProcess

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
    preds = load_predictions(_stored_run(ws.root, "ev-text"), "tiny")
    assert res["score_name"] == "rouge_l" and len(preds) == 2
    assert res["score"] == pytest.approx(sum(M.rouge_l(p["reference"], p["output"]) for p in preds) / 2)
    assert res["exact_match"] == sum(M.exact_match(p["reference"], p["output"]) for p in preds) / 2
    assert "majority" not in out  # a text task has no majority class
    assert res["completion_tokens_mean"] > 0 and not math.isnan(res["latency_p50_ms"])
    # the remote-priced teacher costs its token price; the local model its compute time
    assert "API price" in ref["cost_basis"] and "compute time" in res["cost_basis"]
    judged = res["judge"]
    assert judged["versus"] == "ref" and judged["wins"] + judged["losses"] + judged["ties"] == 2
    assert judged["invalid"] == 0  # constrained choice over A, B, tie: every verdict is readable
    assert judged["win_rate"] == (judged["wins"] + judged["ties"] / 2) / 2
    calls = sqlite3.connect(ws.root / "protege.db").execute("SELECT COUNT(*) FROM calls WHERE kind='judge'")
    assert calls.fetchone()[0] == 4  # two records, both orders
    proc = run_cli("--workspace", str(ws.root), "report", "ev-text", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "<img" in Path(json.loads(proc.stdout)["html"]).read_text()
    bad = run_cli("--workspace", str(ws.root), "eval", str(task_file), "--data", "echo-test", "--models", "x=nope")
    assert bad.returncode == 2 and "unknown model" in bad.stderr


WORDS = ["hello", "thanks", "bye"]


def _fake_endpoint(judge_says) -> FakeOpenAI:
    """Two answering models and a judge behind one fake OpenAI server: `good` answers the requested
    word, `bad` does not, and the judge replies whatever `judge_says(answer_a, answer_b)` returns."""

    def respond(body: dict) -> str:
        if body["model"] == "judge":
            text = last_user(body)
            first = text.split("Answer A:\n", 1)[1].split("\n\nAnswer B:", 1)[0]
            second = text.split("Answer B:\n", 1)[1].split("\n\nWhich answer", 1)[0]
            return judge_says(first, second)
        return last_user(body).removeprefix("say ") if body["model"] == "good" else "no idea"

    return FakeOpenAI(respond)


def test_judge_that_answers_garbage_fails_the_eval(ws, tmp_path):
    """A judge whose verdicts name no answer does not make a 0.5 win rate: the eval fails (exit 1),
    the run keeps the invalid count; a partly readable judge's win rate counts only readable records."""
    task_file = tmp_path / "echo.yaml"
    task_file.write_text("name: echo\ninput: '{{ text }}'\noutput: {kind: text}\n")
    records = [Record(messages=[{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": w}],
                      metadata={"input": {"text": f"say {w}"}}) for w in WORDS]  # fmt: skip
    save_dataset(ws.store, "echo-test", records)
    ws.store.close()
    verdicts = {"mode": "garbage"}

    def judge_says(first: str, second: str) -> str:
        if verdicts["mode"] == "garbage" or "bye" in (first, second):
            return "Both answers have their merits."
        return "A" if first in WORDS else "B"  # the right answer wins, in either order

    with _fake_endpoint(judge_says) as fake:
        teachers = "".join(f"  {m}:\n    base_url: {fake.base_url}\n    model: {m}\n" for m in ("good", "bad", "judge"))
        (ws.root / "protege.yaml").write_text("teachers:\n" + teachers)
        broken = run_cli("--workspace", str(ws.root), "eval", str(task_file), "--data", "echo-test", "--json",
                         "--models", "bad=bad,good=good", "--reference", "bad", "--judge", "judge",
                         "--name", "ev-garbage")  # fmt: skip
        verdicts["mode"] = "mixed"
        again = open_workspace(ws.root)
        args = (again, load_task(task_file), "echo-test", {"bad": "bad", "good": "good"})
        with pytest.raises(DataError, match=r"unreadable verdicts for 1 of 3 records \(33% > the allowed 10%"):
            run_eval(*args, reference="bad", judge="judge", name="ev-mixed")
        allowed = run_eval(*args, reference="bad", judge="judge", name="ev-allowed", max_judge_invalid=0.5)
    assert broken.returncode == 1, broken.stderr[-2000:]
    assert "unreadable verdicts for 3 of 3 records (100% > the allowed 10%" in broken.stderr
    assert broken.stdout == ""  # no figures printed as if they were results
    run = again.store.get_run("ev-garbage")
    judged = run["metrics"]["models"]["good"]["judge"]
    assert run["status"] == "failed" and judged["invalid"] == 3 and judged["invalid_rate"] == 1.0
    assert judged["win_rate"] is None and judged["ties"] == 0
    # one record of three unreadable: above the default 10%, within an allowed 50%; the win rate is
    # over the two readable records (counting the unreadable one as a tie would give 2.5 / 3)
    assert again.store.get_run("ev-mixed")["status"] == "failed"
    judged = allowed["models"]["good"]["judge"]
    assert (judged["wins"], judged["losses"], judged["ties"], judged["invalid"]) == (2, 0, 0, 1)
    assert judged["win_rate"] == 1.0 and judged["invalid_rate"] == pytest.approx(1 / 3)
    assert again.store.get_run("ev-allowed")["status"] == "done"


def test_majority_comes_from_the_training_data(ws, tmp_path):
    """The baseline is the most frequent label of the evaluated training run's data (or of
    --majority-from), not of the records being scored."""
    from protege.evaluate.scoring import majority_row

    task = Task(name="route", input="{{ message }}", output={"kind": "label", "labels": LABELS})
    train = [Record(messages=task.student_messages({"message": f"m{i}"}) + [{"role": "assistant", "content": lab}],
                    label=lab, split="train") for i, lab in enumerate(["delivery"] * 3 + ["billing"])]  # fmt: skip
    save_dataset(ws.store, "route-train", train)
    ws.store.start_run("student-run", "train", {"data": {"train": "route-train"}}, str(tmp_path))
    refs = ["billing", "billing", "delivery"]
    student = ModelSpec("student", "student-run", path=str(tmp_path))
    row = majority_row(ws, task, [ModelSpec("base", "some-model", path="x"), student], refs, "route-test@1", None)
    assert row["label"] == "delivery" and row["score"] == pytest.approx(1 / 3)  # the eval data's majority: billing
    assert row["source"] == "route-train@1, training data of student-run" and row["counted_on"] == 4
    jsonl = tmp_path / "other.jsonl"
    jsonl.write_text("".join(json.dumps({"message": "x", "label": "billing"}) + "\n" for _ in range(2)))
    row = majority_row(ws, task, [student], refs, "route-test@1", str(jsonl))
    assert row["label"] == "billing" and row["source"] == f"{jsonl} (--majority-from)"
    row = majority_row(ws, task, [ModelSpec("base", "some-model", path="x")], refs, "route-test@1", None)
    assert row["label"] == "billing" and row["source"] == "the eval data route-test@1 (no training data known)"
    with pytest.raises(DataError, match="none of its labels"):
        jsonl.write_text(json.dumps({"message": "x", "label": "other"}) + "\n")
        majority_row(ws, task, [student], refs, "route-test@1", str(jsonl))


def test_demo_task_and_data_are_shipped_and_deterministic(tmp_path):
    from protege.demo_data import LABELS as DEMO_LABELS
    from protege.demo_data import heldout_rows, task_path, write_demo_data
    from protege.tasks import load_task

    root = Path(__file__).resolve().parents[1]
    assert (root / "examples" / "tasks" / "support.yaml").read_text() == task_path().read_text()
    task = load_task(task_path())
    assert task.labels == DEMO_LABELS and all(ex.output in DEMO_LABELS for ex in task.examples)
    a, b = write_demo_data(tmp_path / "a", 40, 20), write_demo_data(tmp_path / "b", 40, 20)
    assert a["heldout"].read_text() == b["heldout"].read_text()
    gold = [json.loads(line)["label"] for line in a["heldout"].read_text().splitlines()]
    assert gold == [r["label"] for r in heldout_rows(20)]  # what the demo stores is what it wrote
    assert sorted(set(gold)) == sorted(DEMO_LABELS) and gold.count(DEMO_LABELS[0]) == 5
    inputs = {json.loads(line)["message"] for line in a["inputs"].read_text().splitlines()}
    assert all("label" not in line for line in a["inputs"].read_text().splitlines()) and len(inputs) > 30
    load_task(root / "examples" / "tasks" / "emotion.yaml")
