"""Full fine-tuning: every weight trains. Weights stay float32 (AdamW updates of ~1e-6 relative size
vanish in bf16) and the matmuls run under bf16 autocast where the hardware has it."""

from __future__ import annotations

from typing import Any


def prepare_full(model: Any) -> Any:
    """Float32 master weights, all trainable."""
    import torch

    model = model.to(torch.float32)
    for p in model.parameters():
        p.requires_grad_(True)
    return model
