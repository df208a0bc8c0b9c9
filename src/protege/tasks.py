"""A task spec: what the teacher is asked, what a valid answer looks like, and how the student
is prompted. One YAML file (see docs/interfaces.md and examples/tasks/).

The teacher sees the instructions and few-shot examples; the student is trained on the bare
rendered input, so at serve time it needs no long prompt (that is where its speed comes from).

A task file may come from anyone, so its template renders in Jinja's immutable sandbox: no
attributes starting with `_` (`{{ text.__class__.__mro__ }}` is refused), no unsafe calls, no
changing the record's values. A field the record lacks is an error, never an empty string.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any, Literal

import jinja2
import jsonschema
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from pydantic import Field, PrivateAttr, model_validator

from protege.config import Strict, load_yaml_model
from protege.errors import DataError, UserError

TEMPLATES = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)
"""The one environment every user-supplied template renders in."""


class OutputSpec(Strict):
    kind: Literal["label", "text", "json"] = "text"
    """label: one of a fixed set (scored by accuracy / macro-F1); text: free text; json: a JSON value
    valid against `schema`."""
    labels: list[str] | None = None
    """The fixed label set, for kind: label."""
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    """A JSON Schema, for kind: json."""

    @model_validator(mode="after")
    def _check(self) -> OutputSpec:
        if self.kind == "label" and not self.labels:
            raise ValueError("kind: label needs a non-empty `labels` list")
        if self.kind == "json" and self.schema_ is None:
            self.schema_ = {"type": "object"}
        return self


class Example(Strict):
    input: dict[str, Any]
    """The input record's fields, rendered through the task's `input` template."""
    output: Any
    """The answer the teacher should give (a label, text, or a JSON value)."""


class Task(Strict):
    name: str
    """The task's name: the default name of the datasets and eval runs made from it."""
    instructions: str = ""
    """The system prompt given to the teacher."""
    input: str = "{{ text }}"
    """Jinja template over the input record's fields."""
    output: OutputSpec = Field(default_factory=OutputSpec)
    """What a valid answer is."""
    examples: list[Example] = Field(default_factory=list)
    """Few-shot examples, shown to teachers only."""
    examples_as: Literal["turns", "system"] = "turns"
    """turns: each example is a user/assistant exchange before the input (OpenAI-style few-shot);
    system: the examples are listed in the system message. Which works is task-dependent: the 135M
    teacher scored 0.29 on tweeteval with eight examples as turns (it answered its last example's
    label for 94% of tweets) and 0.47 with them in the system message, while on the demo's support
    routing turns scored 0.54 and the system message 0.20. Measure both on a labelled sample."""

    _path: Path | None = PrivateAttr(default=None)

    @property
    def labels(self) -> list[str]:
        return list(self.output.labels or [])

    @property
    def where(self) -> str:
        """How errors name this task: its file when it has one."""
        return f"{self._path}: task {self.name!r}" if self._path else f"task {self.name!r}"

    def render(self, fields: dict[str, Any]) -> str:
        try:
            return _template(self.input).render(**fields).strip()
        except SecurityError as e:
            raise UserError(f"{self.where}: input template refused by the sandbox: {e}") from None
        except jinja2.UndefinedError as e:
            raise DataError(f"task {self.name!r}: input template needs a field the record lacks: {e}") from None
        except jinja2.TemplateError as e:
            raise UserError(f"{self.where}: input template failed: {e}") from None

    def teacher_messages(self, fields: dict[str, Any]) -> list[dict[str, str]]:
        """System instructions (with the label set or schema), few-shot turns, then the input."""
        system = self.instructions.strip()
        if self.output.kind == "label":
            system += "\nAnswer with exactly one of: " + ", ".join(self.labels) + "."
        elif self.output.kind == "json":
            system += "\nAnswer with JSON only, valid against this schema: " + json.dumps(self.output.schema_)
        shots = [(self.render(ex.input), ex.output if isinstance(ex.output, str) else json.dumps(ex.output))
                 for ex in self.examples]  # fmt: skip
        if shots and self.examples_as == "system":
            system += "\n\nExamples:\n\n" + "\n\n".join(f"{q}\nAnswer: {a}" for q, a in shots)
            shots = []
        messages = [{"role": "system", "content": system.strip()}]
        for question, answer in shots:
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        messages.append({"role": "user", "content": self.render(fields)})
        return messages

    def student_messages(self, fields: dict[str, Any]) -> list[dict[str, str]]:
        """The short prompt a fine-tuned student is trained and served with."""
        return [{"role": "user", "content": self.render(fields)}]

    def parse_output(self, text: str) -> tuple[Any, str | None]:
        """(value, None) when `text` is a valid answer for this task, else (None, reason)."""
        text = (text or "").strip()
        if self.output.kind == "label":
            label = match_label(text, self.labels)
            return (label, None) if label else (None, f"not one of the labels {self.labels}: {text[:80]!r}")
        if self.output.kind == "json":
            try:
                value = json.loads(_strip_fences(text))
            except json.JSONDecodeError as e:
                return None, f"not valid JSON: {e.msg}"
            try:
                jsonschema.validate(value, self.output.schema_ or {})
            except jsonschema.ValidationError as e:
                return None, f"JSON does not match the schema: {e.message}"
            return value, None
        return (text, None) if text else (None, "empty output")


@functools.lru_cache(maxsize=256)
def _template(source: str) -> jinja2.Template:
    """Compiling a template costs ~3 ms, rendering ~30 us: compile each one once (imports render thousands)."""
    return TEMPLATES.from_string(source)


def match_label(text: str, labels: list[str]) -> str | None:
    """The label a free-text answer names: exact (case-insensitive), else the first label word."""
    norm = text.strip().strip(".!\"'`*").strip().lower()
    by_lower = {lab.lower(): lab for lab in labels}
    if norm in by_lower:
        return by_lower[norm]
    words = re.findall(r"[\w-]+", norm)
    for w in words[:3]:
        if w in by_lower:
            return by_lower[w]
    return None


def _strip_fences(text: str) -> str:
    m = re.match(r"^```(?:json)?\s*(.*?)\s*```$", text, re.S)
    return m.group(1) if m else text


def load_task(path: str | Path) -> Task:
    """A task file; a template that does not compile is an error naming the file and its line."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: task file not found")
    task = load_yaml_model(path, Task)
    task._path = path
    try:
        _template(task.input)
    except jinja2.TemplateSyntaxError as e:
        raise UserError(f"{path}: input: template line {e.lineno}: {e.message}") from None
    return task
