"""Label metrics, one implementation for every stage: training's `eval_accuracy` / `eval_macro_f1`
and `protege eval` report the same numbers for the same answers.

Macro-F1 is scikit-learn's `f1_score(average="macro")` over an explicit label set: **all the task's
labels**, whichever occur in the data. A label absent from both the gold answers and the predictions
scores 0 (`zero_division=0`), the same for every model, so models scored on the same records are
always averaged over the same labels (scikit-learn's default, the labels that occur, would average a
model that never predicts a rare label over fewer labels than one that does). An answer outside the
label set (`None`, free text) is wrong for its gold label and counts as no label's prediction.

Intervals are percentile bootstraps by `scipy.stats.bootstrap` over records (indices are resampled,
so gold and predictions stay paired), seeded so the same run gives the same interval.

Kept in the base (not in `evaluate/`): training is an earlier stage than evaluation and must be able
to import it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

INVALID = "(invalid)"
"""Stands for an answer that names no label (confusion-matrix column, and scikit-learn's input)."""

RESAMPLES = 1000


# ---- point estimates --------------------------------------------------------------------------------
def accuracy(gold: Sequence[Any], pred: Sequence[Any]) -> float:
    _same_length(gold, pred)
    return sum(g == p for g, p in zip(gold, pred, strict=True)) / len(gold) if gold else 0.0


def macro_f1(gold: Sequence[str], pred: Sequence[str | None], labels: Sequence[str]) -> float:
    """Unweighted mean F1 over all of `labels` (see the module docstring for why that set)."""
    from sklearn.metrics import f1_score

    _same_length(gold, pred)
    if not gold or not labels:
        return 0.0
    return float(f1_score(_clean(gold), _clean(pred), labels=list(labels), average="macro", zero_division=0))


def per_class(gold: Sequence[str], pred: Sequence[str | None], labels: Sequence[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support (gold count) per label; 0 where undefined."""
    from sklearn.metrics import precision_recall_fscore_support

    _same_length(gold, pred)
    if not gold:
        return {lab: {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0} for lab in labels}
    p, r, f, s = precision_recall_fscore_support(
        _clean(gold), _clean(pred), labels=list(labels), average=None, zero_division=0
    )
    return {
        lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, lab in enumerate(labels)
    }


def confusion_matrix(gold: Sequence[str], pred: Sequence[str | None], labels: Sequence[str]) -> dict[str, Any]:
    """Rows are gold labels, columns predictions; an `(invalid)` column appears only when needed."""
    from sklearn.metrics import confusion_matrix as sk_confusion

    _same_length(gold, pred)
    pred = _clean(pred, labels)
    cols = list(labels) + ([INVALID] if INVALID in pred else [])
    if not gold:
        return {"rows": list(labels), "cols": cols, "matrix": [[0] * len(cols) for _ in labels]}
    matrix = sk_confusion(_clean(gold), pred, labels=cols).tolist()
    return {"rows": list(labels), "cols": cols, "matrix": matrix[: len(labels)]}


# ---- intervals --------------------------------------------------------------------------------------
def bootstrap_ci(
    n: int,
    statistic: Callable[[np.ndarray], np.ndarray],
    resamples: int = RESAMPLES,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over `n` paired records (scipy.stats.bootstrap).

    `statistic(idx)` gets resampled record indices, shape (batch, n), and returns one value per row:
    resampling indices keeps gold and predictions paired, so one function serves accuracy, macro-F1
    or any per-record score, and vectorised it costs one call per batch instead of one per resample."""
    from scipy.stats import bootstrap

    if n == 0:
        return (0.0, 0.0)
    if n == 1:
        value = float(statistic(np.zeros((1, 1), dtype=int))[0])
        return (value, value)
    result = bootstrap(
        (np.arange(n),),
        lambda idx, axis=-1: statistic(np.atleast_2d(idx)),
        vectorized=True,
        n_resamples=resamples,
        batch=250,
        confidence_level=level,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    ci = result.confidence_interval
    return (float(ci.low), float(ci.high))


def mean_ci(values: Sequence[float], resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    return bootstrap_ci(len(arr), lambda idx: arr[idx].mean(axis=-1), resamples=resamples, seed=seed)


def macro_f1_resampled(
    gold: Sequence[str], pred: Sequence[str | None], labels: Sequence[str]
) -> Callable[[np.ndarray], np.ndarray]:
    """Macro-F1 of many resamples in one scikit-learn call: resample b's label k becomes indicator
    column b*K+k, `f1_score(average=None)` gives every column's binary F1 (the per-label F1 of
    multiclass scoring with `labels=labels`), and each row of K is averaged. Equal to `macro_f1` on
    the resampled lists (tested), at a thousandth of the calls."""
    from sklearn.metrics import f1_score

    index = {lab: i for i, lab in enumerate(labels)}
    g = np.array([index.get(x, -1) for x in gold])
    p = np.array([index.get(x, -1) if x is not None else -1 for x in pred])
    k = np.arange(len(labels))

    def statistic(idx: np.ndarray) -> np.ndarray:
        batch, n = idx.shape
        truth = (g[idx][:, :, None] == k).transpose(1, 0, 2).reshape(n, batch * len(k))
        guess = (p[idx][:, :, None] == k).transpose(1, 0, 2).reshape(n, batch * len(k))
        return f1_score(truth, guess, average=None, zero_division=0).reshape(batch, len(k)).mean(axis=1)

    return statistic


def macro_f1_ci(gold: Sequence[str], pred: Sequence[str | None], labels: Sequence[str]) -> tuple[float, float]:
    _same_length(gold, pred)
    if not labels:
        return (0.0, 0.0)
    return bootstrap_ci(len(gold), macro_f1_resampled(gold, pred, labels))


# ---- a label table's row ----------------------------------------------------------------------------
def label_scores(gold: Sequence[str], pred: Sequence[str | None], labels: Sequence[str]) -> dict[str, Any]:
    """Everything a label evaluation reports for one model: accuracy (the headline `score`) and
    macro-F1 with their 95% intervals, per-label figures and the confusion matrix."""
    hits = [float(g == p) for g, p in zip(gold, pred, strict=True)]
    return {
        "score_name": "accuracy",
        "score": accuracy(gold, pred),
        "score_ci": list(mean_ci(hits)),
        "macro_f1": macro_f1(gold, pred, labels),
        "macro_f1_ci": list(macro_f1_ci(gold, pred, labels)),
        "per_class": per_class(gold, pred, labels),
        "confusion": confusion_matrix(gold, pred, labels),
        "per_record": hits,
    }


def majority_label(train_labels: Sequence[str | None], labels: Sequence[str]) -> str:
    """The most frequent of `labels` among `train_labels`; a tie goes to the label listed first in the
    task (deterministic, and says nothing about the eval data)."""
    counts = Counter(x for x in train_labels if x in labels)
    if not counts:
        raise ValueError("no training label is one of the task's labels")
    return max(labels, key=lambda lab: (counts[lab], -list(labels).index(lab)))


def majority_baseline(
    train_labels: Sequence[str | None], gold: Sequence[str], labels: Sequence[str], source: str
) -> dict[str, Any]:
    """The score of always answering the most frequent training label: what a model must beat to have
    learned anything from its inputs. `source` says which data the majority was counted on."""
    label = majority_label(train_labels, labels)
    scores = label_scores(gold, [label] * len(gold), labels)
    keep = ("score_name", "score", "score_ci", "macro_f1", "macro_f1_ci")
    counted = sum(x in labels for x in train_labels)
    return {"label": label, "source": source, "counted_on": counted, **{k: scores[k] for k in keep}}


def versus_majority(model_ci: Sequence[float], majority_score: float) -> str:
    """'above' / 'below' when the majority's accuracy lies outside the model's 95% interval, else
    'same as majority': such a model is indistinguishable from always answering one label."""
    lo, hi = model_ci
    if lo > majority_score:
        return "above"
    if hi < majority_score:
        return "below"
    return "same as majority"


def _clean(values: Sequence[Any], labels: Sequence[str] | None = None) -> list[str]:
    """Strings for scikit-learn (which refuses None mixed with str); with `labels`, every answer
    outside them becomes INVALID."""
    if labels is None:
        return [INVALID if v is None else str(v) for v in values]
    return [v if v in labels else INVALID for v in values]


def _same_length(a: Sequence[Any], b: Sequence[Any]) -> None:
    if len(a) != len(b):
        raise ValueError(f"length mismatch: {len(a)} references vs {len(b)} predictions")
