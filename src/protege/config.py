"""Config files are YAML read into pydantic models with unknown keys forbidden.

Every config error names the file, the line and the field, e.g.
`protege.yaml:7: teachers.local.prise: unknown key`, so a user fixes it without guessing.
CLI flags override file values through `apply_overrides` (`--set key.sub=value`).
"""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from protege.errors import UserError

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """Base for every config model: a misspelt key is an error, never silently ignored. Each field's
    docstring is its description (`use_attribute_docstrings`), so one text reaches the JSON Schema,
    `--help` and the code."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class Price(Strict):
    input_per_1m: float = Field(default=0.0, ge=0)
    """US dollars per million prompt tokens."""
    output_per_1m: float = Field(default=0.0, ge=0)
    """US dollars per million completion tokens."""


class TeacherConfig(Strict):
    base_url: str | None = None
    """Any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp, Ollama, `protege serve`).
    Left out: the model runs in-process."""
    model: str
    """Model name sent to the endpoint, or a registry name for an in-process teacher."""
    api_key_env: str | None = None
    """Name of the environment variable holding the key; never the key itself."""
    price: Price = Field(default_factory=Price)
    """What the endpoint charges, for the cost of distillation and of each eval's requests."""
    terms: str | None = None
    """The provider's terms on training other models with its outputs; copied into provenance."""
    temperature: float = Field(default=0.0, ge=0)
    """Sampling temperature of the first ask (0: greedy); re-asks of an invalid answer go warmer."""
    max_tokens: int = Field(default=256, ge=1)
    """Most tokens of one answer."""
    timeout_s: float = Field(default=60.0, gt=0)
    """Seconds one request may take before it counts as failed (and is retried)."""
    max_retries: int = Field(default=5, ge=0)
    """Retries of a failed request (rate limit, timeout, 5xx), with exponential backoff."""
    invalid_retries: int = Field(default=2, ge=0)
    """How many more times an answer that fails the task's check is asked (new seed, warmer)."""
    constrained_choices: bool = False
    """For label tasks, send the label set as `extra_body={"choices": [...]}` (protege serve
    answers with the most likely label). Leave off for endpoints that reject unknown fields."""
    batch_price_factor: float = Field(default=0.5, ge=0)
    """Share of `price` charged for answers through the Batch API (`distill --batch`); OpenAI bills
    batch requests at half price."""


class WorkspaceConfig(Strict):
    teachers: dict[str, TeacherConfig] = Field(default_factory=dict)
    """Teachers by name, as `distill --teacher NAME`, `eval --models label=NAME` and `--judge` use them."""
    local_compute_per_hour: float = Field(default=0.50, ge=0)
    """$ per hour of this machine, for the cost of local models."""


def field_docs(model: type[BaseModel], prefix: str = "") -> list[dict[str, str]]:
    """Every key of a config model, nested ones dotted as `--set` takes them (`lora.r`), with its
    type (and range), default and docstring: what `protege train --help` lists."""
    rows = []
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            rows += field_docs(field.annotation, key + ".")
            continue
        bounds = [f"{op} {getattr(m, attr)}" for m in field.metadata for attr, op in _BOUNDS if hasattr(m, attr)]
        kind = _type_name(field.annotation) + (f" ({', '.join(bounds)})" if bounds else "")
        default = "required" if field.is_required() else json.dumps(field.get_default(call_default_factory=True))
        rows.append({"key": key, "type": kind, "default": default, "doc": " ".join((field.description or "").split())})
    return rows


_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))  # pydantic's Field(ge=...) metadata


def _type_name(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(_type_name(a) for a in args)}]"
    return "null" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def _line_of(path: Path, text: str, loc: tuple[Any, ...]) -> int | None:
    """Line (1-based) of the YAML node at `loc`, or of its nearest existing parent."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = node.start_mark.line + 1 if node is not None else None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if k.value == str(key)]
            if not match:
                return line
            k, node = match[0]
            line = k.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def format_validation_error(path: Path, text: str, err: ValidationError) -> str:
    problems = []
    for e in err.errors():
        loc = tuple(e["loc"])
        field = ".".join(str(p) for p in loc) or "(top level)"
        what = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        line = _line_of(path, text, loc)
        problems.append(f"{path}:{line}: {field}: {what}" if line else f"{path}: {field}: {what}")
    return "; ".join(problems)


def read_yaml(path: str | Path) -> tuple[Path, str, Any]:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    return path, text, data if data is not None else {}


def load_yaml_model(path: str | Path, model: type[M], overrides: dict[str, Any] | None = None) -> M:
    """Read YAML at `path` into `model`, applying dotted `overrides` first."""
    path, text, data = read_yaml(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}:1: expected a mapping at the top level")
    if overrides:
        data = apply_overrides(data, overrides)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise UserError(format_validation_error(path, text, err)) from None


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`{"lora.r": "8"}` sets data["lora"]["r"] = 8 (values parsed as YAML scalars)."""
    out = dict(data)
    for dotted, raw in overrides.items():
        value = yaml.safe_load(raw) if isinstance(raw, str) else raw
        node = out
        parts = dotted.split(".")
        for p in parts[:-1]:
            child = node.get(p)
            node[p] = dict(child) if isinstance(child, dict) else {}
            node = node[p]
        node[parts[-1]] = value
    return out


def parse_set_options(items: list[str] | None) -> dict[str, str]:
    """`["lr=1e-4", "lora.r=8"]` -> dict; a missing `=` is a usage error."""
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected key=value")
        k, v = item.split("=", 1)
        out[k.strip()] = v
    return out
