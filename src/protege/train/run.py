"""`train(cfg)`: data -> model for the method -> the loop -> outputs (adapter or weights, tokenizer,
model card, metrics.json, a `runs` row). The same function runs under `accelerate launch`."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from protege.errors import UserError
from protege.log import console
from protege.models.precision import Precision, host_info, training_precision
from protege.train.config import TrainConfig
from protege.train.distributed import distributed_summary


def _threads(cfg: TrainConfig) -> int:
    """All cores this process may use, split among the processes of this machine."""
    if cfg.threads:
        return cfg.threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, cores // local)


def _accelerator() -> Any:
    from accelerate import Accelerator

    from protege.train.distributed import enable_cpu_fsdp, fsdp_requested

    # our own precision handling (models.precision: autocast over float32 weights), so none here
    cpu = not torch.cuda.is_available()
    acc = Accelerator(cpu=cpu)
    if cpu and acc.num_processes > 1 and fsdp_requested():
        enable_cpu_fsdp(acc)
    return acc


def load_causal_lm(path: str, dtype: torch.dtype) -> Any:
    """The model with SDPA attention (what packed, padding-free batches rely on). Bundled models
    need no config surgery here: `models.fetch.pull` strips the leftover GGUF quantization_config."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")


def build_model(cfg: TrainConfig, resolved: Any, device: Any, precision: Precision) -> Any:
    """The model ready to train under `precision` (see models.precision: `auto` is bf16 autocast over
    float32 weights where the hardware has bf16, else float32). Trainable weights are float32 always."""
    from protege.train.full import prepare_full
    from protege.train.lora import attach_lora, load_4bit, require_qlora

    if resolved.is_adapter:
        raise UserError(f"base {cfg.base}: is an adapter; train on its base model (or merge it first)")
    path = str(resolved.path)
    if cfg.method == "qlora":
        require_qlora()
        return attach_lora(load_4bit(path, precision.autocast or precision.weights), cfg.lora)
    if cfg.method == "full":
        return prepare_full(load_causal_lm(path, torch.float32)).to(device)
    base = load_causal_lm(path, precision.weights)
    base.config.use_cache = False
    return attach_lora(base, cfg.lora).to(device)


def train(cfg: TrainConfig, workspace: Any = None, resume: bool = False) -> dict[str, Any]:
    """Run a training job end to end; returns the metrics (also in output/metrics.json and the run row)."""
    from transformers import set_seed

    from protege.models.load import load_tokenizer, resolve_model, with_default_system
    from protege.names import check_name
    from protege.tasks import load_task
    from protege.train.data import load_conversations, tokenize_all
    from protege.train.loop import LoopInputs, run_loop
    from protege.train.model import AnswerLoss
    from protege.workspace import open_workspace

    ws = workspace or open_workspace()
    check_name(cfg.run_name, "run name")
    acc = _accelerator()
    torch.set_num_threads(_threads(cfg))
    set_seed(cfg.seed)
    output = ws.resolve(cfg.output)
    task = load_task(cfg.task) if cfg.task else None
    labels = task.labels if task and task.output.kind == "label" else None

    train_data = load_conversations(cfg.data.train, task, ws.store, cfg.data.split, cfg.data.limit, cfg.data.review)
    eval_data = (
        load_conversations(cfg.data.eval, task, ws.store, cfg.data.eval_split, cfg.data.eval_limit)
        if cfg.data.eval
        else None
    )
    resolved = resolve_model(cfg.base)
    tok = load_tokenizer(resolved)
    if cfg.system_prompt is not None:
        tok.chat_template = with_default_system(tok.chat_template, cfg.system_prompt)
    examples, truncated = tokenize_all(tok, train_data.chats, cfg.max_length)
    if truncated:
        console.print(
            f"[yellow]{truncated} of {len(examples)} training examples were longer than max_length="
            f"{cfg.max_length} tokens and were truncated (prompt first)[/]"
        )
    precision = training_precision(cfg.dtype)
    if cfg.method == "full" and precision.name == "bfloat16":
        precision = training_precision("bf16-mixed")  # full weights stay float32: bf16 updates would vanish
    model = build_model(cfg, resolved, acc.device, precision)
    teacher = None
    if cfg.method == "kd":
        from protege.train.kd import load_teacher

        student_vocab = model.get_output_embeddings().weight.shape[0]
        teacher = load_teacher(cfg.teacher, precision, tok, student_vocab).to(acc.device)
    if cfg.compile:
        model = torch.compile(model)
    loss_module = AnswerLoss(model, teacher, cfg.kd, precision.autocast)

    if acc.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        record = cfg.model_dump(mode="json") | {"precision": precision.name, "host": host_info()}
        ws.store.start_run(cfg.run_name, "train", record, str(output))
    evaluate, metric = _evaluator(cfg, model, tok, eval_data, labels, loss_module)
    t0 = time.perf_counter()
    if precision.emulated:
        console.print(f"no native bf16 on this CPU: {precision.name} matmuls emulated (bf16 numbers, float32 speed)")
    try:
        with precision.matmul_context():
            state = run_loop(LoopInputs(cfg, examples, loss_module, acc, output, evaluate, metric, resume))
    except KeyboardInterrupt:
        if acc.is_main_process:
            ws.store.finish_run(cfg.run_name, "interrupted", None)
        raise
    except Exception:
        if acc.is_main_process:
            ws.store.finish_run(cfg.run_name, "failed", None)
        raise
    seconds = time.perf_counter() - t0
    metrics = _summary(state, seconds, len(examples), truncated)
    metrics["processes"] = acc.num_processes
    metrics["distributed"] = distributed_summary(acc, loss_module)
    metrics["precision"] = precision.name
    metrics["bf16_matmul"] = ("emulated" if precision.emulated else "native") if precision.name != "float32" else None
    metrics["host"] = host_info()
    from protege.train.distributed import full_state_dict, is_sharded

    # FSDP: each rank holds a slice of every weight; gather them (all ranks take part) before saving
    full = full_state_dict(loss_module) if is_sharded(loss_module) else None
    if acc.is_main_process:
        from protege.train.outputs import write_outputs

        terms = _terms(ws, cfg)
        write_outputs(cfg, resolved, model, tok, output, metrics, train_data, eval_data, terms, state_dict=full)
        ws.store.finish_run(cfg.run_name, "done", metrics)
        console.print(f"[green]trained[/] {cfg.run_name} -> {output}")
    acc.wait_for_everyone()
    return metrics


def _evaluator(
    cfg: TrainConfig, model: Any, tok: Any, eval_data: Any, labels: list[str] | None, loss_module: Any
) -> tuple[Any, tuple[str, bool]]:
    """Eval loss on the held-out answers, plus accuracy / macro-F1 by constrained choice for label tasks."""
    if eval_data is None:
        return None, ("eval_loss", False)
    from protege.train.classify import label_metrics, predict_labels
    from protege.train.data import collate, tokenize_all
    from protege.train.distributed import is_sharded, unsharded
    from protege.train.model import to_device

    eval_examples, _ = tokenize_all(tok, eval_data.chats, cfg.max_length)
    device = next(model.parameters()).device

    @torch.inference_mode()
    def evaluate() -> dict[str, float]:
        total, n = 0.0, 0
        for start in range(0, len(eval_examples), 16):
            chunk = eval_examples[start : start + 16]
            b = to_device(collate(chunk, packing=True), device)
            total += loss_module(
                b["input_ids"], b["position_ids"], b["attention_mask"], b["pred_idx"], b["targets"]
            ).item()
            n += int(b["targets"].numel())
        out = {"eval_loss": total / max(1, n)}
        if labels:
            prompts = [c[:-1] for c in eval_data.chats]
            # label scoring calls the model inside the loss module: under FSDP its weights are gathered first
            whole = unsharded(loss_module) if is_sharded(loss_module) else contextlib.nullcontext()
            with whole, loss_module.precision_context():
                pred = predict_labels(model, tok, prompts, labels, max_length=cfg.max_length)
            out.update({f"eval_{k}": v for k, v in label_metrics(eval_data.labels, pred, labels).items()})
        return out

    return evaluate, (("eval_accuracy", True) if labels else ("eval_loss", False))


def _summary(state: Any, seconds: float, n: int, truncated: int) -> dict[str, Any]:
    last = state.history[-1] if state.history else {}
    evals = [h for h in state.history if "eval_loss" in h]
    out = {
        "steps": state.step,
        "train_examples": n,
        "truncated": truncated,
        "trained_tokens": state.tokens,
        "seconds": round(seconds, 2),
        "train_seconds": round(state.seconds, 2),
        "tokens_per_s": round(state.tokens / max(state.seconds, 1e-9), 1),
        "final_loss": last.get("loss"),
        "stopped_early": state.stopped_early,
        "history": state.history,
    }
    if evals:
        out.update({k: v for k, v in evals[-1].items() if k.startswith("eval_")})
    return out


def _terms(ws: Any, cfg: TrainConfig) -> list[str]:
    terms = []
    for t in ws.config.teachers.values():
        if t.terms and cfg.teacher in (t.model,):
            terms.append(t.terms)
    return terms


def save_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, default=str))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0
