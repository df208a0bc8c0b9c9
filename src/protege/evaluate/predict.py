"""Asking one model every record: teachers over their own endpoint, local models through a
`protege serve` child process, all with the official openai client.

Label tasks use constrained choice, so every model answers with a label and the comparison measures
knowledge, not formatting luck. Requests go one at a time so latency is the per-request figure a
user of a single endpoint sees; an adapter is served merged into its base (`protege serve
--merge`), as one student is deployed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from protege.data.records import Record
from protege.evaluate.prompts import student_messages, teacher_messages
from protege.evaluate.specs import LOCAL_HOSTS, ModelSpec
from protege.log import progress
from protege.tasks import Task


@dataclass
class Answers:
    """One model's answers to every record, in order, and how it was served."""

    predictions: list[dict[str, Any]] = field(default_factory=list)
    dtype: str | None = None
    """The weights' dtype as the server reports it (GET /health `dtype`); None when it does not say."""


def predict(
    spec: ModelSpec, task: Task, records: list[Record], max_tokens: int, workspace_root: Path | None = None
) -> Answers:
    """Answers of one model to every record, in order."""
    if spec.teacher:
        t = spec.teacher
        client = _client(t.base_url, os.environ.get(t.api_key_env or ""), t.timeout_s, t.max_retries)
        constrained = task.output.kind == "label" and t.constrained_choices
        tokens = min(max_tokens, t.max_tokens) if task.output.kind != "label" else max_tokens
        prompts = [teacher_messages(task, r) for r in records]
        local = urlparse(t.base_url or "").hostname in LOCAL_HOSTS
        dtype = server_dtype(t.base_url) if local else None
        return Answers(_predict_all(spec, client, t.model, prompts, task, constrained, tokens), dtype)
    from protege.server_process import ServerProcess

    # an adapter is served folded into its base, as a single student is deployed (PEFT's separate
    # LoRA matmuls would add ~20% to every request on CPU)
    merge = ["--merge"] if (Path(spec.path) / "adapter_config.json").exists() else []
    with ServerProcess(spec.path, workspace=workspace_root, extra_args=merge) as srv:
        client = _client(srv.base_url, None)
        prompts = [student_messages(task, r) for r in records]
        preds = _predict_all(spec, client, spec.path, prompts, task, task.output.kind == "label", max_tokens)
        return Answers(preds, server_dtype(srv.base_url))


def call_one(
    client: Any, model: str, messages: list[dict[str, str]], task: Task, constrained: bool, max_tokens: int
) -> dict[str, Any]:
    """One request; returns the answer, latency and token counts (errors are kept, not raised)."""
    kwargs: dict[str, Any] = {"model": model, "messages": messages, "temperature": 0.0, "max_tokens": max_tokens}
    if constrained:
        kwargs["extra_body"] = {"choices": task.labels}
    start = time.perf_counter()
    try:
        resp = client.chat.completions.create(**kwargs)
    except Exception as e:  # one failed request is a wrong answer with its reason, not a failed eval
        return {"output": None, "error": f"{type(e).__name__}: {e}"[:300], "latency_ms": _ms(start)}
    latency = _ms(start)
    usage = resp.usage
    return {
        "output": resp.choices[0].message.content or "",
        "latency_ms": latency,
        "prompt_tokens": getattr(usage, "prompt_tokens", 0) or 0,
        "completion_tokens": getattr(usage, "completion_tokens", 0) or 0,
        "choice_scores": (resp.model_extra or {}).get("choice_scores"),
    }


def server_dtype(base_url: str | None) -> str | None:
    """The dtype a `protege serve` at `base_url` (…/v1) reports on /health, if it reports one."""
    import httpx

    root = (base_url or "").rstrip("/").removesuffix("/v1")
    try:
        value = httpx.get(f"{root}/health", timeout=2).json().get("dtype")
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return str(value) if value else None


def _predict_all(
    spec: ModelSpec, client: Any, model: str, prompts: list, task: Task, constrained: bool, max_tokens: int
) -> list[dict[str, Any]]:
    out = []
    with progress() as bar:
        job = bar.add_task(f"eval {spec.label}", total=len(prompts))
        for messages in prompts:
            out.append(call_one(client, model, messages, task, constrained, max_tokens))
            bar.advance(job)
    return out


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def _client(base_url: str, api_key: str | None, timeout: float = 600, retries: int = 2) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=base_url, api_key=api_key or "none", timeout=timeout, max_retries=retries)
