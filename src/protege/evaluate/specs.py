"""Which models an eval compares: `--models label=MODEL,...` resolved to teachers or local models.

A model is a teacher name from protege.yaml (called over HTTP with its own endpoint and price) or
something `protege serve` can start: a registry name, a folder, an adapter folder or a training
run's name. `identity` says what makes a model answer the same way, for the answer cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from protege.config import TeacherConfig
from protege.errors import UserError
from protege.workspace import Workspace

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}


@dataclass
class ModelSpec:
    label: str
    source: str
    """What the user wrote: a teacher name, registry name, folder, adapter folder or run name."""
    teacher: TeacherConfig | None = None
    path: str | None = None
    """For local models: what `protege serve` is given."""

    @property
    def kind(self) -> str:
        return "teacher" if self.teacher else "local"

    @property
    def local_compute(self) -> bool:
        """Priced by measured compute time: local models, and zero-priced teachers on this machine."""
        if self.teacher is None:
            return True
        free = not (self.teacher.price.input_per_1m or self.teacher.price.output_per_1m)
        return free and urlparse(self.teacher.base_url or "").hostname in LOCAL_HOSTS


def parse_models(text: str) -> dict[str, str]:
    """`teacher=local,student=runs/x` -> {"teacher": "local", "student": "runs/x"} (order kept)."""
    out: dict[str, str] = {}
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        if "=" not in part:
            raise UserError(f"--models {part!r}: expected label=MODEL")
        label, model = (s.strip() for s in part.split("=", 1))
        if not label or not model or label in out:
            raise UserError(f"--models {part!r}: labels must be non-empty and distinct")
        out[label] = model
    if not out:
        raise UserError("--models: give at least one label=MODEL")
    return out


def resolve_spec(ws: Workspace, label: str, source: str) -> ModelSpec:
    if source in ws.config.teachers:
        teacher = ws.config.teachers[source]
        if not teacher.base_url:
            raise UserError(f"teacher {source!r} has no base_url; evaluation calls every model over HTTP")
        return ModelSpec(label, source, teacher=teacher)
    run = ws.store.get_run(source)
    if run and run["kind"] == "train" and run.get("output_dir"):
        return ModelSpec(label, source, path=str(ws.resolve(run["output_dir"])))
    from protege.models import resolve_model

    resolved = resolve_model(source if not Path(source).exists() else Path(source).resolve())
    return ModelSpec(label, source, path=str(resolved.path if Path(source).exists() else source))


def identity(spec: ModelSpec) -> dict[str, Any]:
    """What makes a model answer the same way: the endpoint and model for a teacher (a local port is
    left out: it changes every start), the weight files' sizes and times for a local folder."""
    if spec.teacher:
        t = spec.teacher
        url = urlparse(t.base_url or "")
        host = "local" if url.hostname in LOCAL_HOSTS else f"{url.hostname}{url.path}"
        return {"host": host, "model": t.model, "temperature": t.temperature, "constrained": t.constrained_choices}
    path = Path(spec.path)
    if not path.exists():
        return {"model": spec.path}
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in {".safetensors", ".json", ".bin"})
    return {"model": str(path.resolve()), "files": [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in files]}
