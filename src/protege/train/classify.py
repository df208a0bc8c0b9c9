"""Label tasks: the student answers by constrained choice (every label scored by log-likelihood
after the prompt, by the one scorer in models/choice.py that `protege serve` and in-process teachers
use too), so it can never answer outside the label set; accuracy and macro-F1 from those choices.
"""

from __future__ import annotations

from typing import Any

from protege.models.choice import best_choice, score_choices

__all__ = ["label_metrics", "predict_labels", "score_choices"]


def predict_labels(
    model: Any, tok: Any, prompts: list[list[dict[str, str]]], labels: list[str], **kw: Any
) -> list[str]:
    """The most likely label for each chat prompt; `kw` goes to `score_choices` (max_length, batch)."""
    scores = score_choices(model, tok, prompts, labels, **kw)
    return [best_choice(labels, row) for row in scores.tolist()]


def label_metrics(gold: list[str | None], pred: list[str], labels: list[str]) -> dict[str, float]:
    """Accuracy and macro-F1 (mean over labels of per-label F1; a label never predicted nor present scores 0)."""
    pairs = [(g, p) for g, p in zip(gold, pred, strict=True) if g is not None]
    if not pairs:
        return {}
    acc = sum(g == p for g, p in pairs) / len(pairs)
    f1s = []
    for lab in labels:
        tp = sum(g == lab and p == lab for g, p in pairs)
        fp = sum(g != lab and p == lab for g, p in pairs)
        fn = sum(g == lab and p != lab for g, p in pairs)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return {"accuracy": acc, "macro_f1": sum(f1s) / len(f1s)}
