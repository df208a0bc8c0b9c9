"""The order records are reviewed in, and which records a reviewer still has to see.

uncertainty   least certain first: the smallest margin between the model's two best choice scores
              (label tasks), the lowest mean token log-probability (text); records the model has not
              answered come last. A near-duplicate (MinHash, data.quality.near_duplicates) of a
              record already queued is pushed to the back: ten rewordings of one hard tweet teach
              the student less than ten different hard tweets.
disagreement  records where the teacher's answer and the model's differ first (least certain first
              within each group), then the rest the same way.
random        a seeded shuffle (the baseline every other order is measured against).
oldest        the dataset's own order.

Overlap: with `overlap` > 0 that share of records (chosen by a hash of the record, so every server
and every restart agrees) goes to two different reviewers, for Cohen's kappa between them.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from protege.data.quality import near_duplicates
from protege.data.records import Record
from protege.review.actions import State
from protege.review.predictions import Prediction

ORDERS = ("uncertainty", "disagreement", "random", "oldest")
NEAR_DUPLICATE = 0.8
"""Estimated Jaccard similarity (character 5-grams of the input) at which two records are near-duplicates."""


def order(
    records: Sequence[Record],
    indices: Sequence[int],
    how: str,
    preds: dict[int, Prediction],
    answers: dict[int, str | None] | None = None,
    seed: int = 0,
) -> list[int]:
    """`indices` (into `records`) in the order `how` reviews them."""
    if how not in ORDERS:
        raise ValueError(f"unknown order {how!r}; one of {', '.join(ORDERS)}")
    indices = list(indices)
    if how == "oldest":
        return sorted(indices)
    if how == "random":
        random.Random(seed).shuffle(indices)
        return indices
    ranked = sorted(indices, key=lambda i: _uncertainty(preds.get(i), i))
    if how == "disagreement":
        answers = answers or {}
        differ = {i for i in ranked if _disagree(answers.get(i), preds.get(i))}
        ranked = [i for i in ranked if i in differ] + [i for i in ranked if i not in differ]
    return push_back_near_duplicates(records, ranked)


def _uncertainty(pred: Prediction | None, i: int) -> tuple[int, float, int]:
    key = pred.uncertainty_key if pred else None
    return (1, 0.0, i) if key is None else (0, key, i)


def _disagree(answer: str | None, pred: Prediction | None) -> bool:
    return answer is not None and pred is not None and pred.answer is not None and pred.answer != answer


def push_back_near_duplicates(records: Sequence[Record], ranked: list[int]) -> list[int]:
    """`ranked` with every record whose near-duplicate comes earlier moved to the back (keeping
    their relative order): the first of each cluster keeps its place."""
    if len(ranked) < 2:
        return ranked
    subset = [records[i] for i in ranked]
    later = set()
    for cluster in near_duplicates(subset, threshold=NEAR_DUPLICATE, part="prompt"):
        first = min(cluster["indices"])
        later |= {member for member in cluster["indices"] if member != first}
    front = [i for p, i in enumerate(ranked) if p not in later]
    back = [i for p, i in enumerate(ranked) if p in later]
    return front + back


def in_overlap(key: str, overlap: float) -> bool:
    """Whether the record with `key` is one of the `overlap` share that two reviewers see."""
    if overlap <= 0:
        return False
    bucket = int(hashlib.sha256(f"overlap:{key}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return bucket < overlap


def needs_review(key: str, state: State, by: dict[str, State] | None, reviewer: str, overlap: float) -> bool:
    """Whether `reviewer` still has to see this record: nobody reviewed it yet, or it is an overlap
    record that one other reviewer (not this one) has done."""
    by = by or {}
    if reviewer in by:
        return False
    if not state.reviewed and not by:
        return True
    return in_overlap(key, overlap) and len(by) < 2
