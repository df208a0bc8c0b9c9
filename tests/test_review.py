"""The review stage without a browser: actions and undo, the queue orders, stats, export, compare mode,
the page's HTTP API on a real server, token auth, and the CLI's answers to bad input."""

from __future__ import annotations

import json
import sqlite3

import httpx
import pytest

from conftest import free_port, run_cli
from protege.data.records import Record, get_dataset, load_records, save_dataset
from protege.errors import DataError, UserError
from protege.review import actions as A
from protege.review import predictions as P
from protege.review.app import Background, create_app
from protege.review.export import export_reviewed, reviewed_records
from protege.review.queue import in_overlap, order, push_back_near_duplicates
from protege.review.session import Session, Settings
from protege.review.stats import review_stats
from protege.tasks import Task

LABELS = ["anger", "joy", "optimism", "sadness"]
TEXTS = [
    "the bus left without me again",
    "my sister got the job she wanted",
    "tomorrow is a fresh start for all of us",
    "I miss my grandmother every single day",
    "who keeps parking in my spot",
    "best concert of my whole life",
]
TEACHER = ["anger", "joy", "optimism", "sadness", "joy", "joy"]


def _task() -> Task:
    return Task(name="emo", input="Tweet: {{ text }}", output={"kind": "label", "labels": LABELS})


def _records(task: Task, texts=TEXTS, answers=TEACHER) -> list[Record]:
    return [
        Record(messages=task.student_messages({"text": t}) + [{"role": "assistant", "content": a}], label=a,
               metadata={"input": {"text": t}}, provenance={"teacher": "big", "call_id": i})
        for i, (t, a) in enumerate(zip(texts, answers, strict=True))
    ]  # fmt: skip


@pytest.fixture
def pool(ws):
    task = _task()
    info = save_dataset(ws.store, "tweets", _records(task))
    return ws, task, info


def _prediction(label: str, margin: float) -> P.Prediction:
    scores = {lab: -5.0 for lab in LABELS}
    scores[label] = -1.0
    scores[next(x for x in LABELS if x != label)] = -1.0 - margin
    return P.Prediction(label, "student", scores)


# ---- actions ------------------------------------------------------------------------------------------
def test_each_action_is_stored_with_old_and_new_value_and_undo_restores(pool):
    ws, _, info = pool
    recs = load_records(ws.store, "tweets")
    A.act(ws.store, info, 0, recs[0], "ann", "accept", "anger", "label", seconds=2.5)
    A.act(ws.store, info, 1, recs[1], "ann", "edit", "optimism", "label", note="hopeful, not joyful")
    A.act(ws.store, info, 2, recs[2], "ann", "reject", kind="label")
    rows = ws.store.query("SELECT * FROM review_actions ORDER BY id")
    assert [r["action"] for r in rows] == ["accept", "edit", "reject"]
    assert json.loads(rows[1]["old_value"]) == {"status": "pending", "answer": "joy", "reviewed": False}
    assert json.loads(rows[1]["new_value"])["answer"] == "optimism" and rows[1]["reviewer"] == "ann"
    done = A.undo_last(ws.store, "tweets", "ann")
    assert done["idx"] == 2 and done["state"].status == "pending" and not done["state"].reviewed
    assert A.current_state(ws.store, "tweets", recs[1]).answer == "optimism"
    assert [h["action"] for h in A.history(ws.store, "tweets", A.record_key(recs[2]))] == ["reject", "undo"]
    A.undo_last(ws.store, "tweets", "ann")
    A.undo_last(ws.store, "tweets", "ann")
    assert A.undo_last(ws.store, "tweets", "ann") is None  # nothing left: history is whole, state is back
    assert not any(s.reviewed for s in A.latest_states(ws.store, "tweets").values())
    assert len(ws.store.query("SELECT id FROM review_actions")) == 6


def test_undo_reaches_back_ten_actions_and_never_over_someone_elses(pool):
    ws, _, info = pool
    recs = load_records(ws.store, "tweets")
    for _ in range(2):
        for i in range(6):
            A.act(ws.store, info, i, recs[i], "ann", "accept", kind="label")
    undone = [A.undo_last(ws.store, "tweets", "ann") for _ in range(11)]
    assert sum(u is not None for u in undone) == 10 and undone[-1] is None
    A.act(ws.store, info, 0, recs[0], "ann", "edit", "joy", "label")
    A.act(ws.store, info, 0, recs[0], "bob", "reject", kind="label")
    with pytest.raises(DataError, match="changed by bob"):
        A.undo_last(ws.store, "tweets", "ann")


def test_reviews_follow_the_record_into_a_new_dataset_version(pool):
    ws, task, info = pool
    recs = load_records(ws.store, "tweets")
    A.act(ws.store, info, 3, recs[3], "ann", "edit", "anger", "label")
    save_dataset(ws.store, "tweets", _records(task, ["one more tweet", *TEXTS], ["joy", *TEACHER]))
    newer = load_records(ws.store, "tweets")
    assert A.current_state(ws.store, "tweets", newer[4]).answer == "anger"


# ---- queue --------------------------------------------------------------------------------------------
def test_uncertainty_order_puts_small_margins_first_and_near_duplicates_back(pool):
    ws, task, _ = pool
    texts = [*TEXTS, "the bus left without me again!!"]  # a near-duplicate of record 0
    recs = _records(task, texts, [*TEACHER, "anger"])
    preds = {i: _prediction("joy", m) for i, m in enumerate([0.1, 3.0, 0.5, 2.0, 1.0, 4.0, 0.05])}
    # 6 is the least certain; 0 (margin 0.1) rewords it, so it goes to the back
    assert order(recs, range(7), "uncertainty", preds) == [6, 2, 4, 3, 1, 5, 0]
    assert push_back_near_duplicates(recs, [6, 0, 1]) == [6, 1, 0]
    answers = {i: TEACHER[i] if i < 6 else "anger" for i in range(7)}
    # where the teacher did not say joy (as the model does) first: 6 (anger), 2, 3; then 4, 1, 5; 0 is a dup
    assert order(recs, range(7), "disagreement", preds, answers) == [6, 2, 3, 4, 1, 5, 0]
    assert order(recs, range(7), "random", preds, seed=1) == order(recs, range(7), "random", preds, seed=1)
    assert order(recs, range(7), "oldest", preds) == list(range(7))
    assert 0.15 < sum(in_overlap(f"k{i}", 0.2) for i in range(2000)) / 2000 < 0.25


# ---- stats, export, training selection --------------------------------------------------------------------
def test_stats_agreement_and_kappa_between_reviewers(pool):
    ws, _, info = pool
    recs = load_records(ws.store, "tweets")
    for i, (a, b) in enumerate([("anger", "anger"), ("joy", "joy"), ("optimism", "joy"), ("sadness", "sadness")]):
        A.act(ws.store, info, i, recs[i], "ann", "accept" if a == TEACHER[i] else "edit", a, "label", seconds=2.0)
        A.act(ws.store, info, i, recs[i], "bob", "accept" if b == TEACHER[i] else "edit", b, "label", seconds=4.0)
    A.act(ws.store, info, 4, recs[4], "ann", "reject", kind="label")
    preds = {i: _prediction("joy", 1.0) for i in range(6)}
    s = review_stats(ws.store, info, recs, preds, "label")
    assert {k: s[k] for k in ("total", "accepted", "edited", "rejected", "pending")} == {
        "total": 6, "accepted": 3, "edited": 1, "rejected": 1, "pending": 1,
    }  # fmt: skip
    assert s["between_reviewers"]["n"] == 4 and s["between_reviewers"]["agreement"] == 0.75
    assert 0.6 < s["between_reviewers"]["kappa"] < 0.7  # sklearn's Cohen's kappa for these pairs: 0.6667
    # the latest verdicts: record 2 is bob's joy (teacher: optimism), 4 is rejected: 3 of 5 agree
    assert s["human_vs_teacher"]["agreement"] == pytest.approx(3 / 5)
    assert s["human_vs_model"]["agreement"] == pytest.approx(2 / 5)
    assert s["mean_seconds_per_review"] == pytest.approx(3.0)  # ann 2 s, bob 4 s; the reject carried no time
    assert s["by_reviewer"]["bob"] == {"accepted": 3, "edited": 1, "rejected": 0, "actions": 4}


def test_export_applies_edits_leaves_rejected_out_and_points_back(pool):
    ws, _, info = pool
    recs = load_records(ws.store, "tweets")
    A.act(ws.store, info, 0, recs[0], "ann", "accept", kind="label")
    A.act(ws.store, info, 1, recs[1], "ann", "edit", "optimism", "label", note="hopeful")
    A.act(ws.store, info, 2, recs[2], "ann", "reject", kind="label")
    out = export_reviewed(ws.store, "tweets", "tweets-approved")
    assert out["exported"] == 2 and out["left_out"] == {"rejected": 1, "pending": 3}
    new = load_records(ws.store, "tweets-approved")
    assert [r.label for r in new] == ["anger", "optimism"] and new[1].messages[-1].content == "optimism"
    assert new[1].review == "edited" and new[1].review_note == "hopeful" and new[1].reviewed_at
    assert new[1].provenance["review"]["reviewer"] == "ann" and new[1].provenance["call_id"] == 1
    assert get_dataset(ws.store, "tweets-approved")["parents"] == [info["id"]]
    assert get_dataset(ws.store, "tweets")["version"] == 1  # the reviewed version itself never changes

    from protege.train.data import load_conversations

    conv = load_conversations("tweets", _task(), ws.store, review=["accepted", "edited"])
    assert conv.labels == ["anger", "optimism"] and conv.source["review"] == ["accepted", "edited"]
    assert [r.review for r in reviewed_records(ws.store, "tweets")][:3] == ["accepted", "edited", "rejected"]


# ---- the page's API on a real server ---------------------------------------------------------------------
def test_page_api_stores_actions_refuses_bad_edits_and_undoes(pool):
    ws, task, _ = pool
    recs = load_records(ws.store, "tweets")
    preds_path = P.write(ws.root / "preds.jsonl", recs, [_prediction("joy", m) for m in (3, 0.2, 1, 0.1, 2, 4)])
    session = Session(ws.store, Settings("tweets", task=task, predictions=preds_path, reviewer="ann"))
    port = free_port()
    with Background(create_app(session), "127.0.0.1", port), httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
        page = c.get("/")
        assert page.status_code == 200 and 'data-idx="3"' in page.text  # the smallest margin comes first
        assert "I miss my grandmother" in page.text and "confidence" in page.text
        bad = c.post("/api/action", json={"idx": 3, "at": 0, "action": "edit", "answer": "furious"})
        assert bad.status_code == 422 and "not one of the labels" in bad.json()["error"]
        assert not ws.store.query("SELECT id FROM review_actions")  # nothing stored
        ok = c.post("/api/action", json={"idx": 3, "at": 0, "action": "edit", "answer": "anger", "seconds": 1.5})
        assert ok.json()["stored"] == {"idx": 3, "status": "edited", "answer": "anger"} and ok.json()["idx"] == 1
        c.post("/api/action", json={"idx": 1, "at": 1, "action": "edit", "answer": "joy"})  # = teacher's: an accept
        undo = c.post("/api/undo", json={"at": 2}).json()
        assert undo["idx"] == 1 and "accept of record 1 undone" in undo["message"]
        stats = c.get("/api/stats").json()
    assert (stats["edited"], stats["accepted"], stats["reviewed"]) == (1, 0, 1)
    assert [r["action"] for r in ws.store.query("SELECT action FROM review_actions ORDER BY id")] == [
        "edit", "accept", "undo",
    ]  # fmt: skip


def test_token_is_required_off_loopback_given_once_then_a_cookie(pool):
    ws, task, _ = pool
    session = Session(ws.store, Settings("tweets", task=task))
    port = free_port()
    with Background(create_app(session, token="s3cret-token"), "127.0.0.1", port):
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/").status_code == 401
        assert httpx.get(url + "/?token=wrong").status_code == 401
        assert httpx.post(url + "/api/action", json={"idx": 0, "at": 0, "action": "accept"}).status_code == 401
        with httpx.Client(base_url=url, follow_redirects=True) as c:
            first = c.get("/?token=s3cret-token&status=pending")
            assert first.status_code == 200 and "token=" not in str(first.url) and "status=pending" in str(first.url)
            assert c.get("/api/stats").status_code == 200  # the cookie carries it from now on
    assert not ws.store.query("SELECT id FROM review_actions")


def test_compare_mode_stores_verdicts_in_model_terms(pool):
    ws, task, info = pool
    recs = load_records(ws.store, "tweets")
    a = P.write(ws.root / "a.jsonl", recs, [P.Prediction(x, "a") for x in TEACHER])
    b = P.write(ws.root / "b.jsonl", recs, [P.Prediction(x, "b") for x in ["joy"] * 6])
    session = Session(ws.store, Settings("tweets", task=task, compare=f"{a},{b}", reviewer="ann"))
    assert session.queue() == [0, 2, 3]  # records 1, 4, 5: both said joy, nothing to compare
    port = free_port()
    with Background(create_app(session), "127.0.0.1", port), httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
        for at, idx in enumerate(session.queue()):
            view = session.view(idx, "ann")
            left_is_a = view["pair"]["shown_left"] == "a"
            c.post("/api/prefer", json={"idx": idx, "at": at, "choice": "left" if left_is_a else "right"})
        stats = c.get("/api/stats").json()
    rows = ws.store.query("SELECT verdict FROM preferences")
    assert [r["verdict"] for r in rows] == ["a", "a", "a"]
    (pref,) = stats["preferences"]
    assert pref["win_rate_a"] == 1.0 and pref["n"] == 3 and pref["win_rate_a_ci"] == [1.0, 1.0]


# ---- the CLI on bad input ---------------------------------------------------------------------------------
def test_cli_refuses_bad_input_in_one_line(ws, tmp_path):
    task_file = tmp_path / "other.yaml"
    task_file.write_text("name: other\ninput: '{{ text }}'\noutput: {kind: label, labels: [billing, delivery]}\n")
    save_dataset(ws.store, "tweets", _records(_task()))
    env = {"PROTEGE_WORKSPACE": str(ws.root)}
    unknown = run_cli("review", "stats", "nope", env=env)
    assert unknown.returncode == 2 and "unknown dataset 'nope'" in unknown.stderr
    mismatch = run_cli("review", "serve", "tweets", "--task", str(task_file), "--port", str(free_port()), env=env)
    assert mismatch.returncode == 1 and "not one of the labels of task 'other'" in mismatch.stderr
    assert len(mismatch.stderr.strip().splitlines()) <= 2  # one message (rich may wrap it), no traceback
    open_host = run_cli("review", "serve", "tweets", "--host", "0.0.0.0", env={**env, "PROTEGE_REVIEW_TOKEN": ""})
    assert open_host.returncode == 2 and "give a token" in open_host.stderr
    stats = run_cli("review", "stats", "tweets", "--json", env=env)
    assert stats.returncode == 0, stats.stderr
    assert {"total", "accepted", "edited", "rejected", "pending"} <= set(json.loads(stats.stdout))
    empty = run_cli("review", "export", "tweets", "--name", "approved", env=env)
    assert empty.returncode == 1 and "nothing exported" in empty.stderr


def test_overlap_sends_a_share_of_records_to_a_second_reviewer_and_filters_apply(ws):
    task = _task()
    texts = [f"{w} is what I think about on {d}" for w in ("rain", "work", "cake", "exams", "music", "sleep")
             for d in ("mondays", "the bus home", "holidays", "long nights")]  # fmt: skip
    answers = [LABELS[i % 4] for i in range(len(texts))]
    info = save_dataset(ws.store, "many", _records(task, texts, answers))
    recs = load_records(ws.store, "many")
    session = Session(ws.store, Settings("many", task=task, overlap=0.5, order="oldest"))
    for i in range(len(recs)):
        A.act(ws.store, info, i, recs[i], "ann", "accept", kind="label")
    keys = [A.record_key(r) for r in recs]
    shared = {i for i in range(len(recs)) if in_overlap(keys[i], 0.5)}
    assert 0 < len(shared) < len(recs) and session.pending_for("bob") == shared and not session.pending_for("ann")
    for i in shared:
        A.act(ws.store, info, i, recs[i], "bob", "accept" if i % 3 else "edit", "joy", "label")
    assert not session.pending_for("bob") and not session.pending_for("carol")
    port = free_port()
    with Background(create_app(session), "127.0.0.1", port):
        page = httpx.get(f"http://127.0.0.1:{port}/?reviewer=bob&label=joy").text
    assert f"{len(shared)} records judged twice" in page and "Cohen's kappa" in page
    assert session.queue({"label": "joy"}) == [i for i in range(len(recs)) if answers[i] == "joy"]
    assert session.queue({"status": "edited"}) == sorted(i for i in shared if i % 3 == 0 and answers[i] != "joy")
    assert session.queue({"source": "big"}) == list(range(len(recs)))


def test_edits_are_checked_against_the_task():
    from protege.review.checks import AnswerCheck

    schema = {"type": "object", "properties": {"team": {"type": "string"}}, "required": ["team"]}
    task = Task(name="route", output={"kind": "json", "schema": schema})
    check = AnswerCheck("json", [], task)
    assert check.check('{"team": "billing"}') == ('{"team": "billing"}', None)
    assert check.check("{team: billing")[1].startswith("not valid JSON")
    assert "does not match the schema" in check.check('{"queue": 1}')[1]
    refused = "'Joy' is not one of the labels anger, joy, optimism, sadness"
    assert AnswerCheck("label", LABELS).check("Joy")[1] == refused
    assert AnswerCheck("text").check("  ")[1] == "empty answer"


def test_a_new_database_gets_the_review_tables(ws):
    conn = sqlite3.connect(ws.root / "protege.db")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"review_actions", "preferences"} <= tables
    with pytest.raises(UserError):
        A.act(ws.store, {"name": "x", "id": None}, 0, _records(_task())[0], "ann", "approve")
