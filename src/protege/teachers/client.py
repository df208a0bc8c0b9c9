"""One interface over teacher backends: any OpenAI-compatible endpoint, or a model run in-process.

The HTTP backend uses the official `openai` AsyncOpenAI client with its own retries switched
off (`max_retries=0`) so that one policy applies everywhere: exponential backoff with full
jitter on 429, 5xx, timeouts, dropped connections and malformed bodies, honouring the server's
`Retry-After`. A 4xx other than 408/409/429 is the request's own fault and is not retried.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import openai

from protege.config import TeacherConfig
from protege.errors import ProtegeError, UserError

RETRYABLE_STATUS = {408, 409, 429}
MAX_BACKOFF_S = 30.0
MAX_RETRY_AFTER_S = 120.0


class TeacherError(ProtegeError):
    """The teacher could not answer. `retryable` False means the request itself was refused
    (e.g. 400: context too long): that input is rejected, the run goes on."""

    def __init__(self, message: str, retryable: bool = True, status: int | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.status = status


@dataclass
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    attempts: int = 1
    raw: dict[str, Any] = field(default_factory=dict)
    """The response body as JSON (for the calls table)."""


class Teacher(Protocol):
    model: str

    async def complete(self, messages: list[dict[str, str]], params: dict[str, Any]) -> Completion: ...

    async def aclose(self) -> None: ...


@dataclass
class RetryPolicy:
    max_retries: int = 5
    base_s: float = 0.5
    max_s: float = MAX_BACKOFF_S

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `attempt` (0-based). Full jitter (AWS architecture
        blog) spreads a burst of 429s from many concurrent workers; a server-given Retry-After
        is a floor, never shortened by jitter."""
        backoff = random.uniform(0, min(self.max_s, self.base_s * 2**attempt))
        if retry_after is not None:
            return max(min(retry_after, MAX_RETRY_AFTER_S), backoff)
        return backoff


def parse_retry_after(headers: Any) -> float | None:
    """`Retry-After` (seconds or an HTTP date) or `retry-after-ms`, as seconds."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def classify_error(exc: BaseException) -> tuple[bool, float | None, int | None]:
    """(retryable, retry_after_s, status) for an exception raised by one HTTP attempt."""
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        retryable = status in RETRYABLE_STATUS or status >= 500
        return retryable, parse_retry_after(exc.response.headers), status
    if isinstance(exc, openai.APIConnectionError | openai.APIResponseValidationError | ValueError | KeyError):
        return True, None, None  # timeouts, resets, malformed JSON bodies
    if isinstance(exc, TeacherError):
        return exc.retryable, None, exc.status
    return False, None, None


class HttpTeacher:
    """An OpenAI-compatible endpoint: OpenAI, vLLM, llama.cpp server, Ollama, `protege serve`.

    Constrained choice (`extra_body.choices`) is scored by the server, never tokenised here:
    `protege serve` scores it with models/choice.py, the same scorer as LocalTeacher and training,
    and the answer text goes through the task's one label parser (tasks.match_label) like any other."""

    def __init__(self, config: TeacherConfig, name: str = "teacher"):
        key = os.environ.get(config.api_key_env) if config.api_key_env else None
        self.name = name
        self.model = config.model
        self.policy = RetryPolicy(max_retries=config.max_retries)
        self.client = openai.AsyncOpenAI(
            base_url=config.base_url,
            api_key=key or "not-needed",  # local servers take any key; the client insists on one
            max_retries=0,
            timeout=config.timeout_s,
        )

    async def complete(self, messages: list[dict[str, str]], params: dict[str, Any]) -> Completion:
        start = time.perf_counter()
        attempt = 0
        while True:
            try:
                comp = await self._attempt(messages, params)
                comp.latency_ms = (time.perf_counter() - start) * 1000
                comp.attempts = attempt + 1
                return comp
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # classified below: anything unknown is not retried
                retryable, retry_after, status = classify_error(exc)
                message = f"teacher {self.name!r} ({self.model}): {type(exc).__name__}: {str(exc)[:200]}"
                if not retryable:
                    raise TeacherError(message, retryable=False, status=status) from exc
                if attempt >= self.policy.max_retries:
                    raise TeacherError(f"{message} (after {attempt + 1} attempts)", status=status) from exc
                await asyncio.sleep(self.policy.delay(attempt, retry_after))
                attempt += 1

    async def _attempt(self, messages: list[dict[str, str]], params: dict[str, Any]) -> Completion:
        params = dict(params)
        extra_body = params.pop("extra_body", None)
        resp = await self.client.chat.completions.create(
            model=self.model, messages=messages, extra_body=extra_body, **params
        )
        if not isinstance(resp, openai.BaseModel):
            raise TeacherError(f"malformed response body: {str(resp)[:80]!r}")
        try:
            text = resp.choices[0].message.content or ""
        except (AttributeError, IndexError, TypeError) as e:
            raise TeacherError(f"malformed response: no choices[0].message ({e})") from None
        usage = resp.usage
        return Completion(
            text=text,
            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
            raw=resp.model_dump(mode="json", exclude_unset=True),
        )

    async def aclose(self) -> None:
        await self.client.close()


class LocalTeacher:
    """A model run in this process (teacher entries without base_url). One generate at a time:
    the model is not thread-safe and the CPU is shared anyway."""

    def __init__(self, config: TeacherConfig, name: str = "teacher"):
        self.name = name
        self.model = config.model
        self._loaded: tuple[Any, Any] | None = None
        self._lock = threading.RLock()

    def _load(self) -> tuple[Any, Any]:
        with self._lock:
            if self._loaded is None:
                from protege.models import load_model, load_tokenizer

                self._loaded = (load_model(self.model), load_tokenizer(self.model))
            return self._loaded

    async def complete(self, messages: list[dict[str, str]], params: dict[str, Any]) -> Completion:
        await asyncio.to_thread(self._load)  # loading is not the call's latency (nor its cost)
        start = time.perf_counter()
        comp = await asyncio.to_thread(self._generate, messages, params)
        comp.latency_ms = (time.perf_counter() - start) * 1000
        return comp

    def _generate(self, messages: list[dict[str, str]], params: dict[str, Any]) -> Completion:
        import torch

        with self._lock:
            model, tok = self._load()
            choices = (params.get("extra_body") or {}).get("choices")
            if choices:
                return _score_choices(model, tok, messages, choices)
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
            temperature = float(params.get("temperature") or 0.0)
            if params.get("seed") is not None:
                torch.manual_seed(int(params["seed"]))
            gen_kwargs: dict[str, Any] = {"max_new_tokens": int(params.get("max_tokens") or 256)}
            gen_kwargs |= {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
            with torch.no_grad():
                out = model.generate(**ids, pad_token_id=tok.pad_token_id, **gen_kwargs)
            new = out[0, ids["input_ids"].shape[1] :]
            text = tok.decode(new, skip_special_tokens=True).strip()
            n_prompt, n_new = int(ids["input_ids"].shape[1]), int(new.shape[0])
            return Completion(text=text, prompt_tokens=n_prompt, completion_tokens=n_new, raw=_raw(self.model, text))

    async def aclose(self) -> None:
        self._loaded = None


def _score_choices(model: Any, tok: Any, messages: list[dict[str, str]], choices: list[str]) -> Completion:
    """The most likely choice by the one constrained-choice scorer (models/choice.py), which
    `protege serve` runs for `extra_body.choices` too: same label tokens, same scores."""
    from protege.models.choice import answer_tokens, best_choice, score_choices

    scores = score_choices(model, tok, [messages], choices)[0].tolist()
    best = best_choice(choices, scores)
    prompt_ids, choice_ids = answer_tokens(tok, messages, [best])
    raw = _raw("local", best) | {"choice_scores": dict(zip(choices, scores, strict=True))}
    return Completion(text=best, prompt_tokens=len(prompt_ids), completion_tokens=len(choice_ids[0]), raw=raw)


def _raw(model: str, text: str) -> dict[str, Any]:
    return {"model": model, "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}


def make_teacher(config: TeacherConfig, name: str = "teacher") -> Teacher:
    """The backend a teacher entry asks for: HTTP when it has a base_url, else in-process."""
    return HttpTeacher(config, name) if config.base_url else LocalTeacher(config, name)


def get_teacher_config(teachers: dict[str, TeacherConfig], name: str) -> TeacherConfig:
    if name not in teachers:
        known = ", ".join(sorted(teachers)) or "none (add a `teachers:` entry to protege.yaml)"
        raise UserError(f"unknown teacher {name!r}; known: {known}")
    return teachers[name]
