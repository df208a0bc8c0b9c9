"""The shared training loop for every method.

Why our own loop rather than transformers' Trainer / TRL's SFTTrainer: on a 2-core CPU the
measured cost of a step is dominated by padding, the full-vocabulary head on every token and fp32
matmuls. This loop feeds padding-free packed rows, computes the head only on answer tokens
(model.AnswerLoss), runs matmuls under bf16 autocast where the hardware has it (models.precision)
and steps a fused AdamW; bench/train.py measures the gain against SFTTrainer on the same job.
Distributed runs go through accelerate (DDP).

The data order is a pure function of (seed, step), so `--resume` replays exactly the batches an
uninterrupted run would have seen; checkpoints hold the trainable weights, optimiser, scheduler,
RNG and loop state.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from protege.log import console, progress
from protege.train.config import TrainConfig
from protege.train.data import Example, collate, epoch_order
from protege.train.distributed import configure_deepspeed, is_deepspeed, is_sharded
from protege.train.model import to_device


@dataclass
class LoopState:
    step: int = 0
    tokens: int = 0
    """Trained (non-padding) tokens so far, all processes."""
    best: float | None = None
    bad_evals: int = 0
    stopped_early: bool = False
    seconds: float = 0.0
    """Time spent in training steps (evaluation excluded), for tokens/s."""
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Plan:
    """Which examples each optimiser step sees: global batch = batch_size x grad_accum x processes."""

    n: int
    per_step: int
    steps_per_epoch: int
    total: int
    seed: int

    def step_indices(self, step: int) -> list[int]:
        epoch, i = divmod(step, self.steps_per_epoch)
        order = epoch_order(self.n, self.seed, epoch)
        return order[i * self.per_step : (i + 1) * self.per_step]


def make_plan(n: int, cfg: TrainConfig, world: int) -> Plan:
    per_step = cfg.batch_size * cfg.grad_accum * world
    steps_per_epoch = max(1, math.ceil(n / per_step))
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    return Plan(n, per_step, steps_per_epoch, total, cfg.seed)


def slots(indices: list[int], accum: int, world: int, rank: int) -> list[list[int]]:
    """This process's micro-batches: round-robin over accum x world slots, so one process with batch 8
    and two with batch 4 see the same examples in each step."""
    n_slots = accum * world
    return [indices[a * world + rank :: n_slots] for a in range(accum)]


def build_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig, total: int) -> tuple[Any, Any]:
    from transformers import get_scheduler

    try:  # the fused kernel does the whole update in one pass (CPU and CUDA since torch 2.4)
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError):
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = int(cfg.warmup if cfg.warmup >= 1 else round(cfg.warmup * total))
    sched = get_scheduler(cfg.schedule, opt, num_warmup_steps=warmup, num_training_steps=total)
    return opt, sched


# ---- checkpoints --------------------------------------------------------------------------------
def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    opt: Any,
    sched: Any,
    state: LoopState,
    keep: int = 2,
    main: bool = True,
) -> Path:
    """Write a checkpoint (from the main process). A sharded (FSDP) model is gathered first, which
    every rank must take part in: call this on all ranks with `main` telling who writes."""
    from protege.train.distributed import full_optimizer_state, full_trainable_state

    path = folder / f"step-{state.step:07d}"
    if is_sharded(model):
        weights, optim = full_trainable_state(model), full_optimizer_state(model, opt)
    elif main:
        weights, optim = trainable_state(model), opt.state_dict()
    if not main:
        return path
    tmp = folder / f".tmp-{state.step}"
    tmp.mkdir(parents=True, exist_ok=True)
    torch.save(weights, tmp / "trainable.pt")
    torch.save({"optimizer": optim, "scheduler": sched.state_dict(), "rng": torch.get_rng_state()}, tmp / "optim.pt")
    (tmp / "state.json").write_text(json.dumps(asdict(state), indent=1))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)  # a checkpoint is complete or absent, never half-written
    for old in sorted(folder.glob("step-*"))[:-keep]:
        shutil.rmtree(old)
    return path


def latest_checkpoint(folder: Path) -> Path | None:
    found = sorted(folder.glob("step-*")) if folder.exists() else []
    return found[-1] if found else None


def _load_tensors(path: Path) -> Any:
    """torch.load with weights_only=True: a run folder may have been copied from elsewhere, and a
    full unpickle would run whatever code the file names. Tensors, optimiser, scheduler and RNG
    state need nothing more."""
    import pickle

    from protege.errors import UserError

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: refused to load: it holds more than tensors and plain state ({first})") from None


def load_checkpoint(path: Path, model: torch.nn.Module, opt: Any, sched: Any) -> LoopState:
    from protege.train.distributed import load_full_state

    weights = _load_tensors(path / "trainable.pt")
    missing = set(weights) - {n for n, _ in model.named_parameters()}
    if missing:
        raise RuntimeError(f"{path}: checkpoint does not match the model ({sorted(missing)[:3]} ...)")
    extra = _load_tensors(path / "optim.pt")
    if is_sharded(model):  # full tensors in the file, slices in the model: every rank loads its own
        load_full_state(model, opt, weights, extra["optimizer"])
    else:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, w in weights.items():
                params[n].copy_(w)
        opt.load_state_dict(extra["optimizer"])
    sched.load_state_dict(extra["scheduler"])
    torch.set_rng_state(extra["rng"])
    return LoopState(**json.loads((path / "state.json").read_text()))


# ---- metric sinks -------------------------------------------------------------------------------
class Sinks:
    """TensorBoard and MLflow, each only when installed; the run record gets everything regardless."""

    def __init__(self, folder: Path, enabled: bool):
        self.tb = self.mlflow = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(folder / "tensorboard"))
        except ImportError:
            pass
        try:
            import mlflow

            self.mlflow = mlflow
        except ImportError:
            pass

    def log(self, metrics: dict[str, float], step: int) -> None:
        nums = {k: v for k, v in metrics.items() if isinstance(v, int | float) and k != "step"}
        if self.tb:
            for k, v in nums.items():
                self.tb.add_scalar(k, v, step)
        if self.mlflow:
            self.mlflow.log_metrics(nums, step=step)

    def close(self) -> None:
        if self.tb:
            self.tb.close()


# ---- the loop -----------------------------------------------------------------------------------
@dataclass
class LoopInputs:
    cfg: TrainConfig
    examples: list[Example]
    loss_module: torch.nn.Module
    accelerator: Any
    output: Path
    evaluate: Callable[[], dict[str, float]] | None = None
    """Returns eval metrics; `eval_metric` picks the one early stopping watches."""
    eval_metric: tuple[str, bool] = ("eval_loss", False)
    """(name, higher_is_better)."""
    resume: bool = False


def run_loop(inp: LoopInputs) -> LoopState:
    cfg, acc = inp.cfg, inp.accelerator
    plan = make_plan(len(inp.examples), cfg, acc.num_processes)
    params = [p for p in inp.loss_module.parameters() if p.requires_grad]
    opt, sched = build_optimizer(params, cfg, plan.total)
    if is_deepspeed(acc):
        configure_deepspeed(acc, cfg.batch_size, cfg.grad_accum, inp.resume)
    ddp_module, opt = acc.prepare(inp.loss_module, opt)
    ckpt_dir = inp.output / "checkpoints"
    state = LoopState()
    if inp.resume:
        last = latest_checkpoint(ckpt_dir)
        if last is None:
            console.print(f"[yellow]--resume: no checkpoint in {ckpt_dir}; starting from step 0[/]")
        else:
            state = load_checkpoint(last, inp.loss_module, opt, sched)
            console.print(f"resuming from {last.name} (step {state.step}/{plan.total})")
    main = acc.is_main_process
    sinks = Sinks(inp.output, main)
    bar = progress(_info_column())
    task_id = bar.add_task("train", total=plan.total, completed=state.step, info="")
    try:
        with bar if main else _null():
            _steps(inp, plan, ddp_module, opt, sched, state, bar, task_id, sinks)
    except KeyboardInterrupt:
        if main and not is_sharded(inp.loss_module):  # sharded: gathering now could wait forever on a rank
            path = save_checkpoint(ckpt_dir, inp.loss_module, opt, sched, state)
            console.print(f"[yellow]interrupted: checkpoint saved to {path}; continue with --resume[/]")
        raise
    finally:
        sinks.close()
    save_checkpoint(ckpt_dir, inp.loss_module, opt, sched, state, main=main)
    acc.wait_for_everyone()
    return state


def _steps(
    inp: LoopInputs,
    plan: Plan,
    module: Any,
    opt: Any,
    sched: Any,
    state: LoopState,
    bar: Any,
    task_id: Any,
    sinks: Sinks,
) -> None:
    cfg, acc = inp.cfg, inp.accelerator
    device = acc.device
    pad = 0
    # DeepSpeed divides each micro-batch's loss by its gradient_accumulation_steps itself; this loop
    # already divides by the step's target count, so that division is undone
    deepspeed = is_deepspeed(acc)
    scale = acc.num_processes * (cfg.grad_accum if deepspeed else 1)
    module.train()
    while state.step < plan.total and not state.stopped_early:
        t0 = time.perf_counter()
        indices = plan.step_indices(state.step)
        n_targets = sum(inp.examples[i].n_targets for i in indices)
        micro = slots(indices, cfg.grad_accum, acc.num_processes, acc.process_index)
        loss_sum = torch.zeros((), device=device)
        for k, chunk in enumerate(micro):
            batch = to_device(collate([inp.examples[i] for i in chunk], cfg.packing, pad, cfg.share_prefix), device)
            sync = k == len(micro) - 1
            if deepspeed:  # the engine steps at the boundary accelerate tells it, i.e. the last micro-batch
                acc.gradient_state._set_sync_gradients(sync)
            with acc.no_sync(module) if not sync else _null():
                loss = module(
                    batch["input_ids"],
                    batch["position_ids"],
                    batch["attention_mask"],
                    batch["pred_idx"],
                    batch["targets"],
                )
                # sum / global target count, times world size because DDP averages over processes
                acc.backward(loss * scale / max(1, n_targets))
            loss_sum += loss.detach()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        state.step += 1
        state.tokens += sum(len(inp.examples[i].input_ids) for i in indices)
        step_loss = acc.reduce(loss_sum, "sum").item() / max(1, n_targets)
        state.seconds += time.perf_counter() - t0
        rate = state.tokens / max(1e-9, state.seconds)
        row = {"step": state.step, "loss": step_loss, "lr": sched.get_last_lr()[0], "tokens_per_s": rate}
        if inp.evaluate and (state.step == plan.total or (cfg.eval_every and state.step % cfg.eval_every == 0)):
            row.update(_evaluate(inp, module, state))
        state.history.append(row)
        sinks.log(row, state.step)
        bar.update(task_id, completed=state.step, info=f"loss {step_loss:.4f}  lr {row['lr']:.2e}  {rate:.0f} tok/s")
        if cfg.save_every and state.step % cfg.save_every == 0 and state.step < plan.total:
            save_checkpoint(inp.output / "checkpoints", inp.loss_module, opt, sched, state, main=acc.is_main_process)


def _evaluate(inp: LoopInputs, module: Any, state: LoopState) -> dict[str, float]:
    module.eval()
    try:
        metrics = inp.evaluate()
    finally:
        module.train()
    name, higher = inp.eval_metric
    value = metrics.get(name)
    if value is not None:
        better = state.best is None or (value > state.best if higher else value < state.best)
        if better:
            state.best, state.bad_evals = value, 0
        else:
            state.bad_evals += 1
            if inp.cfg.early_stopping and state.bad_evals >= inp.cfg.early_stopping:
                state.stopped_early = True
                console.print(f"early stopping: {name} has not improved for {state.bad_evals} evaluations")
    return metrics


def _info_column() -> Any:
    from rich.progress import TextColumn

    return TextColumn("{task.fields[info]}")


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
