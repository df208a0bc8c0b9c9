"""`protege rounds` on the tiny model: the queue picks the least certain records first (margins
recomputed here, independently), the --json contract, resuming, the guard that keeps the better model,
and a round that waits for a person on the review page."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, free_port, run_cli
from protege.data.records import Record, save_dataset
from protege.rounds import keep_better
from protege.tasks import load_task

TASK = ROOT / "examples" / "tasks" / "emotion.yaml"
POOL = [
    ("stuck in traffic for two hours, unbelievable", "anger"), ("my best friend surprised me with cake", "joy"),
    ("next year will be our year, I can feel it", "optimism"), ("the old dog passed away this morning", "sadness"),
    ("they cancelled my flight without telling anyone", "anger"), ("we won the final in extra time", "joy"),
    ("every setback is a setup for a comeback", "optimism"), ("nobody came to the birthday party", "sadness"),
    ("the printer jammed right before the deadline", "anger"), ("sunshine, coffee and a free afternoon", "joy"),
    ("the clinic says the treatment is working", "optimism"), ("I failed the exam I studied months for", "sadness"),
    ("customer service hung up on me twice", "anger"), ("grandpa laughed at my terrible joke", "joy"),
    ("small steps still move you forward", "optimism"), ("the house feels empty since she moved out", "sadness"),
]  # fmt: skip
EVAL = [
    ("why is the wifi down again", "anger"), ("the puppy finally learned to sit", "joy"),
    ("things are slowly getting better at work", "optimism"), ("rainy sunday, missing home", "sadness"),
]  # fmt: skip
CONTRACT = {"round", "labels_used", "score", "score_ci", "kappa_model_human"}


def _workspace(ws) -> None:
    task = load_task(TASK)
    pool = [Record(messages=task.student_messages({"text": t}), metadata={"input": {"text": t}, "gold": g})
            for t, g in POOL]  # fmt: skip
    evalset = [Record(messages=task.student_messages({"text": t}) + [{"role": "assistant", "content": g}], label=g,
                      metadata={"input": {"text": t}}) for t, g in EVAL]  # fmt: skip
    save_dataset(ws.store, "pool", pool)
    save_dataset(ws.store, "heldout", evalset)


def _margins(model_path) -> list[float]:
    """Each pool record's margin between the base model's two best labels, computed here."""
    from protege.models.load import load_model, load_tokenizer
    from protege.train.classify import score_choices

    task = load_task(TASK)
    scores = score_choices(load_model(str(model_path)), load_tokenizer(str(model_path)),
                           [task.student_messages({"text": t}) for t, _ in POOL], task.labels)  # fmt: skip
    top = scores.sort(dim=1, descending=True).values
    return (top[:, 0] - top[:, 1]).tolist()


def _rounds(ws, tiny_model, *extra: str) -> subprocess.CompletedProcess:
    return run_cli(
        "rounds", str(TASK), "--pool", "pool", "--base", str(tiny_model), "--per-round", "4", "--eval", "heldout",
        "--simulate-from", "gold", "--json", *extra, env={"PROTEGE_WORKSPACE": str(ws.root)},
    )  # fmt: skip


@pytest.mark.slow  # three CLI runs, five LoRA trainings on the tiny model: 17 s on idle cores, 35 s on busy ones
def test_rounds_review_the_least_certain_first_and_resume(ws, tiny_model):
    _workspace(ws)
    first = _rounds(ws, tiny_model, "--rounds", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    out = json.loads(first.stdout)
    assert out["simulated"] is True and "simulated" in out["note"] and len(out["rounds"]) == 2
    for row in out["rounds"]:
        assert set(row) >= CONTRACT and len(row["score_ci"]) == 2
        assert row["kappa_model_human"] is None or -1 <= row["kappa_model_human"] <= 1
    assert [r["labels_used"] for r in out["rounds"]] == [4, 8]

    margins = _margins(tiny_model)
    least_certain = sorted(range(len(POOL)), key=lambda i: margins[i])[:4]
    assert least_certain != [0, 1, 2, 3]  # so the dataset's own order would fail what follows
    assert out["rounds"][0]["chosen"] == least_certain, (margins, out["rounds"][0]["chosen"])

    start = out["start"]["score"]
    scores = [start] + [r["score"] for r in out["rounds"]]
    assert scores == sorted(scores)  # never a worse model handed over
    for row in out["rounds"]:
        assert row["kept"].startswith(("round", "zero-shot")) and row["candidate_score"] is not None

    actions = ws.store.query("SELECT reviewer, action, note FROM review_actions")
    assert len(actions) == 8 and {a["reviewer"] for a in actions} == {"simulated:gold"}
    assert all("simulated" in a["note"] for a in actions)

    again = _rounds(ws, tiny_model, "--rounds", "3")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" in again.stderr
    more = json.loads(again.stdout)
    assert more["rounds"][:2] == out["rounds"] and more["rounds"][2]["labels_used"] == 12
    assert not set(more["rounds"][2]["chosen"]) & set(out["rounds"][0]["chosen"] + out["rounds"][1]["chosen"])

    from protege.evaluate.report import write_report

    report = write_report(ws, [more["run"]])  # `protege report` of a rounds run: the score-vs-labels curve
    page = Path(report["html"]).read_text()
    assert page.count("data:image/png;base64,") == 1 and "simulated" in page and "labels used" in page


def test_one_simulated_round_picks_the_least_certain(ws, tiny_model):
    """The same check as above in one in-process round (fast): what the queue picks is what the
    model's own margins say is least certain."""
    from protege.rounds import RoundsSettings, run_rounds

    _workspace(ws)
    settings = RoundsSettings(
        task=str(TASK), pool="pool", base=str(tiny_model), rounds=1, per_round=3, simulate_from="gold"
    )  # fmt: skip  (no eval set: one round, nothing compared)
    out = run_rounds(ws, settings)
    (row,) = out["rounds"]
    margins = _margins(tiny_model)
    assert row["chosen"] == sorted(range(len(POOL)), key=lambda i: margins[i])[:3]
    assert row["labels_used"] == 3 and row["approved"] == 3 and out["simulated"] is True
    assert row["score"] is None and "not compared: no --eval" in row["kept"]


def test_review_predict_gives_text_answers_their_mean_logprob_and_the_page_orders_by_it(ws, tiny_model, tmp_path):
    from protege.review import predictions as P
    from protege.review.session import Session, Settings

    task_file = tmp_path / "reply.yaml"
    task_file.write_text("name: reply\ninput: 'Customer: {{ text }}'\noutput: {kind: text}\n")
    task = load_task(task_file)
    texts = ["my parcel never came", "can I change my password", "the invoice is wrong", "thanks for the help"]
    records = [Record(messages=task.student_messages({"text": t}) + [{"role": "assistant", "content": "On it."}],
                      metadata={"input": {"text": t}}) for t in texts]  # fmt: skip
    save_dataset(ws.store, "replies", records)
    proc = run_cli("review", "predict", "replies", "--task", str(task_file), "--model", str(tiny_model),
                   "--max-tokens", "4", "--json", env={"PROTEGE_WORKSPACE": str(ws.root)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(x) for x in Path(json.loads(proc.stdout)["path"]).read_text().splitlines()]
    assert len(rows) == 4 and all(r["mean_logprob"] < 0 and isinstance(r["output"], str) for r in rows)
    written = json.loads(proc.stdout)["path"]  # the file `review serve` reads by default
    assert written == str(P.default_path(ws.artifacts, "replies"))
    session = Session(ws.store, Settings("replies", task=task, predictions=written))
    assert session.queue() == sorted(range(4), key=lambda i: rows[i]["mean_logprob"])
    assert session.view(session.queue()[0], "ann")["prediction"]["mean_logprob"] == min(r["mean_logprob"] for r in rows)


def test_keep_better_never_hands_over_a_worse_student():
    best = {"model": "zero-shot", "path": "base", "score": 0.51, "score_ci": [0.4, 0.6]}
    worse = {"model": "round 1", "path": "runs/r1", "score": 0.45, "score_ci": [0.35, 0.55]}
    kept = keep_better(best, worse, 1, compared=True)
    assert kept["path"] == "base" and "round 1's student scored 0.450, not above 0.510" in kept["kept"]
    better = {**worse, "score": 0.6}
    assert keep_better(best, better, 2, compared=True)["path"] == "runs/r1"
    assert keep_better(best, None, 3, compared=True)["kept"].startswith("zero-shot (round 3 had nothing approved")


@pytest.mark.slow  # two rounds processes, a LoRA training and the page: 16 s on idle cores
def test_a_round_waits_for_people_on_the_page_and_resumes_after_a_kill(ws, tiny_model):
    _workspace(ws)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [
        sys.executable,
        "-m",
        "protege",
        "-w",
        str(ws.root),
        "rounds",
        str(TASK),
        "--pool",
        "pool",
        "--base",
        str(tiny_model),
        "--rounds",
        "1",
        "--per-round",
        "2",
        "--eval",
        "heldout",
        "--port",
        str(port),
        "--json",
    ]

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    return proc
            except httpx.HTTPError:
                assert proc.poll() is None, proc.communicate()[1][-3000:]
                time.sleep(0.5)
        raise AssertionError("the round's review page did not come up")

    proc = start()
    try:
        first = httpx.get(url + "/api/record", params={"at": 0}).json()
        httpx.post(url + "/api/action", json={"idx": first["idx"], "at": 0, "action": "accept"})
        proc.kill()  # mid-round: one of its two records reviewed
        proc.wait(30)
        proc = start()
        page = httpx.get(url + "/").text  # the resumed round serves the same two records, one still to do
        assert 'reviewed-count">1</span> / 2 reviewed' in page and f'data-idx="{first["idx"]}"' not in page
        second = int(page.split('data-idx="', 1)[1].split('"', 1)[0])
        httpx.post(url + "/api/action", json={"idx": second, "at": 1, "action": "edit", "answer": "joy"})
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    assert "resuming" in stderr and f"review its 2 records at {url}/" in stderr.replace("\n", " ")
    out = json.loads(stdout)
    row = out["rounds"][0]
    assert out["simulated"] is False and row["labels_used"] == 2
    assert sorted(row["chosen"]) == sorted([first["idx"], second])
    assert row["approved"] == 2 and row["edit_rate"] in (0.0, 0.5)
    reviewers = {r["reviewer"] for r in ws.store.query("SELECT reviewer FROM review_actions")}
    assert reviewers == {"reviewer"}
