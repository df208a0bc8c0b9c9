"""Metrics as pure functions over lists: the scores, their confidence intervals, speed and cost.

Kept free of models, HTTP and the store so they can be checked against hand-computed values
and reused by benchmarks. ROUGE-L is a lean LCS implementation (no extra dependency): the
scorer packages pull in nltk and absl for one dynamic-programming loop.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import jsonschema
import numpy as np

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
def _tokens(text: str) -> list[str]:
    return re.findall(r"\w+", (text or "").lower())


def _lcs(a: list[str], b: list[str]) -> int:
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(reference: str, candidate: str) -> float:
    """ROUGE-L F1 over lower-cased word tokens (longest common subsequence)."""
    return rouge_l_tokens(_tokens(reference), _tokens(candidate))


def rouge_l_tokens(ref: list[str], cand: list[str]) -> float:
    """ROUGE-L F1 of two token lists (callers comparing against a pool tokenise once)."""
    lcs = _lcs(ref, cand)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(cand), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def normalize_text(text: str) -> str:
    return " ".join(_tokens(text))


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
