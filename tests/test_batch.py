"""`protege distill --batch`: the Batch API (files + batches endpoints of the fake OpenAI server)
in front of the online path: happy path, an expired batch, a partial failure, and resume after the
process is killed while the batch runs (by rerunning, or by `--batch-id`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli
from fake_openai import FakeOpenAI
from protege.data.records import load_records
from protege.tasks import load_task
from protege.teachers.distill import distill
from protege.workspace import init_workspace, open_workspace
from test_teachers import LABELS, TASK_YAML, configure, label_responder, write_inputs


@pytest.fixture
def task(tmp_path):
    (tmp_path / "task.yaml").write_text(TASK_YAML)
    return load_task(tmp_path / "task.yaml")


def _calls(ws) -> list[dict]:
    rows = ws.store.query("SELECT status, tags, cost, request FROM calls WHERE kind='teacher' ORDER BY id")
    return [{"status": r["status"], "tags": json.loads(r["tags"]), "cost": r["cost"]} for r in rows]


def test_batch_happy_path_same_records_as_online_at_half_price(ws, tmp_path, task):
    inputs = write_inputs(tmp_path / "in.jsonl", 20)  # line 7 is a tweet the teacher answers with nonsense
    with FakeOpenAI(label_responder) as fake:
        fake.batch_polls = 2
        configure(ws.root, fake.base_url)
        ws = open_workspace(ws.root)
        result = distill(ws, task, inputs, "t", batch=True, poll_s=0.01)
        # the 20 first asks went in one batch; online: only the two warmer re-asks of the nonsense answer
        assert len(fake.batches) == 1 and len(fake.batch_requests) == 20
        assert [body["temperature"] for body in fake.requests] == [0.3, 0.6]
        batch_id = next(iter(fake.batches))
        assert fake.batches[batch_id]["endpoint"] == "/v1/chat/completions"
        again = distill(ws, task, inputs, "t", batch=True, poll_s=0.01)
        assert len(fake.batches) == 1 and len(fake.requests) == 2  # all cached: nothing sent either way
        online_ws = init_workspace(tmp_path / "online")
        configure(online_ws.root, fake.base_url)
        online = distill(open_workspace(online_ws.root), task, inputs, "t")
    summary = result.summary()
    assert summary["batch"] | {"errors": []} == {
        "batch_id": batch_id,
        "status": "completed",
        "sent": 20,
        "answered": 20,
        "failed": 0,
        "resumed": False,
        "errors": [],
    }
    assert summary["records"] == 20 and summary["rejected"] == 1 and summary["requests"] == 2
    assert again.summary()["batch"]["status"] == "nothing to send" and again.stats["requests"] == 0
    records = load_records(ws.store, "emotion-distilled")
    plain = load_records(open_workspace(online_ws.root).store, "emotion-distilled")
    assert [(r.messages, r.label, r.review) for r in records] == [(r.messages, r.label, r.review) for r in plain]
    assert [r.label for r in records if r.review == "pending"] == [LABELS[i % 4] for i in range(20) if i != 7]
    # the batch's answers are in the same cache, tagged with the batch, at half the price of an online answer
    calls = _calls(ws)
    batched = [c for c in calls if f"batch:{batch_id}" in c["tags"]]
    assert len(batched) == 20 and len(calls) == 22
    price = (10 * 1.0 + 1 * 2.0) / 1e6
    assert all(c["cost"] == pytest.approx(price / 2) for c in batched if c["status"] == "ok")
    assert records[0].provenance["cost"] == pytest.approx(price / 2) and online.summary()["cost"] > result.stats["cost"]
    assert not (ws.artifacts / "batches").exists() or not list((ws.artifacts / "batches").iterdir())


def test_expired_batch_answers_the_rest_online(ws, tmp_path, task):
    inputs = write_inputs(tmp_path / "in.jsonl", 6)
    with FakeOpenAI(label_responder) as fake:
        fake.batch_expire_after = 4
        configure(ws.root, fake.base_url)
        result = distill(open_workspace(ws.root), task, inputs, "t", batch=True, poll_s=0.01)
        online = [body["messages"][-1]["content"] for body in fake.requests]
    assert result.batch["status"] == "expired" and (result.batch["answered"], result.batch["failed"]) == (4, 2)
    assert online == ["Tweet: tweet number 4", "Tweet: tweet number 5"]
    records = load_records(open_workspace(ws.root).store, "emotion-distilled")
    assert [r.label for r in records] == [LABELS[i % 4] for i in range(6)]


def test_partial_failure_is_requeued_online(ws, tmp_path, task):
    inputs = write_inputs(tmp_path / "in.jsonl", 6)
    with FakeOpenAI(label_responder) as fake:
        fake.batch_fail_lines = {1, 3}
        configure(ws.root, fake.base_url)
        out = run_cli(
            "-w", str(ws.root), "distill", str(tmp_path / "task.yaml"), "--inputs", str(inputs), "--teacher", "t",
            "--batch", "--poll-seconds", "0.01", "--json",
        )  # fmt: skip
        online = sorted(body["messages"][-1]["content"] for body in fake.requests)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout)
    assert summary["batch"]["status"] == "completed" and summary["batch"]["failed"] == 2
    assert summary["requests"] == 2 and summary["cache_hits"] == 4 and summary["records"] == 6
    assert online == ["Tweet: tweet number 1", "Tweet: tweet number 3"]
    records = load_records(open_workspace(ws.root).store, "emotion-distilled")
    assert all(r.review == "pending" for r in records) and [r.label for r in records] == [
        LABELS[i % 4] for i in range(6)
    ]


def _distill_cmd(ws_root: Path, tmp_path: Path, inputs: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "protege", "-w", str(ws_root), "distill", str(tmp_path / "task.yaml"),
        "--inputs", str(inputs), "--teacher", "t", "--batch", "--poll-seconds", "0.05", *extra,
    ]  # fmt: skip


@pytest.mark.slow  # three CLI processes: ~15 s on 2 shared cores
def test_killed_while_the_batch_runs_then_resumed(ws, tmp_path, task):
    """The process dies while the provider still works on the batch: a rerun of the same command
    polls that batch (no second batch, nothing asked twice); `--batch-id` resumes it from elsewhere."""
    inputs = write_inputs(tmp_path / "in.jsonl", 5)
    with FakeOpenAI(label_responder) as fake:
        fake.batch_polls = 10**9  # the batch runs until told otherwise
        configure(ws.root, fake.base_url)
        proc = subprocess.Popen(
            _distill_cmd(ws.root, tmp_path, inputs), stderr=subprocess.PIPE, env={**os.environ, "PROTEGE_QUIET": "1"}
        )
        state = ws.root / "artifacts" / "batches" / "distill-emotion-distilled.json"
        deadline = time.monotonic() + 120
        while not (state.exists() and any(b["_polls"] > 1 for b in fake.batches.values())):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        batch_id = json.loads(state.read_text())["batch_id"]
        assert list(fake.batches) == [batch_id] and not fake.batch_requests
        assert open_workspace(ws.root).store.get_run("distill-emotion-distilled")["status"] == "running"

        fake.batch_polls = 0  # the provider finishes
        out = subprocess.run(_distill_cmd(ws.root, tmp_path, inputs, "--json"), capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        summary = json.loads(out.stdout)
        assert summary["batch"]["resumed"] and summary["batch"]["batch_id"] == batch_id
        assert list(fake.batches) == [batch_id] and len(fake.batch_requests) == 5 and not fake.requests
        assert summary["records"] == 5 and summary["requests"] == 0 and not state.exists()

        # --batch-id: the same batch's answers recorded in another workspace (e.g. another machine)
        other = init_workspace(tmp_path / "other")
        configure(other.root, fake.base_url)
        result = distill(open_workspace(other.root), task, inputs, "t", batch_id=batch_id, poll_s=0.01)
        assert result.batch["resumed"] and result.batch["answered"] == 5 and result.stats["requests"] == 0
        assert len(fake.batches) == 1 and not fake.requests


def test_batch_needs_an_http_teacher(ws, tmp_path, task):
    inputs = write_inputs(tmp_path / "in.jsonl", 2)  # an in-process teacher: refused before its model loads
    (ws.root / "protege.yaml").write_text(json.dumps({"teachers": {"t": {"model": "smollm2-135m-instruct"}}}))
    from protege.errors import UserError

    with pytest.raises(UserError, match="--batch needs a teacher with a base_url"):
        distill(open_workspace(ws.root), task, inputs, "t", batch=True)
