"""From answers to figures: the task's metrics with intervals, speed and cost, and the majority-class
baseline every label table carries.

The baseline is always answering the most frequent *training* label: a student that does no better
has learned nothing its label counts did not already say. Which training data: `--majority-from`
when given, else the training data of the first evaluated model that is a training run; only when
no training data is known does the eval data stand in, and the row says so (counting the majority
on the very records being scored flatters the baseline's rivals less than it flatters itself).
"""

from __future__ import annotations

from typing import Any

from protege.errors import DataError, ProtegeError
from protege.evaluate import metrics as M
from protege.evaluate.specs import ModelSpec
from protege.tasks import Task
from protege.workspace import Workspace


def score(task: Task, refs: list[Any], preds: list[dict[str, Any]]) -> dict[str, Any]:
    """Task metrics, with `score` (the headline number) and its 95% bootstrap interval; label tasks
    also write each answer's parsed label into its prediction row (`prediction`)."""
    outputs = [p.get("output") for p in preds]
    if task.output.kind == "label":
        answers = [label_of(task, o) for o in outputs]
        for p, a in zip(preds, answers, strict=True):
            p["prediction"] = a
        return M.label_scores(refs, answers, task.labels)
    if task.output.kind == "json":
        js = M.json_scores(refs, outputs, task.output.schema_ or {})
        return {
            "score_name": "field_accuracy",
            "score": _mean(js["per_record"]),
            "score_ci": list(M.mean_ci(js["per_record"])),
            **js,
        }
    rl = [M.rouge_l(r or "", o or "") for r, o in zip(refs, outputs, strict=True)]
    em = [M.exact_match(r or "", o or "") for r, o in zip(refs, outputs, strict=True)]
    return {
        "score_name": "rouge_l",
        "score": _mean(rl),
        "score_ci": list(M.mean_ci(rl)),
        "exact_match": _mean(em),
        "exact_match_ci": list(M.mean_ci(em)),
        "per_record": rl,
    }


def label_of(task: Task, output: str | None) -> str | None:
    """The label an answer names (None when it names none)."""
    if output is None:
        return None
    value, _ = task.parse_output(output)
    return value


def speed_and_cost(spec: ModelSpec, preds: list[dict[str, Any]], per_hour: float) -> dict[str, Any]:
    ok = [p for p in preds if p.get("error") is None]
    lat = [p["latency_ms"] for p in ok]
    pt = [p.get("prompt_tokens", 0) for p in ok]
    ct = [p.get("completion_tokens", 0) for p in ok]
    if spec.local_compute:
        cost, basis = M.local_cost_per_1k(sum(lat) / 1000, len(ok), per_hour), f"compute time at ${per_hour}/hour"
    else:
        price = spec.teacher.price
        cost = M.api_cost_per_1k(pt, ct, price.input_per_1m, price.output_per_1m)
        basis = f"API price ${price.input_per_1m}/${price.output_per_1m} per 1M tokens"
    return {
        **M.latency_summary(lat),
        "prompt_tokens_mean": _mean(pt),
        "completion_tokens_mean": _mean(ct),
        "cost_per_1k": cost,
        "cost_basis": basis,
        "errors": len(preds) - len(ok),
    }


# ---- the majority-class baseline ----------------------------------------------------------------------
def majority_row(
    ws: Workspace, task: Task, specs: list[ModelSpec], refs: list[str], eval_data: str, majority_from: str | None
) -> dict[str, Any]:
    """The baseline row of a label eval, with the data its majority was counted on."""
    labels, source = training_labels(ws, task, specs, majority_from)
    if labels is not None and not any(x in task.labels for x in labels):
        if majority_from:
            raise DataError(f"--majority-from {majority_from}: none of its labels is one of {task.labels}")
        labels, source = None, f" ({source} has none of the task's labels)"
    if labels is None:
        labels, source = refs, f"the eval data {eval_data}{source or ' (no training data known)'}"
    return M.majority_baseline(labels, refs, task.labels, source)


def training_labels(
    ws: Workspace, task: Task, specs: list[ModelSpec], majority_from: str | None
) -> tuple[list[str | None] | None, str]:
    """(labels, where they come from): `--majority-from`, else the first training run evaluated;
    (None, why) when neither is known or readable."""
    from protege.train.data import load_conversations

    if majority_from:
        data = load_conversations(majority_from, task, ws.store)
        return data.labels, f"{_described(data.source, majority_from)} (--majority-from)"
    for spec in specs:
        run = ws.store.get_run(spec.source) if spec.teacher is None else None
        data_cfg = ((run or {}).get("config") or {}).get("data") or {}
        if run and run["kind"] == "train" and data_cfg.get("train"):
            try:
                data = load_conversations(
                    data_cfg["train"], task, ws.store, data_cfg.get("split"), data_cfg.get("limit"),
                    data_cfg.get("review"),
                )  # fmt: skip
            except ProtegeError as e:  # moved or deleted since: the eval data stands in, and says why
                return None, f" (training data of {spec.source} unreadable: {e})"
            return data.labels, f"{_described(data.source, data_cfg['train'])}, training data of {spec.source}"
    return None, ""


def _described(source: dict[str, Any], spec: str) -> str:
    if source.get("dataset"):
        return f"{source['dataset']}@{source['version']}"
    return spec


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
