"""A batch's common prompt head, run once: the shared-prefix KV cache used by batched generation
(`protege serve`) and by constrained-choice scoring (every stage, see choice.py).

Chat prompts of one batch often share a long head (a system turn, few-shot examples); running it
once and repeating its cache per row saves most of a short request's prefill.
"""

from __future__ import annotations

from typing import Any

import torch

SHARED_PREFIX_MIN = 8
"""A batch's common prompt head shorter than this is not worth a separate pass."""


def common_prefix(prompts: list[list[int]]) -> int:
    """Number of leading tokens every prompt shares."""
    first = prompts[0]
    n = min(len(p) for p in prompts)
    for p in prompts[1:]:
        n = next((i for i in range(n) if p[i] != first[i]), n)
    return n


def shared_head(prompts: list[list[int]]) -> int:
    """Length of the prompts' common head worth running once (never a whole prompt: each row keeps
    at least one token of its own, whose logits the caller needs)."""
    if len(prompts) < 2:
        return 0
    head = min(common_prefix(prompts), min(len(p) for p in prompts) - 1)
    return head if head >= SHARED_PREFIX_MIN else 0


@torch.inference_mode()
def shared_head_cache(model: Any, prompts: list[list[int]]) -> tuple[Any, int]:
    """(cache holding the batch's common prompt head once per row, its length), or (None, 0)."""
    head = shared_head(prompts)
    if not head:
        return None, 0
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    device = model_device(model)
    ids = torch.tensor([prompts[0][:head]], device=device)
    ones = torch.ones((1, head), dtype=torch.long, device=device)
    model(input_ids=ids, attention_mask=ones, past_key_values=cache, use_cache=True, logits_to_keep=1)
    cache.batch_repeat_interleave(len(prompts))
    return cache, head


def model_device(model: Any) -> torch.device:
    return next(model.parameters()).device
