"""The training forward: hidden states -> only the answer positions -> vocabulary head -> loss.

Why not `model(input_ids, labels=...)`: that computes the 49k-wide vocabulary head for every token,
a large share of a 135M model's FLOPs, when a classification answer trains 2-3 tokens out of ~60.
Gathering the answer positions before the head skips that work (and its memory) entirely.
It is an nn.Module so DDP (accelerate) sees one forward and syncs gradients as usual.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from protege.train.kd import kd_loss_sum


def unwrap_hf(model: Any) -> Any:
    """The transformers model inside a PeftModel (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def answer_logits(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    """Logits (float32) at `batch["pred_idx"]` only: [n_targets, vocab]."""
    core = unwrap_hf(model)
    backbone = getattr(core, core.base_model_prefix)
    out = backbone(
        input_ids=batch["input_ids"],
        position_ids=batch["position_ids"],
        attention_mask=batch["attention_mask"],
        use_cache=False,
    )
    hidden = out.last_hidden_state
    hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch["pred_idx"])
    logits = core.get_output_embeddings()(hidden).float()
    cap = getattr(core.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


class AnswerLoss(torch.nn.Module):
    """Summed loss over answer tokens (the caller divides by the global target count so gradient
    accumulation and several processes give the same update as one big batch)."""

    def __init__(self, model: Any, teacher: Any = None, kd: Any = None, autocast: torch.dtype | None = None):
        super().__init__()
        self.model = model
        self.teacher = teacher  # not a registered submodule: frozen, kept out of DDP and of checkpoints
        self.kd = kd
        self.autocast = autocast

    @property
    def _no_split_modules(self) -> list[str]:
        """The transformers model's decoder-layer classes: accelerate's FSDP TRANSFORMER_BASED_WRAP reads
        them from the module it is given (this one), and without them it would shard no layer."""
        return list(getattr(unwrap_hf(self.model), "_no_split_modules", None) or [])

    def get_input_embeddings(self) -> Any:
        """With get_output_embeddings and tie_weights: FSDP2 groups a tied embedding and head as one unit,
        and re-ties them after loading, as it does for a transformers model."""
        return unwrap_hf(self.model).get_input_embeddings()

    def get_output_embeddings(self) -> Any:
        return unwrap_hf(self.model).get_output_embeddings()

    def tie_weights(self) -> None:
        unwrap_hf(self.model).tie_weights()

    def precision_context(self) -> Any:
        """torch.autocast for the run's matmul dtype (bf16-mixed), or nothing."""
        if self.autocast is None:
            return contextlib.nullcontext()
        device = "cuda" if next(self.model.parameters()).is_cuda else "cpu"
        return torch.autocast(device, dtype=self.autocast)

    def forward(self, input_ids, position_ids, attention_mask, pred_idx, targets) -> torch.Tensor:  # noqa: ANN001
        batch = {
            "input_ids": input_ids,
            "position_ids": position_ids,
            "attention_mask": attention_mask,
            "pred_idx": pred_idx,
        }
        with self.precision_context():
            logits = answer_logits(self.model, batch)
        if self.teacher is None:
            return torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
        with torch.no_grad(), self.precision_context():
            t_logits = answer_logits(self.teacher, batch)
        return kd_loss_sum(logits, t_logits, targets, self.kd.temperature, self.kd.alpha)


def to_device(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
