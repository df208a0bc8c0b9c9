"""The review page in a real browser: Playwright drives Debian's chromium (`executable_path`; Playwright's
own browser download cannot work offline). Five records are reviewed by keyboard only (accept, edit a
label, reject, undo), the server is killed and restarted, and every action is in the database and in
`protege review stats`. The page's round trip (keypress to the next record painted) is measured here."""

from __future__ import annotations

import json
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time

import httpx
import pytest

from conftest import free_port, run_cli
from protege.data.records import Record, load_records, save_dataset
from protege.review import predictions as P

LABELS = ["anger", "joy", "optimism", "sadness"]
TEXTS = [
    "the bus left without me again", "my sister got the job she wanted", "tomorrow is a fresh start for all of us",
    "I miss my grandmother every single day", "who keeps parking in my spot", "best concert of my whole life",
    "rain all week and no umbrella", "we finally adopted the puppy",
]  # fmt: skip
TEACHER = ["anger", "joy", "optimism", "sadness", "anger", "joy", "sadness", "joy"]
MARGINS = [0.9, 0.2, 1.5, 0.1, 2.5, 0.4, 3.0, 0.6]  # the page starts with record 3, then 1, 5, 7, 0, ...
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if path is None:
        pytest.skip("chromium is not installed (make test installs Debian's package): the page cannot be driven")
    return path


def _dataset(ws, tmp_path):
    task_file = tmp_path / "emo.yaml"
    task_file.write_text(f"name: emo\ninput: 'Tweet: {{{{ text }}}}'\noutput: {{kind: label, labels: {LABELS}}}\n")
    from protege.tasks import load_task

    task = load_task(task_file)
    records = [
        Record(messages=task.student_messages({"text": t}) + [{"role": "assistant", "content": a}], label=a,
               metadata={"input": {"text": t}}, provenance={"teacher": "big-teacher", "call_id": 100 + i})
        for i, (t, a) in enumerate(zip(TEXTS, TEACHER, strict=True))
    ]  # fmt: skip
    info = save_dataset(ws.store, "tweets", records)
    preds = []
    for m in MARGINS:
        scores = {"anger": -1.0, "joy": -1.0 - m, "optimism": -6.0, "sadness": -7.0}
        preds.append(P.Prediction("anger", "student-v1", scores))
    P.write(P.default_path(ws.artifacts, "tweets"), load_records(ws.store, "tweets"), preds)
    return task_file, info


def _serve(ws, task_file, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "protege", "-w", str(ws.root), "review", "serve", "tweets", "--task", str(task_file),
         "--port", str(port), "--reviewer", "ann"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"review serve exited: {proc.stdout.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("review serve did not start in 60 s")


def test_keyboard_review_survives_a_killed_server(ws, tmp_path):
    executable = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (pip install playwright)")
    task_file, _ = _dataset(ws, tmp_path)
    port = free_port()
    server = _serve(ws, task_file, port)
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            shown = lambda: int(page.get_attribute("#record section.record", "data-idx"))  # noqa: E731

            def press(key: str) -> None:
                before = shown()
                page.keyboard.press(key)
                page.wait_for_function(f"document.querySelector('#record section.record').dataset.idx !== '{before}'")

            order = [shown()]
            assert order == [3] and "student-v1" in page.inner_text("#record")  # least certain first, model shown
            press("a")  # 1: accept record 3 (teacher: sadness)
            order.append(shown())
            page.keyboard.press("e")  # 2: edit record 1's label: e, then 3 = optimism (teacher said joy)
            assert "pick a label" in page.inner_text("#message")
            press("3")
            order.append(shown())
            press("r")  # 3: reject record 5
            order.append(shown())
            press("a")  # 4: accept record 7
            press("u")  # undo 4: record 7 is shown again
            assert shown() == order[-1] and "undone" in page.inner_text("#message")
            press("a")  # 4 again
            order.append(shown())
            press("a")  # 5: accept record 0
            assert order == [3, 1, 5, 7, 0]
            page.keyboard.press("?")
            assert page.is_visible("#help") and "undo" in page.inner_text("#help")
            page.keyboard.press("?")
            timings = page.evaluate("window.reviewTimings")
            assert "5 / 8 reviewed" in page.inner_text("#progress")

            server.kill()  # mid-review: nothing acknowledged may be lost
            server.wait(10)
            page.keyboard.press("a")
            page.wait_for_function("document.querySelector('#message').textContent.includes('not saved')")
            server = _serve(ws, task_file, port)
            page.reload()
            assert "5 / 8 reviewed" in page.inner_text("#progress") and shown() == 2
            browser.close()
    finally:
        server.kill()
        server.wait(10)

    rows = (
        sqlite3.connect(ws.root / "protege.db")
        .execute(
            "SELECT idx, reviewer, action, status, json_extract(new_value, '$.answer') FROM review_actions ORDER BY id"
        )
        .fetchall()
    )
    assert rows == [
        (3, "ann", "accept", "accepted", "sadness"), (1, "ann", "edit", "edited", "optimism"),
        (5, "ann", "reject", "rejected", "joy"), (7, "ann", "accept", "accepted", "joy"),
        (7, "ann", "undo", "pending", "joy"), (7, "ann", "accept", "accepted", "joy"),
        (0, "ann", "accept", "accepted", "anger"),
    ]  # fmt: skip
    stats = run_cli("review", "stats", "tweets", "--json", env={"PROTEGE_WORKSPACE": str(ws.root)})
    assert stats.returncode == 0, stats.stderr
    s = json.loads(stats.stdout)
    assert {k: s[k] for k in ("total", "accepted", "edited", "rejected", "pending")} == {
        "total": 8, "accepted": 3, "edited": 1, "rejected": 1, "pending": 3,
    }  # fmt: skip
    assert s["by_reviewer"]["ann"]["actions"] == 7 and s["undone"] == 1
    assert s["mean_seconds_per_review"] is not None
    # keypress -> stored -> next record painted, on this machine
    print(f"page round trip, keypress to next record painted: p50 {statistics.median(timings):.1f} ms over "
          f"{len(timings)} keypresses (max {max(timings):.1f} ms)")  # fmt: skip
    assert len(timings) >= 7 and statistics.median(timings) < 100, timings
