"""LoRA and QLoRA through PEFT. The frozen base is loaded in the run's weight dtype (float32 unless
`dtype: bfloat16`; bf16 matmuls come from autocast, models.precision); the adapter weights stay in
float32 (PEFT's autocast_adapter_dtype), so small updates are not lost to bf16 rounding."""

from __future__ import annotations

from typing import Any

from protege.errors import UserError
from protege.train.config import LoraConfig


def attach_lora(model: Any, cfg: LoraConfig) -> Any:
    """A PeftModel with a fresh adapter on `cfg.targets` (all-linear = every linear layer but the head)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.targets,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, peft_cfg, autocast_adapter_dtype=True)
    except ValueError as e:
        raise UserError(f"lora.targets: {e}") from None


def require_qlora() -> None:
    """QLoRA needs a CUDA GPU and bitsandbytes; say so in one line rather than failing deep inside."""
    import torch

    if not torch.cuda.is_available():
        raise UserError("method qlora needs a CUDA GPU (4-bit bitsandbytes kernels); use method: lora on CPU")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError("method qlora needs bitsandbytes: pip install bitsandbytes") from None


def load_4bit(path: str, dtype: Any) -> Any:
    """The base quantised to NF4 with double quantisation, ready for k-bit training (QLoRA recipe)."""
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    bnb = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
    )
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=bnb, dtype=dtype, device_map={"": 0})
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
