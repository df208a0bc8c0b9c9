"""What a training run leaves behind: something `load_model` / `protege serve` opens by path, plus
the evidence (model card, metrics.json) a reader needs to trust or reproduce it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from protege.models.precision import describe_host
from protege.train.config import TrainConfig


def base_reference(cfg: TrainConfig, resolved: Any) -> str:
    """What adapter_config.json names as its base: the registry name when the base is one (portable
    across machines and caches), else the absolute folder or the hub id."""
    from protege.models.registry import BUNDLED

    if cfg.base in BUNDLED:
        return cfg.base
    path = Path(cfg.base).expanduser()
    return str(path.resolve()) if path.exists() else cfg.base


def write_outputs(
    cfg: TrainConfig,
    resolved: Any,
    model: Any,
    tok: Any,
    output: Path,
    metrics: dict[str, Any],
    train_data: Any,
    eval_data: Any,
    teacher_terms: list[str] | None = None,
    state_dict: dict[str, Any] | None = None,
) -> None:
    """`state_dict`: the loss module's full weights gathered from the ranks of a sharded (FSDP) run,
    whose own parameters are slices; None when `model` holds whole weights."""
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    is_peft = hasattr(model, "peft_config")
    if state_dict is not None:
        state_dict = {k.removeprefix("model."): v for k, v in state_dict.items() if k.startswith("model.")}
    model.save_pretrained(str(output), state_dict=state_dict)
    if is_peft:
        cfg_path = output / "adapter_config.json"
        adapter_cfg = json.loads(cfg_path.read_text())
        adapter_cfg["base_model_name_or_path"] = base_reference(cfg, resolved)
        cfg_path.write_text(json.dumps(adapter_cfg, indent=2))
    tok.save_pretrained(str(output))
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    (output / "README.md").write_text(model_card(cfg, metrics, train_data, eval_data, teacher_terms or []))
    if cfg.merge and is_peft:
        merged = output / "merged"
        merge_source(cfg, model, output, sharded=state_dict is not None).merge_and_unload().save_pretrained(str(merged))
        tok.save_pretrained(str(merged))


def merge_source(cfg: TrainConfig, model: Any, output: Path, sharded: bool = False) -> Any:
    """The adapter model to merge for `merge: true`. The trained one in memory, except when its base
    cannot take the merge: a QLoRA base is 4-bit (folding a float update into NF4 weights would
    re-quantise them), and a sharded (FSDP) model holds slices. Then the adapter just saved in
    `output` is loaded over the float32 base from disk (the weights the 4-bit base was quantised
    from) and merged there."""
    if cfg.method != "qlora" and not sharded:
        return model
    from protege.models.load import load_model

    return load_model(output, dtype="float32")


def model_card(
    cfg: TrainConfig, metrics: dict[str, Any], train_data: Any, eval_data: Any, teacher_terms: list[str]
) -> str:
    terms = sorted(set(teacher_terms) | set(train_data.source.get("terms") or []))
    shown = {k: v for k, v in metrics.items() if k != "history"}
    host = describe_host(metrics.get("host") or {})
    lines = [
        f"# {cfg.run_name}",
        "",
        f"Fine-tuned from `{cfg.base}` with protege (`{cfg.method}`).",
        "",
        f"Precision: `{metrics.get('precision')}` (config `dtype: {cfg.dtype}`; host: {host}).",
        "",
        "## Data",
        "",
        f"- train: `{cfg.data.train}` — {json.dumps(train_data.source, default=str)}",
    ]
    if eval_data is not None:
        lines.append(f"- eval: `{cfg.data.eval}` — {json.dumps(eval_data.source, default=str)}")
    teachers = train_data.source.get("teachers") or []
    if teachers or cfg.teacher:
        lines.append(f"- teachers: {', '.join(teachers + ([cfg.teacher] if cfg.teacher else []))}")
    lines += ["", "## Terms of the teachers' providers", ""]
    lines += [f"- {t}" for t in terms] or ["- none recorded"]
    lines += ["", "## Metrics", "", "```json", json.dumps(shown, indent=2, default=str), "```", ""]
    lines += [
        "## Config",
        "",
        "```yaml",
        yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).strip(),
        "```",
        "",
    ]
    lines += ["## Use", "", "```", f"protege serve {cfg.output}", "```", ""]
    return "\n".join(lines)
