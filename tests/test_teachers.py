"""Teachers and distillation against real HTTP servers on 127.0.0.1: a fault-injecting fake
(tests/fake_openai.py) and, where it works, a real `protege serve` with the tiny model."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from conftest import free_port, run_cli
from fake_openai import FakeOpenAI, last_user
from protege.config import TeacherConfig
from protege.data.records import get_dataset, load_records
from protege.errors import DataError
from protege.tasks import Task, load_task
from protege.teachers.client import HttpTeacher, RetryPolicy, TeacherError, parse_retry_after
from protege.teachers.distill import distill, read_inputs
from protege.workspace import open_workspace

LABELS = ["anger", "joy", "optimism", "sadness"]
TASK_YAML = """\
name: emotion
instructions: Classify the emotion expressed in the tweet.
input: "Tweet: {{ text }}"
output: {kind: label, labels: [anger, joy, optimism, sadness]}
examples:
  - input: {text: "I can't stop smiling today"}
    output: joy
"""


def label_responder(body: dict) -> str:
    """Deterministic 'teacher': a label from the tweet number, and nonsense for one tweet."""
    text = last_user(body)
    if "weird" in text:
        return "banana"
    n = int(text.rsplit(" ", 1)[-1])
    return LABELS[n % 4].capitalize() + "."


def write_inputs(path: Path, n: int = 50) -> Path:
    rows = [{"text": f"tweet number {i}"} for i in range(n)]
    if n > 7:
        rows[7] = {"text": "a weird tweet 7"}
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def configure(ws_root: Path, base_url: str | None, model: str = "fake-model", **extra) -> None:
    teacher = {"base_url": base_url, "model": model, "price": {"input_per_1m": 1.0, "output_per_1m": 2.0}, **extra}
    (ws_root / "protege.yaml").write_text(json.dumps({"teachers": {"t": teacher}}))


def teacher_cfg(fake: FakeOpenAI, **kw) -> TeacherConfig:
    return TeacherConfig(base_url=fake.base_url, model="fake-model", **{"timeout_s": 1.0, "max_retries": 5, **kw})


def test_teacher_prompt_puts_examples_in_turns_or_in_the_system_message(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(TASK_YAML)
    turns = load_task(path).teacher_messages({"text": "so sad"})
    assert [m["role"] for m in turns] == ["system", "user", "assistant", "user"]
    assert turns[1]["content"] == "Tweet: I can't stop smiling today" and turns[2]["content"] == "joy"
    assert "anger, joy, optimism, sadness" in turns[0]["content"]
    path.write_text(TASK_YAML + "examples_as: system\n")
    inline = load_task(path).teacher_messages({"text": "so sad"})
    assert [m["role"] for m in inline] == ["system", "user"] and inline[1]["content"] == "Tweet: so sad"
    assert inline[0]["content"].endswith("Examples:\n\nTweet: I can't stop smiling today\nAnswer: joy")
    path.write_text(TASK_YAML + "examples_as: footnote\n")
    with pytest.raises(Exception, match="examples_as"):
        load_task(path)


# ---- the client and its retry policy ----------------------------------------------------------------
def test_retry_policy_backoff_and_retry_after():
    policy = RetryPolicy(base_s=0.5, max_s=30)
    assert all(0 <= policy.delay(3) <= 4.0 for _ in range(50))
    assert all(policy.delay(20) <= 30 for _ in range(50))
    assert all(policy.delay(0, retry_after=7.0) >= 7.0 for _ in range(20))  # the server's wait is a floor
    assert parse_retry_after(httpx.Headers({"retry-after": "3"})) == 3.0
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "250"})) == 0.25
    assert 50 < parse_retry_after(httpx.Headers({"retry-after": _http_date(time.time() + 60)})) <= 61
    assert parse_retry_after(httpx.Headers({})) is None


def _http_date(ts: float) -> str:
    from email.utils import formatdate

    return formatdate(ts, usegmt=True)


def test_http_teacher_survives_429_500_hang_and_malformed_json():
    with FakeOpenAI(retry_after="1") as fake:
        fake.faults = ["429", "500", "hang", "malformed", "html"]
        teacher = HttpTeacher(teacher_cfg(fake), "t")
        teacher.policy = RetryPolicy(max_retries=5, base_s=0.05)  # short backoff; Retry-After still applies

        async def go():
            try:
                return await teacher.complete([{"role": "user", "content": "hi"}], {"max_tokens": 5})
            finally:
                await teacher.aclose()

        comp = asyncio.run(go())
    assert comp.text == "echo: hi"
    assert comp.attempts == 6 and len(fake.requests) == 6
    assert comp.prompt_tokens == 10
    assert fake.arrivals[1] - fake.arrivals[0] >= 1.0  # Retry-After: 1 was honoured
    assert all(h.get("authorization") == "Bearer not-needed" for h in fake.headers)


def test_http_teacher_does_not_retry_a_refused_request_and_gives_up_after_max_retries():
    with FakeOpenAI() as fake:
        fake.faults = ["400"]
        teacher = HttpTeacher(teacher_cfg(fake), "t")
        with pytest.raises(TeacherError) as err:
            asyncio.run(teacher.complete([{"role": "user", "content": "hi"}], {}))
        assert not err.value.retryable and err.value.status == 400
        assert len(fake.requests) == 1

        fake.faults = ["500"] * 10
        teacher = HttpTeacher(teacher_cfg(fake, max_retries=2), "t")
        with pytest.raises(TeacherError, match="after 3 attempts") as err:
            asyncio.run(teacher.complete([{"role": "user", "content": "hi"}], {}))
        assert err.value.retryable
        assert len(fake.requests) == 1 + 3


# ---- distillation -----------------------------------------------------------------------------------
def test_inputs_jsonl_and_csv_with_bad_lines(tmp_path):
    bad = tmp_path / "in.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"in\.jsonl:2: json: invalid JSON"):
        read_inputs(bad)
    bad.write_text('{"text": "ok"}\n\n["a list"]\n')
    with pytest.raises(DataError, match=r"in\.jsonl:3: expected a JSON object"):
        read_inputs(bad)
    csv_path = tmp_path / "in.csv"
    csv_path.write_text('text,id\n"hello, world",1\nsecond,2\nthird,3,extra\n')
    with pytest.raises(DataError, match=r"in\.csv:4: csv: expected 2 columns, found 3"):
        read_inputs(csv_path)
    rows = read_inputs(csv_path, limit=2)
    assert [r.fields for r in rows] == [{"text": "hello, world", "id": "1"}, {"text": "second", "id": "2"}]


def test_distill_50_inputs_concurrency_8_rejects_invalid_and_reruns_free(ws, tmp_path):
    inputs = write_inputs(tmp_path / "in.jsonl")
    (tmp_path / "task.yaml").write_text(TASK_YAML)
    task = load_task(tmp_path / "task.yaml")
    terms = "Outputs may not be used to develop competing models."
    with FakeOpenAI(label_responder, delay=0.05) as fake:
        configure(ws.root, fake.base_url, terms=terms, constrained_choices=True)
        ws = open_workspace(ws.root)
        result = distill(ws, task, inputs, "t", concurrency=8)
        assert 2 <= fake.max_inflight <= 8
        # 49 valid answers at the first try, and 1 + 2 retries for the nonsense one
        assert len(fake.requests) == 52
        assert all(r["choices"] == LABELS for r in fake.requests)  # constrained_choices -> extra_body
        retry_params = [(r["temperature"], r.get("seed")) for r in fake.requests if "weird" in last_user(r)]
        assert sorted(retry_params, key=str) == sorted([(0.0, None), (0.3, 1), (0.6, 2)], key=str)

        again = distill(ws, task, inputs, "t", concurrency=8)
        assert len(fake.requests) == 52  # a re-run is answered from the cache
    assert again.stats["requests"] == 0 and again.stats["cache_hits"] == 52
    assert again.dataset["version"] == result.dataset["version"]

    assert result.n_records == 50 and result.n_rejected == 1
    assert result.stats["requests"] == 52 and result.stats["cost"] > 0
    records = load_records(ws.store, "emotion-distilled")
    assert [r.metadata["input"] for r in records] == [json.loads(line) for line in inputs.read_text().splitlines()]
    good = records[0]
    assert [m.model_dump() for m in good.messages] == [
        {"role": "user", "content": "Tweet: tweet number 0"},
        {"role": "assistant", "content": "anger"},
    ]
    assert good.label == "anger" and good.review == "pending"
    prov = good.provenance
    assert prov["teacher"] == "t" and prov["model"] == "fake-model" and prov["terms"] == terms
    assert prov["prompt_tokens"] == 10 and prov["completion_tokens"] == 1
    assert prov["cost"] == pytest.approx((10 * 1.0 + 1 * 2.0) / 1e6)
    assert {"prompt_hash", "params", "latency_ms", "time", "call_id"} <= set(prov)
    bad = records[7]
    assert bad.review == "rejected" and "not one of the labels" in bad.provenance["rejected_reason"]
    assert bad.label is None and bad.completion == "banana" and bad.provenance["attempts"] == 3
    assert len(load_records(ws.store, "emotion-distilled", review=["pending", "accepted", "edited"])) == 49
    assert get_dataset(ws.store, "emotion-distilled")["source"]["terms"] == terms
    statuses = dict(ws.store.query("SELECT status, COUNT(*) FROM calls WHERE kind='teacher' GROUP BY status"))
    assert statuses == {"ok": 49, "rejected": 3}
    # a record's time is its call's stored time (a cache hit then reproduces it exactly)
    stored = dict(ws.store.query("SELECT id, created_at FROM calls WHERE kind='teacher'"))
    for r in records:
        when = datetime.fromtimestamp(stored[r.provenance["call_id"]], UTC).isoformat(timespec="seconds")
        assert r.provenance["time"] == when
    assert ws.store.get_run("distill-emotion-distilled")["status"] == "done"


def test_two_endpoints_serving_the_same_model_name_do_not_share_cached_answers(ws, tmp_path, monkeypatch):
    inputs = write_inputs(tmp_path / "in.jsonl", 4)
    (tmp_path / "task.yaml").write_text(TASK_YAML)
    task = load_task(tmp_path / "task.yaml")
    monkeypatch.setenv("KEY_ONE", "sk-one-0123456789")
    monkeypatch.setenv("KEY_TWO", "sk-two-0123456789")
    with FakeOpenAI(lambda body: "joy") as one, FakeOpenAI(lambda body: "sadness") as two:
        teachers = {
            "one": {"base_url": one.base_url, "model": "fake-model", "api_key_env": "KEY_ONE"},
            "two": {"base_url": two.base_url, "model": "fake-model", "api_key_env": "KEY_ONE"},
            # the first endpoint again, spelt with a trailing slash and asked with another key
            "one-again": {"base_url": one.base_url + "/", "model": "fake-model", "api_key_env": "KEY_TWO"},
        }
        (ws.root / "protege.yaml").write_text(json.dumps({"teachers": teachers}))
        ws = open_workspace(ws.root)
        first = distill(ws, task, inputs, "one", name="from-one")
        second = distill(ws, task, inputs, "two", name="from-two")
        third = distill(ws, task, inputs, "one-again", name="from-one-again")
    assert (len(one.requests), len(two.requests)) == (4, 4)  # the second endpoint was asked, not the cache
    assert second.stats["requests"] == 4 and second.stats["cache_hits"] == 0
    assert third.stats["requests"] == 0 and third.stats["cache_hits"] == 4  # same endpoint, other key: cached
    assert {r.label for r in load_records(ws.store, "from-one")} == {"joy"}
    assert {r.label for r in load_records(ws.store, "from-two")} == {"sadness"}
    assert {r.label for r in load_records(ws.store, "from-one-again")} == {"joy"}
    assert first.n_records == 4
    endpoints = {json.loads(r[0])["endpoint"] for r in ws.store.query("SELECT request FROM calls")}
    assert endpoints == {one.base_url, two.base_url}
    dump = "\n".join(str(tuple(r)) for r in ws.store.query("SELECT * FROM calls"))
    assert "sk-one" not in dump and "sk-two" not in dump


def test_a_bad_dataset_name_stops_distill_before_any_call(ws, tmp_path):
    inputs = write_inputs(tmp_path / "in.jsonl", 3)
    (tmp_path / "task.yaml").write_text(TASK_YAML)
    with FakeOpenAI(label_responder) as fake:
        configure(ws.root, fake.base_url)
        for bad in ["../../outside", ".hidden"]:
            out = run_cli("-w", str(ws.root), "distill", "task.yaml", "--inputs", str(inputs), "--teacher", "t",
                          "--name", bad)  # fmt: skip
            assert out.returncode == 2 and f"--name {bad!r} is not allowed" in out.stderr, out.stderr
        bad_task = (tmp_path / "task.yaml").read_text().replace("name: emotion", "name: a/b")
        (tmp_path / "slash.yaml").write_text(bad_task)
        out = run_cli("-w", str(ws.root), "distill", "slash.yaml", "--inputs", str(inputs), "--teacher", "t")
        assert out.returncode == 2 and "dataset name 'a/b-distilled' is not allowed" in out.stderr, out.stderr
    assert fake.requests == []


def test_distill_cli_warns_about_terms_and_reports_a_dead_teacher(ws, tmp_path):
    inputs = write_inputs(tmp_path / "in.jsonl", 3)
    (tmp_path / "task.yaml").write_text(TASK_YAML)
    with FakeOpenAI(label_responder) as fake:
        configure(ws.root, fake.base_url, terms="no competing models")
        out = run_cli("-w", str(ws.root), "distill", "task.yaml", "--inputs", str(inputs), "--teacher", "t", "--json")
    assert out.returncode == 0, out.stderr
    assert "no competing models" in out.stderr
    summary = json.loads(out.stdout)
    assert summary["records"] == 3 and summary["rejected"] == 0 and summary["requests"] == 3
    # the teacher is gone: cached answers need no teacher, a new input stops the run with one clear line
    configure(ws.root, fake.base_url, max_retries=1, timeout_s=2)
    out = run_cli("-w", str(ws.root), "distill", "task.yaml", "--inputs", str(inputs), "--teacher", "t", "--name", "x")
    assert out.returncode == 0, out.stderr
    inputs.write_text(inputs.read_text() + '{"text": "tweet number 99"}\n')
    out = run_cli("-w", str(ws.root), "distill", "task.yaml", "--inputs", str(inputs), "--teacher", "t", "--name", "x")
    assert out.returncode == 1 and "run the same command to resume" in out.stderr
    out = run_cli("-w", str(ws.root), "distill", "task.yaml", "--inputs", str(inputs), "--teacher", "nope")
    assert out.returncode == 2 and "unknown teacher 'nope'" in out.stderr


def _sigkill_midway(ws_root: Path, args: list[str], at_least: int, teacher_idle) -> int:
    """Start `protege distill` and SIGKILL it once `at_least` calls are in the cache; returns how many
    calls were cached at the kill."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "protege.cli", "-w", str(ws_root), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PROTEGE_QUIET": "1"},
    )
    db = sqlite3.connect(ws_root / "protege.db", timeout=30)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                n = db.execute("SELECT COUNT(*) FROM calls WHERE kind='teacher'").fetchone()[0]
            except sqlite3.OperationalError:
                n = 0
            if n >= at_least:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"distill ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        teacher_idle()
        return db.execute("SELECT COUNT(*) FROM calls WHERE kind='teacher' AND status='ok'").fetchone()[0]
    finally:
        db.close()


def _cached_inputs(ws_root: Path) -> set[str]:
    db = sqlite3.connect(ws_root / "protege.db")
    rows = db.execute("SELECT request FROM calls WHERE kind='teacher' AND status IN ('ok','rejected')").fetchall()
    db.close()
    return {json.loads(r[0])["messages"][-1]["content"] for r in rows}


def test_sigkill_midway_then_resume_sends_nothing_twice_and_loses_nothing(ws, tmp_path):
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps({"text": f"tweet number {i}"}) + "\n" for i in range(50)))
    (tmp_path / "task.yaml").write_text(TASK_YAML)
    args = ["distill", "task.yaml", "--inputs", str(inputs), "--teacher", "t", "--concurrency", "8"]
    with FakeOpenAI(label_responder, delay=0.3) as fake:
        configure(ws.root, fake.base_url)
        cached = _sigkill_midway(ws.root, args, 12, fake.wait_idle)
        before = len(fake.requests)
        cached_inputs = _cached_inputs(ws.root)
        assert 12 <= cached < 50 and len(cached_inputs) == cached
        out = run_cli("-w", str(ws.root), *args, "--json")
        assert out.returncode == 0, out.stderr
        resumed = [last_user(r) for r in fake.requests[before:]]
    # the resumed run asked exactly for what had no cached answer: nothing twice, nothing skipped
    assert len(resumed) == len(set(resumed)) == 50 - cached
    assert cached <= before <= cached + 8  # only the requests in flight at the kill went unanswered
    assert not set(resumed) & cached_inputs
    assert json.loads(out.stdout)["cache_hits"] == cached
    records = load_records(open_workspace(ws.root).store, "emotion-distilled")
    assert [r.metadata["input"]["text"] for r in records] == [f"tweet number {i}" for i in range(50)]
    assert all(r.review == "pending" and r.label == LABELS[i % 4] for i, r in enumerate(records))


def test_local_in_process_teacher_with_constrained_choices(ws, tmp_path, tiny_model):
    inputs = write_inputs(tmp_path / "in.jsonl", 3)
    task = Task(name="emo", input="Tweet: {{ text }}", output={"kind": "label", "labels": LABELS})
    configure(ws.root, None, model=str(tiny_model), constrained_choices=True, price={})
    ws = open_workspace(ws.root)
    result = distill(ws, task, inputs, "t", concurrency=2)
    records = load_records(ws.store, "emo-distilled")
    assert result.n_rejected == 0 and all(r.label in LABELS for r in records)
    assert records[0].provenance["cost"] > 0  # local compute time at local_compute_per_hour
    assert records[0].provenance["prompt_tokens"] > 0


def _serve_requests(url: str) -> float:
    """Chat requests a `protege serve` has received, from its Prometheus /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or "chat" not in line:
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name.endswith("requests_total"):
            total += float(line.rsplit(" ", 1)[-1])
    return total


def _metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[-1])
    return 0.0


@pytest.mark.slow  # over 10 s
def test_real_protege_serve_teacher_sigkill_and_resume(ws, tmp_path, tiny_model):
    from protege.server_process import ServerProcess

    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps({"text": f"tweet number {i}"}) + "\n" for i in range(50)))
    (tmp_path / "task.yaml").write_text(TASK_YAML)
    args = ["distill", "task.yaml", "--inputs", str(inputs), "--teacher", "t", "-c", "8", "--retries-invalid", "0"]
    with ServerProcess(tiny_model, log_path=tmp_path / "serve.log") as server:
        configure(ws.root, server.base_url, model=str(tiny_model), constrained_choices=True, max_tokens=8)

        def idle() -> None:
            """Until the server has answered what the killed client left in flight."""
            deadline = time.monotonic() + 60
            while _metric(server.url, "protege_requests_active") and time.monotonic() < deadline:
                time.sleep(0.1)

        cached = _sigkill_midway(ws.root, args, 10, idle)
        first = _serve_requests(server.url)
        out = run_cli("-w", str(ws.root), *args, "--json")
        assert out.returncode == 0, out.stderr
        second = _serve_requests(server.url) - first
    assert 10 <= cached < 50 and cached <= first <= cached + 8  # at most the 8 in flight were lost at the kill
    assert second == 50 - cached, (cached, first, second)  # the resumed run asked only for what was not cached
    records = load_records(open_workspace(ws.root).store, "emotion-distilled")
    assert len(records) == 50 and all(r.label in LABELS for r in records)  # constrained: always a label


def test_an_input_missing_a_template_field_names_its_line(ws, tmp_path):
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    (tmp_path / "task.yaml").write_text(TASK_YAML)
    configure(ws.root, f"http://127.0.0.1:{free_port()}/v1", max_retries=0)
    with pytest.raises(DataError, match=r"in\.jsonl:2: task 'emotion': input template needs a field"):
        distill(open_workspace(ws.root), load_task(tmp_path / "task.yaml"), inputs, "t")
    assert open_workspace(ws.root).store.get_run("distill-emotion-distilled")["status"] == "failed"
