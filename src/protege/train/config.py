"""The training config: one typed model read from YAML, overridden by `--set k=v`, or built in Python.

Every field carries its docstring here, so the YAML example, the CLI and the Python API cannot drift
(the torchtune/litgpt pattern). `TrainConfig.model_json_schema()` lists them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from protege.config import Strict, load_yaml_model


class DataConfig(Strict):
    train: str
    """Training data: a workspace dataset name (`name` or `name@3`) or a path to a JSONL file of
    `{"text", "label"}` rows (rendered through the task) or `{"messages": [...]}` rows."""
    eval: str | None = None
    """Held-out data in the same forms; evaluated every `eval_every` steps and at the end."""
    split: str | None = None
    """Only the training dataset's records with this split (workspace datasets only)."""
    eval_split: str | None = None
    """Only the eval dataset's records with this split (workspace datasets only)."""
    limit: int | None = Field(default=None, ge=1)
    """Use at most this many training records (the first ones), e.g. for a quick run."""
    eval_limit: int | None = Field(default=None, ge=1)
    """Evaluate on at most this many records (the first ones)."""
    review: list[Literal["pending", "accepted", "edited", "rejected"]] | None = None
    """Train only on the records whose *current* review status is one of these (workspace datasets),
    e.g. [accepted, edited]: the reviews on the page apply at once (edited answers replace the
    originals), with no export in between. Unset: every record but the rejected ones, as stored."""


class LoraConfig(Strict):
    r: int = Field(default=16, ge=1)
    """Rank of the low-rank update."""
    alpha: float = Field(default=32, gt=0)
    """Scaling numerator: the update is multiplied by alpha / r."""
    dropout: float = Field(default=0.05, ge=0, lt=1)
    """Dropout on the adapter's input."""
    targets: Literal["all-linear"] | list[str] = "all-linear"
    """`all-linear` (every linear layer but the output head) or a list of module names (q_proj, ...)."""


class KDConfig(Strict):
    temperature: float = Field(default=2.0, gt=0)
    """Softens both distributions; the KL term is scaled by temperature**2 (Hinton et al.)."""
    alpha: float = Field(default=0.5, ge=0, le=1)
    """Weight of the KL term; (1 - alpha) goes to the usual cross-entropy on the data."""


class TrainConfig(Strict):
    base: str
    """The model to fine-tune: a registry name (smollm2-135m-instruct, gemma-3-270m), a folder or a hub id."""
    task: str | None = None
    """Task YAML (relative to the config file or the current folder). Needed for `{"text","label"}` data;
    a `label` task also turns on accuracy / macro-F1 by constrained choice over its labels."""
    data: DataConfig
    """Where the examples come from."""
    method: Literal["full", "lora", "qlora", "kd"] = "lora"
    """full: every weight; lora: a PEFT adapter; qlora: LoRA over a 4-bit base (CUDA + bitsandbytes);
    kd: LoRA student that also matches `teacher`'s token distribution."""
    lora: LoraConfig = Field(default_factory=LoraConfig)
    """Adapter shape (lora, qlora and kd)."""
    teacher: str | None = None
    """kd only: a local model sharing the student's tokenizer (registry name, folder or adapter)."""
    kd: KDConfig = Field(default_factory=KDConfig)
    """kd only: temperature and mixing weight."""
    epochs: float = Field(default=1, gt=0)
    """Passes over the training data (ignored when max_steps is set)."""
    max_steps: int | None = Field(default=None, ge=1)
    """Stop after this many optimiser steps."""
    batch_size: int = Field(default=8, ge=1)
    """Examples per optimiser step per process (before gradient accumulation)."""
    grad_accum: int = Field(default=1, ge=1)
    """Micro-batches summed into one optimiser step."""
    lr: float = Field(default=2.0e-4, gt=0)
    """Peak learning rate."""
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    """Decay after warmup."""
    warmup: float = Field(default=0.0, ge=0)
    """Warmup: a fraction of the total steps (< 1) or a number of steps (>= 1)."""
    weight_decay: float = Field(default=0.0, ge=0)
    """AdamW weight decay."""
    max_length: int = Field(default=512, ge=1)
    """Tokens per example; longer ones are cut (and counted in the run's `truncated` metric)."""
    system_prompt: str | None = None
    """System message of every prompt that brings none, baked into the saved tokenizer's chat
    template so clients still send just their messages. None keeps the template's own default
    (SmolLM2 adds a 16-token "You are a helpful AI assistant..." turn); "" gives an empty system
    turn, which makes every request of a short-prompt student cheaper."""
    dtype: Literal["auto", "float32", "bf16-mixed", "bfloat16"] = "auto"
    """auto: bf16-mixed where the hardware has bf16 matmul (a CUDA GPU, a CPU with AVX512-BF16 or AMX),
    else float32; PROTEGE_CPU_BF16=0 makes any CPU act as one without bf16. bf16-mixed: matmuls under
    bf16 autocast, weights, norms and optimiser in float32 (accuracy of float32, speed of bf16).
    bfloat16: the frozen base's weights in bf16 too (less memory; cost 5 points on tweeteval).
    The precision actually used is recorded in metrics.json, the run record and the model card."""
    seed: int = 0
    """Seeds the shuffle, the adapter init and dropout."""
    eval_every: int | None = Field(default=None, ge=1)
    """Evaluate every N optimiser steps (and always at the end when `data.eval` is set)."""
    early_stopping: int | None = Field(default=None, ge=1)
    """Patience: stop when the eval metric has not improved for this many evaluations."""
    save_every: int | None = Field(default=None, ge=1)
    """Checkpoint every N steps (a checkpoint is always written at the end and on Ctrl-C)."""
    output: str = "runs/train"
    """Output folder; relative paths land inside the workspace."""
    name: str | None = None
    """Run name in the workspace (default: the output folder's name)."""
    packing: bool = True
    """Concatenate each batch into one row with per-example positions (no padding; examples do not see
    each other). false: pad each length-sorted batch instead."""
    share_prefix: bool = True
    """With packing: compute the tokens every example of a batch starts with (system prompt, turn header)
    once; each example attends to that prefix and to itself only, so results equal separate forwards."""
    merge: bool = False
    """Also write merged full weights to `output/merged` (LoRA methods)."""
    threads: int | None = Field(default=None, ge=1)
    """CPU threads for torch (default: the cores this process may use)."""
    compile: bool = False
    """torch.compile the model (measure first: it rarely pays for short CPU runs)."""

    @model_validator(mode="after")
    def _kd_needs_a_teacher(self) -> TrainConfig:
        # a rule across two fields: no Field constraint can say it
        if self.method == "kd" and not self.teacher:
            raise ValueError("method kd needs a `teacher` model")
        return self

    @property
    def run_name(self) -> str:
        return self.name or Path(self.output).name


def load_train_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a train.yaml (errors name file:line: field); relative task paths are tried against the
    config's folder first, so an example config works from any current folder."""
    cfg = load_yaml_model(path, TrainConfig, overrides)
    if cfg.task and not Path(cfg.task).exists():
        beside = Path(path).parent / cfg.task
        if beside.exists():
            cfg.task = str(beside)
    return cfg
