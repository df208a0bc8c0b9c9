"""Label tasks: score every label by log-likelihood (label tokens + end-of-turn token after the
chat template's generation prompt, the same rule as `protege serve`'s constrained choice), so the
student can never answer outside the label set; accuracy and macro-F1 from those choices.

Scoring reuses packing: each (prompt, label) candidate is one example in a padding-free row, and
only the label positions reach the vocabulary head.
"""

from __future__ import annotations

from typing import Any

import torch

from protege.train.data import Example, collate, tokenize_chat
from protege.train.model import answer_logits, to_device


def candidates(tok: Any, prompt: list[dict[str, str]], labels: list[str], max_length: int) -> list[Example]:
    return [tokenize_chat(tok, prompt + [{"role": "assistant", "content": lab}], max_length) for lab in labels]


@torch.inference_mode()
def score_choices(
    model: Any, tok: Any, prompts: list[list[dict[str, str]]], labels: list[str], max_length: int = 512, rows: int = 1
) -> torch.Tensor:
    """[len(prompts), len(labels)] summed log-probabilities. With one prompt per forward its candidates
    share the whole prompt (collate's shared prefix): the prompt runs once, then only the label tokens."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(prompts), rows):
        exs = [c for p in prompts[start : start + rows] for c in candidates(tok, p, labels, max_length)]
        batch = to_device(collate(exs, packing=True), device)
        logp = torch.log_softmax(answer_logits(model, batch), dim=-1)
        tok_lp = logp.gather(1, batch["targets"][:, None]).squeeze(1)
        sums = torch.zeros(len(exs), device=device).index_add_(0, batch["example"], tok_lp)
        out.append(sums.view(-1, len(labels)).cpu())
    return torch.cat(out)


def predict_labels(
    model: Any, tok: Any, prompts: list[list[dict[str, str]]], labels: list[str], **kw: Any
) -> list[str]:
    scores = score_choices(model, tok, prompts, labels, **kw)
    return [labels[i] for i in scores.argmax(1).tolist()]


def label_metrics(gold: list[str | None], pred: list[str], labels: list[str]) -> dict[str, float]:
    """Accuracy and macro-F1 of the records that have a gold label, by `protege.metrics` (macro-F1 over
    all of `labels`), so a run's `eval_macro_f1` is the number `protege eval` reports for the same answers."""
    from protege.metrics import accuracy, macro_f1

    pairs = [(g, p) for g, p in zip(gold, pred, strict=True) if g is not None]
    if not pairs:
        return {}
    g, p = [x for x, _ in pairs], [y for _, y in pairs]
    return {"accuracy": accuracy(g, p), "macro_f1": macro_f1(g, p, labels)}
