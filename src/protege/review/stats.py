"""`protege review stats`: where a dataset's review stands, and how far people, the teacher and the
model agree.

Every figure is computed from the stored actions, so the page's progress bar, `review stats` and
`protege rounds` cannot disagree. Agreement is the share of records where two sources give the same
final answer (a rejection counts as its own answer, `(rejected)`), with a bootstrap interval, and
Cohen's kappa (scikit-learn) where the answers are labels: kappa discounts the agreement two sources
would reach by chance from their label frequencies alone.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from itertools import combinations
from typing import Any

from protege.data.records import Record
from protege.metrics import mean_ci
from protege.review.actions import State, all_actions, initial_state, latest_states, record_key, reviewer_verdicts
from protege.review.actions import stored_answer as teacher_answer
from protege.review.predictions import Prediction
from protege.store import Store

STATUSES = ("accepted", "edited", "rejected", "pending")
REJECTED = "(rejected)"


def final_answer(state: State) -> str | None:
    """A reviewed record's answer as agreement sees it: the answer, or `(rejected)`."""
    return REJECTED if state.status == "rejected" else state.answer


def current_states(store: Store, dataset: str, records: Sequence[Record]) -> list[State]:
    """Each record's state: its latest action, else how it was stored."""
    latest = latest_states(store, dataset)
    return [latest.get(record_key(r)) or initial_state(r) for r in records]


def counts(states: Sequence[State]) -> dict[str, int]:
    c = Counter(s.status for s in states)
    return {"total": len(states), **{k: c.get(k, 0) for k in STATUSES}, "reviewed": sum(s.reviewed for s in states)}


def agreement(pairs: Sequence[tuple[str | None, str | None]], labels: bool) -> dict[str, Any]:
    """Share of pairs that agree (95% interval) and, for label answers, Cohen's kappa."""
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    if not pairs:
        return {"n": 0, "agreement": None, "agreement_ci": None, "kappa": None}
    hits = [float(a == b) for a, b in pairs]
    return {
        "n": len(pairs),
        "agreement": sum(hits) / len(hits),
        "agreement_ci": list(mean_ci(hits)),
        "kappa": kappa([a for a, _ in pairs], [b for _, b in pairs]) if labels else None,
    }


def kappa(a: Sequence[str], b: Sequence[str]) -> float | None:
    """Cohen's kappa; None where it is undefined (one answer everywhere on both sides)."""
    from sklearn.metrics import cohen_kappa_score

    if not a:
        return None
    value = float(cohen_kappa_score(list(a), list(b)))
    return None if math.isnan(value) else value


def between_reviewers(verdicts: dict[str, dict[str, State]], labels: bool) -> dict[str, Any]:
    """Agreement and kappa over every record two reviewers both judged (each pair of reviewers counted)."""
    pairs, who = [], Counter()
    for by in verdicts.values():
        for (ra, sa), (rb, sb) in combinations(sorted(by.items()), 2):
            pairs.append((final_answer(sa), final_answer(sb)))
            who[f"{ra} / {rb}"] += 1
    return {**agreement(pairs, labels), "pairs": dict(who)}


def review_stats(
    store: Store,
    info: dict[str, Any],
    records: Sequence[Record],
    preds: dict[int, Prediction] | None = None,
    kind: str | None = None,
) -> dict[str, Any]:
    """Counts per status and reviewer, agreement of people with the teacher, the model and each
    other, edit rate and time per review."""
    preds = preds or {}
    labels = (kind or ("label" if any(r.label is not None for r in records) else "text")) == "label"
    states = current_states(store, info["name"], records)
    actions = all_actions(store, info["name"])
    verdicts = reviewer_verdicts(actions)
    done = [(i, s) for i, s in enumerate(states) if s.reviewed]
    seconds = [a["seconds"] for a in actions if a["action"] != "undo" and a["seconds"] is not None]
    by_reviewer: dict[str, Counter] = {}
    for by in verdicts.values():
        for reviewer, s in by.items():
            by_reviewer.setdefault(reviewer, Counter())[s.status] += 1
    for a in actions:
        by_reviewer.setdefault(a["reviewer"], Counter())["actions"] += 1
    return {
        "dataset": f"{info['name']}@{info['version']}",
        **counts(states),
        "by_reviewer": {
            r: {k: c.get(k, 0) for k in ("accepted", "edited", "rejected", "actions")}
            for r, c in sorted(by_reviewer.items())
        },  # fmt: skip
        "human_vs_teacher": agreement([(teacher_answer(records[i]), final_answer(s)) for i, s in done], labels),
        "human_vs_model": agreement([(preds[i].answer, final_answer(s)) for i, s in done if i in preds], labels),
        "between_reviewers": between_reviewers(verdicts, labels),
        "edit_rate": (sum(s.status == "edited" for _, s in done) / len(done)) if done else None,
        "mean_seconds_per_review": (sum(seconds) / len(seconds)) if seconds else None,
        "actions": len(actions),
        "undone": sum(a["action"] == "undo" for a in actions),
    }


def win_rates(verdicts: Sequence[str], model_a: str, model_b: str) -> dict[str, Any]:
    """A's win rate over B from compare-mode verdicts (a, b, tie, both_bad): a tie is half a win;
    `both_bad` verdicts are counted but left out of the rate (neither answer is usable)."""
    c = Counter(verdicts)
    scores = [1.0] * c["a"] + [0.0] * c["b"] + [0.5] * c["tie"]
    rate = sum(scores) / len(scores) if scores else None
    return {
        "model_a": model_a,
        "model_b": model_b,
        "n": len(verdicts),
        "a": c["a"],
        "b": c["b"],
        "tie": c["tie"],
        "both_bad": c["both_bad"],
        "win_rate_a": rate,
        "win_rate_a_ci": list(mean_ci(scores)) if scores else None,
    }
