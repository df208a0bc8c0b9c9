"""What is being exported: a training run, an adapter folder, a model folder or a registry name,
resolved the way `protege serve` resolves it, and turned into one float32 model with the adapter
merged into its base (PEFT's merge_and_unload, in float32 whatever the run trained in: a QLoRA
adapter is merged into the float base, never into 4-bit weights)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from protege.models.load import ResolvedModel, load_model, load_tokenizer


@dataclass
class Source:
    given: str
    target: ResolvedModel
    name: str
    """A file-name-safe name for the export (the run or folder name)."""
    _cache: dict[str, Any] = field(default_factory=dict)

    @property
    def is_adapter(self) -> bool:
        return self.target.is_adapter

    @cached_property
    def adapter_config(self) -> dict[str, Any]:
        if not self.is_adapter:
            return {}
        return json.loads((self.target.path / "adapter_config.json").read_text())

    @property
    def rank(self) -> int | None:
        """The adapter's largest rank (its `r`, or the largest of a per-module rank pattern)."""
        cfg = self.adapter_config
        if not cfg:
            return None
        return max([int(cfg.get("r") or 0), *[int(v) for v in (cfg.get("rank_pattern") or {}).values()]])

    @cached_property
    def tokenizer(self) -> Any:
        """The student's tokenizer: its chat template carries the system prompt it was trained with."""
        return load_tokenizer(self.target)

    @cached_property
    def base_tokenizer(self) -> Any:
        return load_tokenizer(self.target.base) if self.is_adapter else self.tokenizer

    def unmerged(self) -> Any:
        """The model as trained (an adapter over its base, in float32): the reference for `hf`."""
        return load_model(self.target, dtype="float32")

    def merged(self) -> Any:
        """Float32 weights with the adapter folded in (loaded once)."""
        if "merged" not in self._cache:
            model = self.unmerged()
            if self.is_adapter:
                model = model.merge_and_unload()
            self._cache["merged"] = model.eval()
        return self._cache["merged"]

    @property
    def card(self) -> str | None:
        """The training run's model card (provenance, data, teachers' terms), when there is one."""
        path = self.target.path / "README.md"
        return path.read_text() if path.exists() else None

    @property
    def config_path(self) -> Path:
        return (self.target.base.path if self.is_adapter else self.target.path) / "config.json"


def safe_name(text: str) -> str:
    """Lower-case letters, digits, `.`, `-` and `_` (Ollama model names, file names)."""
    name = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")
    return name or "student"


def load_source(model: str, workspace: Any = None) -> Source:
    """MODEL as `protege serve` resolves it: registry name, folder, adapter, .gguf, hub id or run name."""
    from protege.serve.app import resolve_target

    target = resolve_target(model, workspace)
    stem = Path(model).name if Path(model).exists() else model.rsplit("/", 1)[-1]
    return Source(model, target, safe_name(stem))
