"""The model a server runs and the LoRA adapters loaded into it, under the names clients use.

Clients name an adapter by any string (often its folder's path, when MODEL is an adapter folder);
PEFT names it by a sanitised, unique internal name instead, because torch refuses module names with a
"." (any path with a dot: `~/.cache/...`, `./runs/x`, a `mktemp -d` folder) and PEFT stores adapters
as modules under their names. Only methods of this class touch the model's adapters; they run at
start-up or on the scheduler's worker thread between batches.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from protege.errors import UserError
from protege.models.load import ResolvedModel, load_tokenizer, resolve_model


class UnknownModel(Exception):
    """The request's `model` is neither the base nor a loaded adapter (HTTP 404)."""


def peft_name(public: str, taken: set[str]) -> str:
    """A PEFT adapter name for the client-facing `public` one: letters, digits and `_` only, unique."""
    stem = re.sub(r"[^A-Za-z0-9_]+", "_", public).strip("_")[-48:] or "adapter"
    name, n = f"a_{stem}", 1
    while name in taken:
        n += 1
        name = f"a_{stem}_{n}"
    return name


class AdapterRegistry:
    def __init__(
        self, model: Any, base: ResolvedModel, base_names: list[str], tokenizer: Any, on_model: Callable[[Any], None]
    ):
        self.model = model
        self.base = base
        self.base_names = base_names
        self.tokenizer = tokenizer
        self._on_model = on_model
        """Told when the model object changes (wrapped by PEFT, merged), so the decoder follows."""
        self.paths: dict[str, str] = {}
        """Client-facing adapter name -> its folder."""
        self.internal: dict[str, str] = {}
        """Client-facing adapter name -> PEFT's name for it."""
        self.templates: dict[str, str] = {}
        """Adapters whose saved tokenizer has a chat template of its own (a student's system prompt)."""
        self.merged: str | None = None
        """The adapter folded into the weights (--merge); the base is then not served."""

    def _set_model(self, model: Any) -> None:
        self.model = model
        self._on_model(model)

    # ---- names ------------------------------------------------------------------------------------
    def route(self, model: str) -> str | None:
        """The adapter `model` names (None for the base); UnknownModel otherwise."""
        if model in self.paths:
            return model
        if model in self.base_names and not self.merged:
            return None
        raise UnknownModel(model)

    def model_cards(self, created: int) -> list[dict[str, Any]]:
        """The base under each of its names (its cache path only when it has no other), then adapters."""
        shown = [n for i, n in enumerate(self.base_names) if i == 0 or not Path(n).is_absolute()]
        shown = [] if self.merged else shown
        cards = [{"id": n, "object": "model", "created": created, "owned_by": "protege"} for n in shown]
        for name in self.paths:
            card = {"id": name, "object": "model", "created": created, "owned_by": "protege"}
            cards.append(card | {"parent": self.base_names[0]})
        return cards

    # ---- loading ----------------------------------------------------------------------------------
    def load(self, name: str, path: str | Path) -> None:
        """Load the adapter folder (or hub id) `path` under the client-facing `name`."""
        if self.merged:
            raise UserError(f"this server folded {self.merged!r} into its weights (--merge); it takes no more adapters")
        if name in self.paths or name in self.base_names:
            raise UserError(f"adapter name {name!r} is already in use")
        resolved = resolve_model(str(path))
        if not resolved.is_adapter:
            raise UserError(f"{path}: not a LoRA adapter folder (no adapter_config.json)")
        if Path(resolved.base.path).resolve() != Path(self.base.path).resolve():
            raise UserError(f"{path}: adapter is for base {resolved.base.name!r}, this server runs {self.base.name!r}")
        from peft import PeftModel

        internal = peft_name(name, set(self.internal.values()))
        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(resolved.path), adapter_name=internal, is_trainable=False)
        else:
            self._set_model(PeftModel.from_pretrained(self.model, str(resolved.path), adapter_name=internal).eval())
        self.paths[name] = str(resolved.path)
        self.internal[name] = internal
        template = load_tokenizer(resolved).chat_template  # a trained student's system_prompt lives here
        if template and template != self.tokenizer.chat_template:
            self.templates[name] = template

    def merge(self) -> str:
        """Fold the one adapter into the base weights. PEFT's separate LoRA matmuls cost ~20% of a
        short request on CPU (60 ms of 310 for the 135M model, 33 tokens); merged, the student runs
        at the base's speed, but the server then answers only as that student."""
        if len(self.paths) != 1:
            raise UserError(f"--merge serves exactly one adapter; {len(self.paths)} were given")
        self._set_model(self.model.merge_and_unload())
        self.merged = next(iter(self.paths))
        return self.merged

    def unload(self, name: str) -> None:
        """Remove an adapter; the last one leaves the bare base model (PEFT keeps pointing at a
        deleted adapter otherwise, and the next request through the base fails)."""
        internal = self.internal.pop(name)
        del self.paths[name]
        self.templates.pop(name, None)
        if self.internal:
            self.model.delete_adapter(internal)
        else:
            self._set_model(self.model.unload())

    def check_unload(self, name: str) -> None:
        """Raise before queueing an unload that cannot happen."""
        if name not in self.paths:
            raise UnknownModel(name)
        if name == self.merged:
            raise UserError(f"{name!r} is folded into this server's weights (--merge) and cannot be unloaded")

    @contextmanager
    def using(self, adapter: str | None) -> Iterator[None]:
        """Route a batch through one adapter, or through the bare base with adapters switched off."""
        from peft import PeftModel

        if not isinstance(self.model, PeftModel):
            yield
        elif adapter is None or not self.paths:
            with self.model.disable_adapter():
                yield
        else:
            self.model.set_adapter(self.internal[adapter])
            yield
