"""`protege serve` security, over real HTTP against real child servers: admin endpoints behind their
own key (absent without one), adapters loaded only from under --adapter-dir, keys passed through the
environment (never the command line), and oversize bodies refused with 413 before being read."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import httpx
import pytest

from protege.errors import UserError
from protege.serve.admin import AdminPolicy
from protege.server_process import ServerProcess
from test_serve import make_adapter

KEY = "api-key-7f3a"
ADMIN = "admin-key-91c2"
HELLO = [{"role": "user", "content": "Say something."}]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def folders(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """allowed/good (an adapter), outside (an adapter beside allowed/), allowed/link -> outside."""
    root = tmp_path_factory.mktemp("sec")
    allowed = root / "allowed"
    allowed.mkdir()
    outside = make_adapter(tiny_model, root / "outside", 4)
    make_adapter(tiny_model, allowed / "good", 3)
    (allowed / "link").symlink_to(outside, target_is_directory=True)
    return {"root": root, "allowed": allowed, "outside": outside}


@pytest.fixture(scope="module")
def guarded(tiny_model, folders, tmp_path_factory):
    """API key, admin key, adapters from allowed/ only, bodies up to 1 MiB."""
    args = ["--threads", "1", "--adapter-dir", str(folders["allowed"]), "--max-body-mb", "1"]
    ws = tmp_path_factory.mktemp("ws")
    with ServerProcess(tiny_model, api_key=KEY, admin_key=ADMIN, extra_args=args, workspace=ws) as srv:
        yield srv


@pytest.fixture(scope="module")
def keyless(tiny_model, tmp_path_factory):
    """No keys given, though the parent's environment holds some: the child must not pick them up."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROTEGE_API_KEY", "leaked-from-parent")
        mp.setenv("PROTEGE_ADMIN_KEY", "leaked-admin-from-parent")
        with ServerProcess(tiny_model, extra_args=["--threads", "1"], workspace=tmp_path_factory.mktemp("ws")) as srv:
            yield srv


def load(srv, path: str, name: str = "x", key: str | None = ADMIN) -> httpx.Response:
    headers = bearer(key) if key else {}
    return httpx.post(f"{srv.base_url}/adapters", json={"name": name, "path": path}, headers=headers, timeout=60)


def test_admin_endpoints_do_not_exist_without_an_admin_key(keyless, folders):
    assert httpx.get(f"{keyless.base_url}/models").status_code == 200  # no API key: /v1 is open
    for key in (None, "leaked-admin-from-parent"):
        assert load(keyless, str(folders["allowed"] / "good"), key=key).status_code == 404
        headers = bearer(key) if key else {}
        assert httpx.delete(f"{keyless.base_url}/adapters/x", headers=headers).status_code == 404


def test_admin_endpoints_take_the_admin_key_and_no_other(guarded):
    for key in (None, KEY, "wrong"):
        refused = load(guarded, "good", key=key)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    assert load(guarded, "good", name="good").status_code == 200
    assert httpx.get(f"{guarded.base_url}/models", headers=bearer(ADMIN)).status_code == 401  # not an API key
    ids = {m["id"] for m in httpx.get(f"{guarded.base_url}/models", headers=bearer(KEY)).json()["data"]}
    assert "good" in ids
    assert httpx.delete(f"{guarded.base_url}/adapters/good", headers=bearer(KEY)).status_code == 401
    assert httpx.delete(f"{guarded.base_url}/adapters/good", headers=bearer(ADMIN)).status_code == 200
    # the last adapter gone, the bare base answers, and an adapter loads again
    chat = {"messages": HELLO, "max_tokens": 2}
    assert httpx.post(f"{guarded.base_url}/chat/completions", json=chat, headers=bearer(KEY)).status_code == 200
    assert load(guarded, "good", name="good").status_code == 200
    answered = httpx.post(f"{guarded.base_url}/chat/completions", json=chat | {"model": "good"}, headers=bearer(KEY))
    assert answered.status_code == 200, answered.text
    assert httpx.delete(f"{guarded.base_url}/adapters/good", headers=bearer(ADMIN)).status_code == 200


def test_adapters_load_only_from_under_the_adapter_dir(guarded, folders):
    outside, root = folders["outside"], folders["root"]
    attempts = {
        "outside, exists": str(outside),
        "outside, missing": str(root / "no-such-adapter"),
        "dot-dot escape": "../outside",
        "dot-dot inside a path": "good/../../outside",
        "symlink out": "link",
        "system folder": "/etc",
        "inside, missing": "missing",
        "hub id (not enabled)": "HuggingFaceTB/some-adapter",
    }
    messages = {}
    for what, path in attempts.items():
        resp = load(guarded, path)
        assert resp.status_code == 400, (what, resp.text)
        error = resp.json()["error"]
        assert error["param"] == "path"
        messages[what] = error["message"].replace(repr(path), "PATH")
    # one answer for all of them: nothing tells an existing path outside from a missing one
    assert len(set(messages.values())) == 1, messages
    ids = {m["id"] for m in httpx.get(f"{guarded.base_url}/models", headers=bearer(KEY)).json()["data"]}
    assert not ids & {"x"}


def test_hub_adapters_only_when_asked(folders):
    allowed = (folders["allowed"],)
    assert AdminPolicy(ADMIN, allowed, allow_hub=True).adapter_source("org/name") == "org/name"
    good = folders["allowed"].resolve() / "good"
    assert AdminPolicy(ADMIN, allowed, allow_hub=True).adapter_source("good") == str(good)
    for policy, path in [
        (AdminPolicy(ADMIN, allowed), "org/name"),
        (AdminPolicy(ADMIN, allowed, allow_hub=True), "../outside"),
        (AdminPolicy(ADMIN, allowed, allow_hub=True), str(folders["outside"])),
        (AdminPolicy(ADMIN, (), allow_hub=False), "good"),
    ]:
        with pytest.raises(UserError):
            policy.adapter_source(path)


def test_keys_reach_the_child_through_its_environment(guarded, keyless):
    cmdline = Path(f"/proc/{guarded.proc.pid}/cmdline").read_bytes().decode()
    assert "serve" in cmdline and KEY not in cmdline and ADMIN not in cmdline and "--api-key" not in cmdline
    environ = Path(f"/proc/{guarded.proc.pid}/environ").read_bytes().split(b"\0")
    assert f"PROTEGE_API_KEY={KEY}".encode() in environ
    assert httpx.get(f"{guarded.base_url}/models").status_code == 401
    assert httpx.get(f"{guarded.base_url}/models", headers=bearer(KEY)).status_code == 200
    # keys the caller did not give stay out of the child, even when the parent's environment has them
    assert not [v for v in Path(f"/proc/{keyless.proc.pid}/environ").read_bytes().split(b"\0") if b"leaked" in v]
    assert httpx.get(f"{keyless.base_url}/models").status_code == 200


def test_oversize_bodies_are_refused_before_they_are_read(guarded):
    url = f"{guarded.base_url}/chat/completions"
    big = json.dumps({"model": "x", "messages": [{"role": "user", "content": "word " * 420_000}]}).encode()
    assert len(big) > 2**21
    declared = httpx.post(url, content=big, headers={**bearer(KEY), "Content-Type": "application/json"}, timeout=60)
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: the size is counted as the body streams in
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    streamed = httpx.post(
        url, content=chunks(), headers={**bearer(KEY), "Content-Type": "application/json"}, timeout=60
    )
    assert streamed.status_code == 413

    # a declared length over the limit is answered at once, without waiting for a byte of the body
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000000\r\n\r\n"
        )
        assert s.recv(4096).startswith(b"HTTP/1.1 413")

    # under the limit a body is read and checked as usual (here: too long for the context window)
    small = {"model": os.fspath(guarded.model), "messages": [{"role": "user", "content": "word " * 150_000}]}
    under = httpx.post(url, json=small, headers=bearer(KEY), timeout=60)
    assert under.status_code == 400 and under.json()["error"]["code"] == "context_length_exceeded"
    ok = httpx.post(url, json={"messages": HELLO, "max_tokens": 2}, headers=bearer(KEY), timeout=60)
    assert ok.status_code == 200, ok.text  # the server is fine
