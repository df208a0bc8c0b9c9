"""Training on several processes: what changes when the weights are sharded (FSDP) rather than
copied (DDP), all through `accelerate launch` and accelerate's own FSDP2 wrapping.

- FSDP on CPU: accelerate enables its FSDP plugin only on accelerator devices (CUDA, XPU, ...), but
  torch's FSDP2 shards over gloo on CPU too. `enable_cpu_fsdp` turns the plugin on for a CPU run
  launched with an FSDP config, so the same wrapping runs (and is tested) without a GPU.
- What gets wrapped: the module handed to `accelerator.prepare` is model.AnswerLoss; it exposes the
  transformers model's `_no_split_modules`, so TRANSFORMER_BASED_WRAP shards each decoder layer.
- Saving: sharded parameters are DTensors holding this rank's slice. Weights, checkpoints and
  optimiser state are gathered into full tensors on every rank (a collective: all ranks call it)
  and written by the main process only.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from protege.errors import UserError


def fsdp_requested() -> bool:
    """`accelerate launch` with an FSDP config (it exports ACCELERATE_USE_FSDP)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def enable_cpu_fsdp(acc: Any) -> None:
    """Turn accelerate's FSDP plugin on for a multi-process CPU (gloo) run launched with an FSDP
    config: FSDP2 only (FSDP1 needs CUDA); the plugin reads the FSDP_* variables accelerate launch sets."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise UserError("FSDP on CPU: set fsdp_version: 2 in the accelerate config (FSDP1 runs on CUDA only)")
    acc.state.fsdp_plugin = plugin
    acc.state.distributed_type = DistributedType.FSDP
    # what AcceleratorState.__init__ does on a GPU: a later AcceleratorState() copies PartialState's type
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def is_deepspeed(acc: Any) -> bool:
    return str(getattr(acc.distributed_type, "value", acc.distributed_type)) == "DEEPSPEED"


def configure_deepspeed(acc: Any, batch_size: int, grad_accum: int, resume: bool) -> None:
    """Fill the DeepSpeed config before `accelerator.prepare`. accelerate's own config (from an
    accelerate config file) leaves the micro-batch size on `auto`, to be read from a DataLoader passed
    to prepare; protege batches itself (packing) and passes none, so prepare refused to start.
    ZeRO-3 partitions the parameters themselves, which this loop's checkpoints and outputs do not
    gather, and a DeepSpeed optimiser keeps its state in its own partitions: both are refused here."""
    ds = acc.state.deepspeed_plugin.deepspeed_config
    stage = (ds.get("zero_optimization") or {}).get("stage", 0)
    if stage == 3:
        raise UserError("DeepSpeed ZeRO-3 is not supported by protege train; use ZeRO-2, or FSDP to shard weights")
    if resume:
        raise UserError("--resume under DeepSpeed is not supported (its optimiser state is partitioned); rerun")
    fill_deepspeed_config(ds, batch_size, grad_accum, acc.num_processes)


def fill_deepspeed_config(ds: dict[str, Any], batch_size: int, grad_accum: int, world: int) -> dict[str, Any]:
    """Batch keys from the train config where the DeepSpeed config says `auto` (or nothing); a fixed
    value that disagrees is a usage error, since protege's loop decides the batches. Gradient
    clipping left on `auto` is off (accelerate would fill in 1.0; protege's loop does not clip)."""
    wanted = {
        "train_micro_batch_size_per_gpu": batch_size,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": batch_size * grad_accum * world,
    }
    for key, value in wanted.items():
        current = ds.get(key, "auto")
        if current == "auto":
            ds[key] = value
        elif int(current) != value:
            raise UserError(
                f"DeepSpeed config {key}: {current}, but the train config gives {value} "
                "(batch_size, grad_accum, processes); leave it on auto"
            )
    if ds.get("gradient_clipping", "auto") == "auto":
        ds["gradient_clipping"] = 0.0
    return ds


def is_sharded(module: torch.nn.Module) -> bool:
    """True when some parameter is a DTensor (FSDP2), i.e. each rank holds a slice."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


def distributed_summary(acc: Any, module: torch.nn.Module) -> dict[str, Any]:
    """How the run was spread, for metrics.json: accelerate's distributed type (NO, MULTI_CPU,
    MULTI_GPU, FSDP, DEEPSPEED) and, under FSDP, which module classes are sharding units."""
    from torch.distributed.fsdp import FSDPModule

    units = sorted({type(m).__name__.removeprefix("FSDP") for m in module.modules() if isinstance(m, FSDPModule)})
    out: dict[str, Any] = {"type": str(getattr(acc.distributed_type, "value", acc.distributed_type))}
    if units:
        out["fsdp_units"] = units
    return out


def _options(**kw: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(**kw)


def full_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer as full CPU tensors on the main process (empty elsewhere).
    Collective: every rank must call it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(module, options=_options(full_state_dict=True, cpu_offload=True))


def full_trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters, full, on the main process. Collective."""
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    return {n: t for n, t in full_state_dict(module).items() if n in trainable}


def full_optimizer_state(module: torch.nn.Module, opt: Any) -> dict[str, Any]:
    """The optimiser state keyed by parameter name, full, on the main process. Collective."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    inner = getattr(opt, "optimizer", opt)
    return get_optimizer_state_dict(module, inner, options=_options(full_state_dict=True, cpu_offload=True))


def load_full_state(module: torch.nn.Module, opt: Any, weights: dict[str, torch.Tensor], optim: dict) -> None:
    """Load full trainable weights and optimiser state (every rank read them) into the shards."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    set_model_state_dict(module, weights, options=_options(full_state_dict=True, strict=False))
    inner = getattr(opt, "optimizer", opt)
    set_optimizer_state_dict(module, inner, optim_state_dict=optim, options=_options(full_state_dict=True))


def unsharded(module: torch.nn.Module) -> Any:
    """A context in which every FSDP unit of `module` holds its full parameters, so code that calls
    an inner module directly (label scoring during evaluation) sees whole weights. All ranks enter it."""
    import contextlib

    from torch.distributed.fsdp import FSDPModule

    units = [m for m in module.modules() if isinstance(m, FSDPModule)]

    @contextlib.contextmanager
    def scope() -> Any:
        for unit in units:
            unit.unshard()
        try:
            yield
        finally:
            for unit in units:
                unit.reshard()

    return scope()
