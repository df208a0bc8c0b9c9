"""A model's answers to the records under review, read from a predictions file.

The review stage comes before training and serving, so it never runs a model itself: the answers and
their confidence come from a JSON-lines file written by a later step (`protege review predict`, each
round of `protege rounds`, or an eval run's `predictions-LABEL.jsonl`). A row is matched to its record
by `key` (review.actions.record_key), else by `input` (what an eval run writes: the record's input
fields, or its last user turn), else by `idx`. Fields read: `output` (the answer), `choice_scores`
(label tasks: each label's log-likelihood), `mean_logprob` (text tasks: mean log-probability of the
answer's tokens), `model`.

How certain the model is: for labels, the margin between the two best choice scores (a log-likelihood
ratio; near 0 means a coin toss between two labels) and the top label's share of the probability;
for text, the mean token log-probability.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protege.data.records import Record
from protege.errors import DataError, UserError
from protege.review.actions import record_key


@dataclass
class Prediction:
    answer: str | None
    model: str | None = None
    scores: dict[str, float] | None = None
    mean_logprob: float | None = None

    @property
    def margin(self) -> float | None:
        """Best minus second-best choice score (log-likelihood ratio of the two likeliest labels)."""
        if not self.scores or len(self.scores) < 2:
            return None
        top = sorted(self.scores.values(), reverse=True)
        return top[0] - top[1]

    @property
    def confidence(self) -> float | None:
        """The top label's probability among the labels (label tasks); the geometric-mean token
        probability of the answer (text)."""
        if self.scores:
            peak = max(self.scores.values())
            total = sum(math.exp(s - peak) for s in self.scores.values())
            return 1.0 / total
        return math.exp(self.mean_logprob) if self.mean_logprob is not None else None

    @property
    def uncertainty_key(self) -> float | None:
        """Sorts least certain first: the margin for labels, the mean token log-probability for text."""
        return self.margin if self.scores else self.mean_logprob


def from_row(row: dict[str, Any]) -> Prediction:
    scores = row.get("choice_scores") or None
    answer = row.get("output")
    if scores and answer is None:
        answer = max(scores, key=scores.get)
    if answer is None:
        answer = row.get("prediction")
    mean_lp = row.get("mean_logprob")
    return Prediction(answer, row.get("model"), {k: float(v) for k, v in scores.items()} if scores else None,
                      float(mean_lp) if mean_lp is not None else None)  # fmt: skip


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: predictions file not found")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not valid JSON: {e.msg}") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{n}: expected a JSON object per line")
        rows.append(row)
    return rows


def _input_of(record: Record) -> Any:
    fields = record.metadata.get("input")
    return fields if isinstance(fields, dict) else record.prompt[-1]["content"]


def match(records: list[Record], rows: list[dict[str, Any]], path: str | Path = "predictions") -> dict[int, Prediction]:
    """Record index -> its prediction, for the records the file answers."""
    by_key = {record_key(r): i for i, r in enumerate(records)}
    by_input = {json.dumps(_input_of(r), sort_keys=True): i for i, r in enumerate(records)}
    out: dict[int, Prediction] = {}
    for n, row in enumerate(rows, 1):
        if "key" in row:
            i = by_key.get(row["key"])
        elif "input" in row:
            i = by_input.get(json.dumps(row["input"], sort_keys=True))
        elif isinstance(row.get("idx"), int) and 0 <= row["idx"] < len(records):
            i = row["idx"]
        else:
            raise DataError(f"{path}: row {n} has no `key`, `input` or `idx` to find its record by")
        if i is not None:
            out[i] = from_row(row)
    return out


def load(path: str | Path | None, records: list[Record]) -> dict[int, Prediction]:
    """The predictions in `path` matched to `records` ({} without a file); a file that answers none
    of the records is an error (it was made for another dataset)."""
    if path is None:
        return {}
    rows = read_rows(path)
    found = match(records, rows, path)
    if rows and not found:
        raise DataError(f"{path}: none of its {len(rows)} predictions belongs to a record of this dataset")
    return found


def write(path: str | Path, records: list[Record], preds: list[Prediction], indices: list[int] | None = None) -> Path:
    """A predictions file for `records` (each row keyed to its record)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    indices = indices if indices is not None else list(range(len(records)))
    with path.open("w") as f:
        for i, r, p in zip(indices, records, preds, strict=True):
            row = {"idx": i, "key": record_key(r), "output": p.answer, "model": p.model}
            if p.scores is not None:
                row["choice_scores"] = p.scores
            if p.mean_logprob is not None:
                row["mean_logprob"] = p.mean_logprob
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def default_path(artifacts: Path, dataset: str) -> Path:
    """Where `protege review predict` writes, and where `review serve` looks when given no file."""
    return artifacts / "review" / dataset / "predictions.jsonl"
