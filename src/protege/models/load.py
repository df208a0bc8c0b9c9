"""One way to turn a model name into weights and a tokenizer, used by every stage.

A name is, in order: a bundled registry name (pulled on first use), a local folder (a Hugging
Face model, or a LoRA adapter whose base is resolved the same way), a local `.gguf` file
(dequantised once into the cache), or a Hugging Face hub id (needs the hub to be reachable).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protege.errors import UserError
from protege.models.fetch import convert_gguf, gguf_cache_name, pull, read_manifest
from protege.models.registry import BUNDLED
from protege.paths import models_dir

# Used when a completion-only (base) model is asked to chat: plain, unambiguous turn markers.
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### Input:\n{{ message['content'] }}\n\n"
    "{% else %}### Response:\n{{ message['content'] }}{{ eos_token }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Response:\n{% endif %}"
)


DEFAULT_SYSTEM_MARK = "{#- protege: default system prompt -#}"


def with_default_system(template: str, system: str) -> str:
    """`template` with `system` as the system message of every conversation that brings none.

    Chat templates often add their own default system turn (SmolLM2's is ~16 tokens of "You are a
    helpful AI assistant named SmolLM..."); a student trained on bare messages gains nothing from
    it but pays for it on every request. The student's tokenizer carries this wrapped template, so
    training, serving and merged exports all render the same prompt while clients still send just
    the user message. Works for any template that honours a leading system message."""
    if template.startswith(DEFAULT_SYSTEM_MARK):
        template = template.split("\n", 2)[2]
    literal = json.dumps(system)  # a JSON string literal is a valid Jinja string literal
    return (
        f"{DEFAULT_SYSTEM_MARK}\n"
        "{%- if messages and messages[0]['role'] != 'system' -%}"
        f"{{%- set messages = [{{'role': 'system', 'content': {literal}}}] + messages -%}}"
        "{%- endif -%}\n" + template
    )


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    path: Path
    """Folder with config.json (a full model) or adapter_config.json (a LoRA adapter)."""
    base: ResolvedModel | None = None
    """For an adapter, the model it sits on."""
    kind: str = "unknown"
    completion_only: bool = False

    @property
    def is_adapter(self) -> bool:
        return self.base is not None


def resolve_model(name: str | Path) -> ResolvedModel:
    name = str(name)
    if name in BUNDLED:
        folder = pull(name)
        manifest = read_manifest(folder) or {}
        return ResolvedModel(
            name, folder, kind=manifest.get("kind", "unknown"), completion_only=bool(manifest.get("completion_only"))
        )
    path = Path(name).expanduser()
    if path.is_dir() and (path / "adapter_config.json").exists():
        cfg = json.loads((path / "adapter_config.json").read_text())
        base_name = cfg.get("base_model_name_or_path")
        if not base_name:
            raise UserError(f"{path}/adapter_config.json: base_model_name_or_path is empty")
        base = resolve_model(base_name)
        return ResolvedModel(name, path, base=base, kind=base.kind, completion_only=base.completion_only)
    if path.is_dir() and (path / "config.json").exists():
        manifest = read_manifest(path) or {}
        return ResolvedModel(
            name, path, kind=manifest.get("kind", "unknown"), completion_only=bool(manifest.get("completion_only"))
        )
    if path.is_file() and path.suffix == ".gguf":
        dest = models_dir() / gguf_cache_name(path)
        if not (dest / "config.json").exists():
            convert_gguf(path, dest)
        return ResolvedModel(name, dest, kind="unknown")
    if path.exists():
        raise UserError(f"{path}: not a model folder (no config.json or adapter_config.json) nor a .gguf file")
    if "/" in name and not name.startswith((".", "/")):
        return _resolve_hub(name)
    raise UserError(f"unknown model {name!r}; bundled: {', '.join(BUNDLED)} (or give a folder, .gguf or hub id)")


def _resolve_hub(repo_id: str) -> ResolvedModel:
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"])
    except Exception as e:  # any hub failure is the same thing to the user: not reachable / not there
        raise UserError(
            f"{repo_id}: not reachable on the Hugging Face hub from here ({type(e).__name__}); "
            "use a bundled model, a local folder or a .gguf file"
        ) from None
    return ResolvedModel(repo_id, Path(folder))


def pick_dtype(dtype: str = "auto") -> Any:
    """The torch dtype to load a model in for answering (serving, evaluation): `auto` is float32 on
    any CPU (see models.precision for why, and for what training does instead)."""
    from protege.models.precision import inference_dtype

    return inference_dtype(dtype)


def load_model(name: str | Path, dtype: str = "auto", device: str | None = None, trainable: bool = False) -> Any:
    """A causal LM ready for inference (eval mode), or for training with `trainable=True`.
    An adapter comes back as a PeftModel over its base."""
    from transformers import AutoModelForCausalLM

    resolved = name if isinstance(name, ResolvedModel) else resolve_model(name)
    torch_dtype = pick_dtype(dtype)
    base_path = resolved.base.path if resolved.is_adapter else resolved.path
    model = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=torch_dtype)
    if resolved.is_adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(resolved.path), is_trainable=trainable)
    if device:
        model.to(device)
    if not trainable:
        model.eval()
    return model


def load_tokenizer(name: str | Path, chat: bool = True) -> Any:
    """The model's tokenizer with a pad token; a completion-only model gets PLAIN_CHAT_TEMPLATE
    when `chat` is asked for and it has no template of its own."""
    from transformers import AutoTokenizer

    resolved = name if isinstance(name, ResolvedModel) else resolve_model(name)
    folder = resolved.path
    if resolved.is_adapter and not (folder / "tokenizer_config.json").exists():
        folder = resolved.base.path
    tok = AutoTokenizer.from_pretrained(str(folder))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if chat and (resolved.completion_only or not tok.chat_template):
        tok.chat_template = PLAIN_CHAT_TEMPLATE
    return tok


def model_info(name: str) -> dict[str, Any]:
    resolved = resolve_model(name)
    manifest = read_manifest(resolved.path) or {}
    size = sum(f.stat().st_size for f in resolved.path.rglob("*") if f.is_file())
    params = manifest.get("parameters")
    if params is None and not resolved.is_adapter:
        from protege.models.fetch import _count_safetensors

        params = _count_safetensors(resolved.path)
    return {
        "name": resolved.name,
        "path": str(resolved.path),
        "kind": resolved.kind,
        "completion_only": resolved.completion_only,
        "parameters": params,
        "size_bytes": size,
        "base": resolved.base.name if resolved.base else None,
        **{k: v for k, v in manifest.items() if k in ("source", "sha256", "description", "licence")},
    }


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def list_models() -> list[dict[str, Any]]:
    """The bundled models with what is known before and after a pull."""
    rows = []
    for spec in BUNDLED.values():
        folder = models_dir() / spec.name
        manifest = read_manifest(folder) or {}
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if manifest else 0
        rows.append(
            {
                "name": spec.name,
                "kind": spec.kind,
                "parameters": manifest.get("parameters"),
                "size_bytes": size,
                "pulled": bool(manifest),
                "description": spec.description,
            }
        )
    return rows
