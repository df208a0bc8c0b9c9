"""Start `protege serve` as a child process and wait until it answers /health.

Teachers, evaluation, the demo, tests and benchmarks all talk to local models over HTTP through
this, so every path exercises the real server, exactly as a user's client would. It lives in the
base, not in serve/: it starts the `protege serve` command and imports none of the server, so the
stages before serve (teachers, evaluate) may use it.

Keys reach the child through its environment (PROTEGE_API_KEY, PROTEGE_ADMIN_KEY), never its
command line, which any user of the machine can read in `ps`. The child's output is kept in the
workspace (artifacts/logs/serve-*.log); when the child dies at start-up its last lines are the error.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

import httpx

from protege.errors import ProtegeError
from protege.paths import default_workspace

LOG_TAIL_LINES = 25
SECRET_ENV = ("PROTEGE_API_KEY", "PROTEGE_ADMIN_KEY")


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
        admin_key: str | None = None,
    ):
        """`log_path` defaults to WORKSPACE/artifacts/logs/serve-TIME-MODEL-PORT.log (the default
        workspace when none is given); secrets in `extra_args` would show in `ps`: use the keys."""
        self.model = str(model)
        self.adapters = {k: str(v) for k, v in (adapters or {}).items()}
        self.port = port or free_port()
        self.api_key = api_key
        self.admin_key = admin_key
        self.extra_args = extra_args or []
        self.workspace = workspace
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path) if log_path else self._default_log()
        self.proc: subprocess.Popen | None = None
        self._log = None

    def _default_log(self) -> Path:
        root = (Path(self.workspace) if self.workspace else default_workspace()).resolve()
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(self.model).name or self.model)[-60:]
        return root / "artifacts" / "logs" / f"serve-{time.strftime('%Y%m%d-%H%M%S')}-{slug}-{self.port}.log"

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
        cmd += self.extra_args
        env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}  # only the keys given here
        env |= {k: v for k, v in zip(SECRET_ENV, (self.api_key, self.admin_key), strict=True) if v}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self._wait_healthy()
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise ProtegeError(
                    f"protege serve {self.model} exited with code {self.proc.returncode} at start-up" + self._log_tail()
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise ProtegeError(
            f"protege serve {self.model} did not become healthy in {self.startup_timeout:.0f}s" + self._log_tail()
        )

    def _log_tail(self) -> str:
        """The last lines of the child's log, for an error message."""
        try:
            with self.log_path.open(errors="replace") as f:
                lines = deque(f, maxlen=LOG_TAIL_LINES)
        except OSError:
            return ""
        tail = "".join(lines).rstrip()
        return f"; last lines of its log {self.log_path}:\n{tail}" if tail else f" (its log {self.log_path} is empty)"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
