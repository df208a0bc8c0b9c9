"""`protege eval`: every model on the same records, through the same serving path.

The steps, each in its own module: resolve the models (`specs`), ask each one every record
(`predict`, with the prompts of `prompts`) unless an earlier run already did (`answers`), score the
answers (`scoring`, plus the majority-class baseline for label tasks), and for text tasks let a
judge compare them (`judge`).

Results are an eval run (runs table, kind=eval): the summary in `metrics`, per-record predictions
under the run's output folder, so any two eval runs over the same dataset can be compared.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from protege.data.records import Record, get_dataset, load_records
from protege.errors import DataError, UserError
from protege.evaluate.answers import (  # noqa: F401 - load_predictions, file_safe: this module's API before the split
    cache_key,
    file_safe,
    find_cached,
    load_predictions,
    predictions_path,
    write_predictions,
)
from protege.evaluate.predict import Answers, predict
from protege.evaluate.prompts import reference_of
from protege.evaluate.scoring import majority_row, score, speed_and_cost
from protege.evaluate.specs import ModelSpec, parse_models, resolve_spec  # noqa: F401 - parse_models: as above
from protege.metrics import versus_majority
from protege.names import check_name
from protege.tasks import Task
from protege.workspace import Workspace

MAX_JUDGE_INVALID = 0.1
"""Default share of judge verdicts that may be unparseable before the eval fails (exit 1)."""


def run_eval(
    ws: Workspace,
    task: Task,
    data: str,
    models: dict[str, str],
    limit: int | None = None,
    split: str | None = None,
    name: str | None = None,
    judge: str | None = None,
    reference: str | None = None,
    max_tokens: int | None = None,
    use_cache: bool = True,
    extra_config: dict[str, Any] | None = None,
    majority_from: str | None = None,
    max_judge_invalid: float = MAX_JUDGE_INVALID,
) -> dict[str, Any]:
    """Evaluate `models` (label -> model) on dataset `data`; stores and returns the eval run's results.

    Raises DataError (the run is stored as failed, with its figures) when more than
    `max_judge_invalid` of the judge's verdicts could not be read: its win rates would mean nothing."""
    specs = [resolve_spec(ws, label, src) for label, src in models.items()]
    info = get_dataset(ws.store, data)
    records = load_records(ws.store, data, split=split)[: limit or None]
    refs = [reference_of(task, r) for r in records]
    if not records:
        raise DataError(f"dataset {data!r} has no records{f' in split {split!r}' if split else ''}")
    if missing := [i for i, r in enumerate(refs) if r is None]:
        raise DataError(f"dataset {data!r}: record {missing[0]} has no reference answer ({len(missing)} in all)")
    max_tokens = max_tokens or (16 if task.output.kind == "label" else 256)
    name = check_name(name or f"eval-{task.name}-{time.strftime('%Y%m%d-%H%M%S')}", "eval name")
    out_dir = ws.artifacts / "evals" / name
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "task": task.model_dump(by_alias=True),
        "data": f"{info['name']}@{info['version']}",
        "data_hash": info["hash"],
        "n": len(records),
        "limit": limit,
        "split": split,
        "models": models,
        "judge": judge,
        "max_tokens": max_tokens,
        "majority_from": majority_from,
        "max_judge_invalid": max_judge_invalid,
        **(extra_config or {}),
    }
    ws.store.start_run(name, "eval", config, str(out_dir))
    try:
        results = {}
        for spec in specs:
            key = cache_key(spec, task, records, max_tokens)
            cached = find_cached(ws, key) if use_cache else None
            if cached:
                answers = Answers(cached[2], cached[1].get("dtype"))
            else:
                answers = predict(spec, task, records, max_tokens, ws.root)
            results[spec.label] = _summarise(ws, spec, task, refs, answers, key, cached[0] if cached else None)
            write_predictions(predictions_path(out_dir, spec.label), records, refs, answers.predictions)
        summary = _finish(ws, task, records, refs, specs, results, out_dir, judge, reference)
        if task.output.kind == "label":
            summary["majority"] = majority_row(ws, task, specs, refs, config["data"], majority_from)
            for res in results.values():
                res["vs_majority"] = versus_majority(res["score_ci"], summary["majority"]["score"])
    except BaseException:
        ws.store.finish_run(name, "failed")
        raise
    summary.update(run=name, data=config["data"], n=len(records), output_dir=str(out_dir))
    (out_dir / "results.json").write_text(json.dumps(summary, indent=2))
    if broken := _judge_failures(summary, max_judge_invalid):
        summary["error"] = broken
        ws.store.finish_run(name, "failed", summary)
        raise DataError(f"eval run {name}: {broken}")
    ws.store.finish_run(name, "done", summary)
    return summary


def _summarise(
    ws: Workspace, spec: ModelSpec, task: Task, refs: list, answers: Answers, key: str, cached_from: str | None
) -> dict[str, Any]:
    scores = score(task, refs, answers.predictions)
    scores.pop("per_record", None)
    return {
        "kind": spec.kind,
        "source": spec.source,
        **scores,
        **speed_and_cost(spec, answers.predictions, ws.config.local_compute_per_hour),
        "prompt": "teacher" if spec.teacher else "student",
        "dtype": answers.dtype,
        "cache_key": key,
        "cached_from": cached_from,
    }


def _finish(
    ws: Workspace,
    task: Task,
    records: list[Record],
    refs: list,
    specs: list[ModelSpec],
    results: dict[str, dict[str, Any]],
    out_dir: Path,
    judge: str | None,
    reference: str | None,
) -> dict[str, Any]:
    ref_label = reference or ("teacher" if "teacher" in results else next(iter(results)))
    if ref_label not in results:
        raise UserError(f"--reference {ref_label!r}: not one of the evaluated models {list(results)}")
    base = results[ref_label]["score"]
    for res in results.values():
        res["score_vs_reference"] = res["score"] / base if base else None
        res["speedup_vs_reference"] = (
            results[ref_label]["latency_p50_ms"] / res["latency_p50_ms"] if res["latency_p50_ms"] else None
        )
    if judge and task.output.kind != "label":
        from protege.evaluate.judge import pairwise_win_rates

        pairwise_win_rates(ws, task, records, judge, ref_label, out_dir, results)
    return {
        "task": task.name,
        "kind": task.output.kind,
        "reference": ref_label,
        "labels": task.labels,
        "models": results,
    }


def _judge_failures(summary: dict[str, Any], max_invalid: float) -> str | None:
    """Why the judge's figures cannot be trusted, or None when they can."""
    bad = {
        label: m["judge"]
        for label, m in summary["models"].items()
        if "judge" in m and m["judge"]["invalid_rate"] > max_invalid
    }
    if not bad:
        return None
    worst = max(bad.values(), key=lambda j: j["invalid_rate"])
    return (
        f"judge {worst['judge']!r} gave unreadable verdicts for {worst['invalid']} of {worst['judged']} records "
        f"({worst['invalid_rate']:.0%} > the allowed {max_invalid:.0%}, --max-judge-invalid) judging "
        f"{', '.join(bad)}: its win rates are not reported as valid. See the judge calls (calls table, kind=judge)."
    )
