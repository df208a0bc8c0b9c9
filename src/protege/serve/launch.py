"""Start `protege serve` as a child process and wait until it answers /health.

Teachers, evaluation, the demo, tests and benchmarks all talk to local models over HTTP through
this, so every path exercises the real server, exactly as a user's client would.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from protege.errors import ProtegeError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`with ServerProcess("smollm2-135m-instruct") as srv: OpenAI(base_url=srv.base_url, ...)`"""

    def __init__(
        self,
        model: str | Path,
        adapters: dict[str, str | Path] | None = None,
        port: int | None = None,
        api_key: str | None = None,
        extra_args: list[str] | None = None,
        workspace: str | Path | None = None,
        startup_timeout: float = 300.0,
        log_path: str | Path | None = None,
    ):
        self.model = str(model)
        self.adapters = {k: str(v) for k, v in (adapters or {}).items()}
        self.port = port or free_port()
        self.api_key = api_key
        self.extra_args = extra_args or []
        self.workspace = workspace
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def start(self) -> ServerProcess:
        cmd = [sys.executable, "-m", "protege.cli"]
        if self.workspace:
            cmd += ["--workspace", str(self.workspace)]
        cmd += ["serve", self.model, "--host", "127.0.0.1", "--port", str(self.port)]
        for name, path in self.adapters.items():
            cmd += ["--adapter", f"{name}={path}"]
        if self.api_key:
            cmd += ["--api-key", self.api_key]
        cmd += self.extra_args
        self._log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=self._log, env={**os.environ})
        self._wait_healthy()
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ProtegeError(f"protege serve {self.model} exited with code {self.proc.returncode} at start-up")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise ProtegeError(f"protege serve {self.model} did not become healthy in {self.startup_timeout:.0f}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
