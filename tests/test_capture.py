"""The capture proxy, end to end: the official openai client -> `protege capture` (a real server
on 127.0.0.1) -> a real upstream; then feedback and `protege logs export`."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest
import uvicorn

from conftest import free_port, run_cli
from fake_openai import FakeOpenAI
from protege.data.records import load_records
from protege.teachers.capture import SECRET_PATTERNS, SSEAssembler, create_app, parse_tags, redact
from protege.teachers.logs import list_calls

SECRET = "sk-test-SECRET-0123456789abcdef"


@pytest.fixture
def proxy(ws):
    """An upstream fake and the proxy in front of it, both real HTTP servers in threads."""
    with FakeOpenAI(lambda body: "The answer is forty two") as upstream:
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(ws.store, upstream.base_url), port=port, log_level="error"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.02)
        try:
            yield f"http://127.0.0.1:{port}", upstream
        finally:
            server.should_exit = True
            thread.join(timeout=10)


def test_redaction_and_tags():
    body = {"api_key": "abc", "nested": [{"Authorization": "x", "text": f"my key is {SECRET}"}], "n": 1}
    assert redact(body) == {
        "api_key": "[redacted]",
        "nested": [{"Authorization": "[redacted]", "text": "my key is [redacted]"}],
        "n": 1,
    }
    assert parse_tags("a, b", {"tags": "c", "user": "u1"}) == ["a", "b", "c", "user=u1"]
    sse = SSEAssembler()
    for piece in [
        b'data: {"choices":[{"index":0,"delta":{"content":"Hel',
        b'lo"}}]}\n\ndata: {"choices"',
        b':[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\ndata: [DONE]\n\n',
    ]:
        sse.feed(piece)
    assert sse.response()["text"] == "Hello" and sse.response()["usage"]["completion_tokens"] == 1


# One credential of each kind redaction must catch by its shape (all fake, in the providers' formats).
SHAPED_SECRETS = {
    "openai/anthropic (sk-, pk-, rk-, ak-)": [
        "sk-proj-Ab12Cd34Ef56Gh78",
        "sk-ant-api03-Zy98Xw76Vu54",
        "rk-Ab12Cd34Ef56",
    ],
    "stripe (sk_live_, ...)": ["sk_live_4eC39HqLyjWDarjtT1zdp7dc"],
    "hugging face (hf_)": ["hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345"],
    "google (AIza)": ["AIzaSyA-1234567890abcdefghijklmnopqrstu"],
    "github (ghp_, gho_, ghu_, ghs_, ghr_)": [
        "ghp_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
        "gho_16C7e42F292c6912E7710c8",
    ],
    "github fine-grained (github_pat_)": ["github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz"],
    "aws access key id (AKIA, ASIA)": ["AKIAIOSFODNN7EXAMPLE", "ASIAY34FZKBOKMUTVV7A"],
    "groq (gsk_)": ["gsk_AbCdEfGhIjKlMnOpQrStUvWxYz0123"],
    "slack (xoxb-, xoxp-, xoxa-, ...)": [
        "xoxb-123456789012-1234567890123-AbCdEfGh",
        "xoxp-1234-5678-abcdEFGH",
        "xoxa-2-ABCDEFGHIJ",
    ],
    "jwt": ["eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"],
    "private key block": ["-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----"],
    "authorization header value": ["Bearer abcdefghijklmnop0123", "Basic dXNlcjpwYXNzd29yZDEyMw=="],
}
# Credentials that have no telling shape, caught by the field (or assignment) that holds them.
FIELD_SECRETS = {
    "api_key": "plainkey-1111",
    "apiKey": "plainkey-2222",
    "x-api-key": "plainkey-3333",
    "password": "hunter2-4444",
    "passwd": "hunter2-5555",
    "secret": "s3cr3t-6666",
    "client_secret": "s3cr3t-7777",
    "token": "tok-8888",
    "access_token": "tok-9999",
    "idToken": "tok-aaaa",
    "authorization": "custom-bbbb",
    "Authorization": "custom-cccc",
    "aws_secret_access_key": "wJalrXUtnFEMI-dddd",
    "credentials": "cred-eeee",
}
ASSIGNED_SECRETS = {
    "password=hunter2-ffff in a pasted config": "hunter2-ffff",
    'a pasted JSON {"api_key": "plainkey-gggg"}': "plainkey-gggg",
    "a URL https://x.example/v1?access_token=tok-hhhh&x=1": "tok-hhhh",
}


def test_every_kind_of_secret_pattern_is_covered_by_a_test():
    assert set(SHAPED_SECRETS) == set(SECRET_PATTERNS)


@pytest.mark.parametrize("kind", sorted(SHAPED_SECRETS))
def test_a_credential_is_redacted_by_its_shape(kind):
    for secret in SHAPED_SECRETS[kind]:
        out = redact({"messages": [{"role": "user", "content": f"before {secret} after"}], "note": secret})
        text = json.dumps(out)
        assert secret not in text and secret.split("\n")[0] not in text, (kind, secret)
        assert out["messages"][0]["content"] == "before [redacted] after" and out["note"] == "[redacted]"


@pytest.mark.parametrize("field", sorted(FIELD_SECRETS))
def test_a_field_named_like_a_credential_is_redacted(field):
    body = {field: FIELD_SECRETS[field], "extra_body": {"nested": [{field: FIELD_SECRETS[field]}]}}
    assert redact(body) == {field: "[redacted]", "extra_body": {"nested": [{field: "[redacted]"}]}}


@pytest.mark.parametrize("text", sorted(ASSIGNED_SECRETS))
def test_a_credential_assigned_inside_a_string_is_redacted(text):
    out = redact({"content": text})["content"]
    assert ASSIGNED_SECRETS[text] not in out and "[redacted]" in out


def test_ordinary_fields_and_text_are_kept():
    body = {
        "model": "gpt-4o-mini",
        "max_tokens": 64,
        "max_completion_tokens": 64,
        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
        "prompt_cache_key": "user-7",
        "tools": [{"function": {"parameters": {"properties": {"password": {"type": "string", "minLength": 8}}}}}],
        "messages": [{"role": "user", "content": "What tokens does a 'sk-' prefix use? Tell me about skiing."}],
        "stream": True,
        "logprobs": False,
    }
    assert redact(body) == body


def test_no_credential_reaches_the_database_the_logs_or_an_export(ws, proxy, tmp_path):
    """Secrets everywhere a client can put them: the key, message text, extra body fields, metadata
    tags, an echoed answer and feedback. None may be stored, listed or exported."""
    url, upstream = proxy
    upstream.responder = lambda body: "you said: " + body["messages"][-1]["content"]
    shaped = [s for kind in SHAPED_SECRETS.values() for s in kind]
    secrets = shaped + list(FIELD_SECRETS.values()) + list(ASSIGNED_SECRETS.values()) + [SECRET]
    text = "my keys: " + " ; ".join(shaped) + " and " + " ; ".join(ASSIGNED_SECRETS)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=SECRET, max_retries=0)
    messages = [{"role": "user", "content": text}]
    extra = {"extra_body": dict(FIELD_SECRETS), "extra_headers": {"X-Protege-Tags": f"leak,{shaped[0]}"}}
    meta = {"tags": "leak", "api_key": "plainkey-1111", "password": "hunter2-4444"}
    plain = client.chat.completions.with_raw_response.create(model="m", messages=messages, metadata=meta, **extra)
    stream = client.chat.completions.create(model="m", messages=messages, stream=True, **extra)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices).startswith("you said: my keys")
    call_id = int(plain.headers["x-protege-call-id"])
    assert upstream.requests[0]["password"] == "hunter2-4444"  # forwarded unchanged, only never stored
    feedback = {"call_id": call_id, "rating": 5, "correction": f"fixed, key {shaped[1]}", "comment": shaped[2]}
    assert httpx.post(f"{url}/v1/feedback", json=feedback).status_code == 200

    listed = run_cli("-w", str(ws.root), "logs", "list", "--json")
    exported = run_cli("-w", str(ws.root), "logs", "export", "--tag", "leak", "--name", "leak", "--json")
    out = tmp_path / "leak.jsonl"
    written = run_cli(
        "-w", str(ws.root), "data", "export", "leak", "-f", "openai-chat", "-o", str(out), "--status", "all"
    )
    assert listed.returncode == exported.returncode == written.returncode == 0, exported.stderr + written.stderr
    assert json.loads(exported.stdout)["n_records"] == 2 and "[redacted]" in out.read_text()
    ws.store.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    stored = b"".join(p.read_bytes() for p in ws.root.glob("protege.db*"))
    for secret in secrets:
        for where, content in [("logs list", listed.stdout), ("export", out.read_text())]:
            assert secret not in content, (secret, where)
        assert secret.encode() not in stored, secret


def test_proxy_logs_streamed_and_plain_calls_redacts_keys_takes_feedback_and_exports(ws, proxy):
    url, upstream = proxy
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=SECRET, max_retries=0)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is six times seven?"}]

    raw = client.chat.completions.with_raw_response.create(
        model="fake-model",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"X-Protege-Tags": "math,prod"},
        extra_body={"api_key": SECRET},
    )
    streamed_id = int(raw.headers["x-protege-call-id"])
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "The answer is forty two"  # the stream arrives unchanged, chunk by chunk
    assert len(chunks) >= 6 and chunks[-1].usage.completion_tokens == 5

    plain = client.chat.completions.with_raw_response.create(
        model="fake-model", messages=messages, metadata={"tags": "math", "user": "u7"}
    )
    plain_id = int(plain.headers["x-protege-call-id"])
    assert plain.parse().choices[0].message.content == "The answer is forty two"
    assert [m.id for m in client.models.list().data] == ["fake-model"]  # /v1/models passes through

    # the upstream got the caller's key; the workspace never stores it
    assert all(h["authorization"] == f"Bearer {SECRET}" for h in upstream.headers)
    assert upstream.requests[0]["api_key"] == SECRET and "x-protege-tags" not in upstream.headers[0]
    assert upstream.headers[0]["accept-encoding"] == "identity"  # so the relayed stream is plain SSE
    dump = "\n".join(str(tuple(r)) for r in ws.store.query("SELECT * FROM calls"))
    assert "SECRET" not in dump and "[redacted]" in dump

    calls = {c["id"]: c for c in list_calls(ws.store, tag="math")}
    assert set(calls) == {streamed_id, plain_id}
    streamed = calls[streamed_id]
    assert streamed["status"] == "ok" and streamed["response"]["text"] == "The answer is forty two"
    assert streamed["response"]["stream"] is True and streamed["completion_tokens"] == 5
    assert streamed["tags"] == ["math", "prod"] and streamed["latency_ms"] > 0
    assert calls[plain_id]["tags"] == ["math", "user=u7"] and calls[plain_id]["prompt_tokens"] == 10

    fb = httpx.post(f"{url}/v1/feedback", json={"call_id": streamed_id, "rating": 5, "comment": "good"})
    assert fb.status_code == 200
    fb = httpx.post(f"{url}/v1/feedback", json={"call_id": plain_id, "rating": 4, "correction": "42"})
    assert fb.status_code == 200
    assert httpx.post(f"{url}/v1/feedback", json={"call_id": 999, "rating": 1}).status_code == 404
    assert httpx.post(f"{url}/v1/feedback", json={"rating": 1}).status_code == 422

    out = run_cli(
        "-w", str(ws.root), "logs", "export", "--tag", "math", "--min-rating", "4", "--name", "math-logs", "--json"
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["n_records"] == 2
    records = load_records(ws.store, "math-logs")
    assert [r.completion for r in records] == ["The answer is forty two", "42"]  # the correction replaces it
    assert [m.model_dump() for m in records[1].messages][:2] == messages
    assert [r.review for r in records] == ["accepted", "edited"]
    assert records[1].provenance["call_id"] == plain_id and records[1].metadata["original"] == "The answer is forty two"

    out = run_cli("-w", str(ws.root), "logs", "export", "--tag", "math", "--min-rating", "5", "--name", "best")
    assert out.returncode == 0 and len(load_records(ws.store, "best")) == 1
    out = run_cli("-w", str(ws.root), "logs", "export", "--tag", "nothing", "--name", "empty")
    assert out.returncode == 1 and "no captured calls tagged 'nothing'" in out.stderr
    out = run_cli("-w", str(ws.root), "logs", "list", "--json")
    assert {c["id"] for c in json.loads(out.stdout)} == {streamed_id, plain_id}


def test_proxy_reports_an_unreachable_upstream(ws):
    app = create_app(ws.store, f"http://127.0.0.1:{free_port()}/v1")
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        resp = client.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert resp.status_code == 502
    call = list_calls(ws.store)[0]
    assert call["id"] == int(resp.headers["x-protege-call-id"]) and call["status"] == "error"
    assert "upstream unreachable" in call["error"]


def test_capture_command_serves(ws, tmp_path):
    """`protege capture` as a user runs it: a subprocess in front of the fake upstream."""
    import subprocess
    import sys

    with FakeOpenAI() as upstream:
        port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "protege.cli",
            "-w",
            str(ws.root),
            "capture",
            "--upstream",
            upstream.base_url,
            "--port",
            str(port),
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=SECRET, max_retries=0)
            answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "ping"}])
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    assert answer.choices[0].message.content == "echo: ping"
    assert list_calls(ws.store)[0]["response"]["text"] == "echo: ping"
