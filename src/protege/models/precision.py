"""What `dtype: auto` means, decided in one place for training, serving and evaluation.

Training (`training_precision`):
- `auto` is **bf16 mixed precision** where the hardware has bf16 matmul (a CUDA GPU with bf16, or a
  CPU with AVX512-BF16 or AMX), else float32. Mixed precision means `torch.autocast(bfloat16)`:
  matmuls and attention run in bf16, while weights (the frozen base included), norms, softmax, the
  residual stream, the loss and AdamW stay float32. Why not bf16 *weights* (the frozen base cast to
  bf16, as before): then the residual stream and every norm run in bf16 too, and on the 800-row
  tweeteval LoRA job that cost 5 points of accuracy (0.725 vs 0.775, measured on an AVX512-BF16
  host); autocast keeps float32 wherever rounding accumulates. bf16 weights remain available as
  `dtype: bfloat16` for users who want the memory saving.
- `bf16-mixed`, `float32` and `bfloat16` ask for one explicitly (`bfloat16` with `method: full` is
  bf16-mixed: full fine-tuning keeps float32 weights, whose small AdamW updates would vanish in bf16).

Inference (`inference_dtype`): `auto` is float32 on a CPU, whatever the CPU: bf16 changes greedy
answers with a batch's composition (padding and batch size round differently), which would break
"a request gets the same answer however it is batched". On a GPU, bf16 (float16 without bf16).

The host decides `auto`, so the same config can train differently on two CPUs of one machine kind.
`PROTEGE_CPU_BF16` overrides the detection: `0` makes every CPU act as one without bf16 (float32
everywhere, the same numbers on every host), `1` as one with it (exercises the bf16 path on any host;
without hardware support bf16 matmul is ~100x slower). Every run records the precision it used.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from protege.errors import UserError

DtypeName = Literal["auto", "float32", "bf16-mixed", "bfloat16", "float16"]
ENV_CPU_BF16 = "PROTEGE_CPU_BF16"

_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "bf16_mixed": "bf16-mixed"}
_NAMES = ("auto", "float32", "bf16-mixed", "bfloat16", "float16")


@dataclass(frozen=True)
class Precision:
    """How a training run computes: the dtype weights are loaded in, and the autocast dtype (or none)."""

    name: str
    """float32 | bf16-mixed | bfloat16 | float16: what was actually used (never `auto`)."""
    weights: Any
    """torch dtype of the loaded (frozen) weights; trainable weights are always float32."""
    autocast: Any = None
    """torch dtype of matmuls under torch.autocast, or None for none."""
    emulated: bool = False
    """bf16 matmuls emulated on a CPU without native bf16 (see `bf16_matmul_emulation`)."""

    def matmul_context(self) -> Any:
        """Wrap a whole run (forward and backward) in this: emulates bf16 matmuls where needed."""
        return bf16_matmul_emulation() if self.emulated else contextlib.nullcontext()


def canonical(dtype: str) -> str:
    """The canonical spelling of a dtype name (aliases such as bf16 / fp32 accepted); usage error otherwise."""
    name = _ALIASES.get(dtype, dtype)
    if name not in _NAMES:
        raise UserError(f"dtype {dtype!r}: expected one of {', '.join(_NAMES)}")
    return name


@cache
def _cpuinfo_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_has_bf16() -> bool:
    """Native bf16 matmul on this CPU, as `auto` sees it (PROTEGE_CPU_BF16 overrides the detection)."""
    forced = os.environ.get(ENV_CPU_BF16, "").strip().lower()
    if forced in ("0", "false", "no", "off"):
        return False
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced not in ("", "auto"):
        raise UserError(f"{ENV_CPU_BF16}={forced!r}: expected 0, 1 or auto")
    return _cpuinfo_has_bf16()


def _cuda_bf16() -> bool | None:
    """True/False on a CUDA machine (bf16 supported or not), None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    return bool(torch.cuda.is_bf16_supported())


def training_precision(dtype: str = "auto") -> Precision:
    """The precision a training run uses for `dtype` (see the module docstring for `auto`)."""
    import torch

    name = canonical(dtype)
    if name == "auto":
        cuda = _cuda_bf16()
        native = cuda if cuda is not None else cpu_has_bf16()
        name = "bf16-mixed" if native else "float32"
    if name == "float16":  # fp16 training needs loss scaling, which this loop does not do
        raise UserError("dtype float16: not for training; use auto, float32, bf16-mixed or bfloat16")
    emulated = name != "float32" and _cuda_bf16() is None and not _cpuinfo_has_bf16()
    return {
        "float32": Precision("float32", torch.float32),
        "bf16-mixed": Precision("bf16-mixed", torch.float32, torch.bfloat16, emulated),
        "bfloat16": Precision("bfloat16", torch.bfloat16, None, emulated),
    }[name]


def inference_dtype(dtype: str = "auto") -> Any:
    """The torch dtype to load a model in for answering requests (float32 on CPU under `auto`)."""
    import torch

    name = canonical(dtype)
    if name == "auto":
        cuda = _cuda_bf16()
        if cuda is None:
            return torch.float32
        return torch.bfloat16 if cuda else torch.float16
    return {
        "float32": torch.float32,
        "bf16-mixed": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
    }[name]


def dtype_name(dtype: Any) -> str:
    """`torch.float32` -> `float32`."""
    return str(dtype).replace("torch.", "")


def host_info() -> dict[str, Any]:
    """What decided `auto` on this machine, for run records and bench results."""
    import torch

    cuda = _cuda_bf16()
    info: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if cuda is not None else "cpu",
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cpu_bf16": _cpuinfo_has_bf16(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    forced = os.environ.get(ENV_CPU_BF16)
    if forced:
        info[ENV_CPU_BF16] = forced
    return info


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown CPU"
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "unknown CPU")


def describe_host(info: dict[str, Any]) -> str:
    """`host_info()` in words, for model cards and bench summaries: whether bf16 was native is a
    property of the host, never of the project."""
    if info.get("device", "cpu") != "cpu":
        return str(info["device"])
    bf16 = "with" if info.get("cpu_bf16") else "without"
    forced = f", {ENV_CPU_BF16}={info[ENV_CPU_BF16]}" if info.get(ENV_CPU_BF16) else ""
    cores = f"{info['cores']} cores, " if info.get("cores") else ""
    return f"{info.get('cpu') or 'CPU'} {bf16} AVX512-BF16/AMX ({cores}{info.get('threads')} threads{forced})"


def bf16_matmul_emulation() -> Any:
    """A TorchDispatchMode that runs bf16 matrix products as float32 products of the same
    bf16-rounded operands, rounding the result to bf16. On a CPU without AVX512-BF16, PyTorch's
    own bf16 matmul is a scalar fallback (~0.9 GFLOPS here vs ~80 in float32); a native bf16 GEMM
    accumulates in float32 and rounds once, which is what this computes, so the numbers match a
    bf16 host's up to summation order, at float32 speed. Everything else (autocast's casts, bf16
    elementwise ops, attention) runs as PyTorch runs it. tests/test_precision.py compares it with
    PyTorch's own bf16 matmul."""
    return _emulation_mode()()


@cache
def _emulation_mode() -> Any:
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    products = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default}
    bf16 = torch.bfloat16

    def up(x: Any) -> Any:
        return x.float() if isinstance(x, torch.Tensor) and x.dtype == bf16 else x

    class Bf16MatmulEmulation(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            kwargs = kwargs or {}
            if func in products and any(isinstance(a, torch.Tensor) and a.dtype == bf16 for a in args):
                return func(*[up(a) for a in args], **kwargs).to(bf16)
            return func(*args, **kwargs)

    return Bf16MatmulEmulation
