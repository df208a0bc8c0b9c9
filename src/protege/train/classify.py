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
    """Accuracy and macro-F1 of the records that have a gold label, by `protege.metrics` (macro-F1 over
    all of `labels`), so a run's `eval_macro_f1` is the number `protege eval` reports for the same answers."""
    from protege.metrics import accuracy, macro_f1

    pairs = [(g, p) for g, p in zip(gold, pred, strict=True) if g is not None]
    if not pairs:
        return {}
    g, p = [x for x, _ in pairs], [y for _, y in pairs]
    return {"accuracy": accuracy(g, p), "macro_f1": macro_f1(g, p, labels)}
