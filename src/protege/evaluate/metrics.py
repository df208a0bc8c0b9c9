"""Metrics as pure functions over lists: the scores, their confidence intervals, speed and cost.

Kept free of models, HTTP and the store so they can be checked against hand-computed values
and reused by benchmarks. Words and ROUGE-L are protege.data.text's, shared with the data checks
and self-instruct's novelty filter, so every stage compares texts the same way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import jsonschema
import numpy as np

from protege.data.text import rouge_l as rouge_l  # re-exported: the text score of an evaluation
from protege.data.text import words

# The label metrics and the bootstrap live in the base (protege.metrics), where training can use them
# too; they are re-exported here so evaluation code and benchmarks find every metric in one place.
from protege.metrics import (  # noqa: F401
    INVALID,
    accuracy,
    bootstrap_ci,
    confusion_matrix,
    label_scores,
    macro_f1,
    macro_f1_ci,
    majority_baseline,
    mean_ci,
    per_class,
)


# ---- text ------------------------------------------------------------------------------------------
def normalize_text(text: str) -> str:
    return " ".join(words(text))


def exact_match(reference: str, candidate: str) -> float:
    """1.0 when equal after lower-casing and dropping punctuation and extra spaces."""
    return float(normalize_text(reference) == normalize_text(candidate))


# ---- JSON ------------------------------------------------------------------------------------------
def parse_json(text: str | None) -> tuple[bool, Any]:
    """(valid, value); a ```json fence around the object is tolerated, as models often add one."""
    text = (text or "").strip()
    m = re.match(r"^```(?:json)?\s*(.*?)\s*```$", text, re.S)
    try:
        return True, json.loads(m.group(1) if m else text)
    except (json.JSONDecodeError, TypeError):
        return False, None


def schema_valid(value: Any, schema: dict[str, Any]) -> bool:
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError:
        return False
    return True


def json_scores(references: Sequence[Any], outputs: Sequence[str | None], schema: dict[str, Any]) -> dict[str, Any]:
    """Valid-JSON rate, schema-valid rate, accuracy per top-level field of the reference, and per-record
    field accuracy (the share of a reference's fields the output got exactly right; invalid output -> 0)."""
    _same_length(references, outputs)
    valid, in_schema, per_record = [], [], []
    field_hits: dict[str, list[float]] = {}
    for ref, out in zip(references, outputs, strict=True):
        ok, value = parse_json(out)
        valid.append(float(ok))
        in_schema.append(float(ok and schema_valid(value, schema)))
        ref = ref if isinstance(ref, dict) else {}
        hits = [float(isinstance(value, dict) and k in value and value[k] == v) for k, v in ref.items()]
        for k, h in zip(ref, hits, strict=True):
            field_hits.setdefault(k, []).append(h)
        per_record.append(sum(hits) / len(hits) if hits else float(ok))
    n = len(outputs) or 1
    return {
        "json_valid_rate": sum(valid) / n,
        "schema_valid_rate": sum(in_schema) / n,
        "field_accuracy": {k: sum(v) / len(v) for k, v in field_hits.items()},
        "per_record": per_record,
    }


# ---- speed and cost --------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), 0 for no values."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else 0.0


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float]:
    return {
        "latency_p50_ms": percentile(latencies_ms, 50),
        "latency_p95_ms": percentile(latencies_ms, 95),
        "latency_mean_ms": float(np.mean(latencies_ms)) if len(latencies_ms) else 0.0,
    }


def api_cost_per_1k(
    prompt_tokens: Sequence[int], completion_tokens: Sequence[int], input_per_1m: float, output_per_1m: float
) -> float:
    """Dollars per 1,000 requests at an API's per-token prices, from the mean tokens per request."""
    if not prompt_tokens:
        return 0.0
    dollars = float(np.mean(prompt_tokens)) * input_per_1m + float(np.mean(completion_tokens)) * output_per_1m
    return dollars / 1e6 * 1000


def local_cost_per_1k(compute_seconds: float, n_requests: int, per_hour: float) -> float:
    """Dollars per 1,000 requests for a local model: measured compute time per request times $/hour."""
    if not n_requests:
        return 0.0
    return compute_seconds / n_requests * per_hour / 3600 * 1000


def _same_length(a: Sequence[Any], b: Sequence[Any]) -> None:
    if len(a) != len(b):
        raise ValueError(f"length mismatch: {len(a)} references vs {len(b)} predictions")
