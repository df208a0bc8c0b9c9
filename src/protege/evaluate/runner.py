"""`protege eval`: every model on the same records, through the same serving path.

Teachers (names from protege.yaml) are called over HTTP with the teacher prompt (instructions and
few-shot examples); local models (registry names, folders, adapter folders, training run names)
are each started with `protege serve` and called with the official openai client using the short
student prompt. Label tasks use constrained choice, so every model answers with a label and the
comparison measures knowledge, not formatting luck. Requests go one at a time so latency is the
per-request figure a user of a single endpoint sees; an adapter is served merged into its base
(`protege serve --merge`), as one student is deployed.

Results are an eval run (runs table, kind=eval): the summary in `metrics`, per-record predictions
under the run's output folder, so any two eval runs over the same dataset can be compared.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from protege.config import TeacherConfig
from protege.data.records import Record, get_dataset, load_records
from protege.errors import DataError, UserError
from protege.evaluate import metrics as M
from protege.log import console, progress
from protege.names import check_name
from protege.tasks import Task
from protege.workspace import Workspace

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}


@dataclass
class ModelSpec:
    label: str
    source: str
    """What the user wrote: a teacher name, registry name, folder, adapter folder or run name."""
    teacher: TeacherConfig | None = None
    path: str | None = None
    """For local models: what `protege serve` is given."""

    @property
    def kind(self) -> str:
        return "teacher" if self.teacher else "local"

    @property
    def local_compute(self) -> bool:
        """Priced by measured compute time: local models, and zero-priced teachers on this machine."""
        if self.teacher is None:
            return True
        free = not (self.teacher.price.input_per_1m or self.teacher.price.output_per_1m)
        return free and urlparse(self.teacher.base_url or "").hostname in LOCAL_HOSTS


@dataclass
class ModelResult:
    spec: ModelSpec
    predictions: list[dict[str, Any]] = field(default_factory=list)
    cached_from: str | None = None


# ---- choosing models --------------------------------------------------------------------------------
def parse_models(text: str) -> dict[str, str]:
    """`teacher=local,student=runs/x` -> {"teacher": "local", "student": "runs/x"} (order kept)."""
    out: dict[str, str] = {}
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        if "=" not in part:
            raise UserError(f"--models {part!r}: expected label=MODEL")
        label, model = (s.strip() for s in part.split("=", 1))
        if not label or not model or label in out:
            raise UserError(f"--models {part!r}: labels must be non-empty and distinct")
        out[label] = model
    if not out:
        raise UserError("--models: give at least one label=MODEL")
    return out


def resolve_spec(ws: Workspace, label: str, source: str) -> ModelSpec:
    if source in ws.config.teachers:
        teacher = ws.config.teachers[source]
        if not teacher.base_url:
            raise UserError(f"teacher {source!r} has no base_url; evaluation calls every model over HTTP")
        return ModelSpec(label, source, teacher=teacher)
    run = ws.store.get_run(source)
    if run and run["kind"] == "train" and run.get("output_dir"):
        return ModelSpec(label, source, path=str(ws.resolve(run["output_dir"])))
    from protege.models import resolve_model

    resolved = resolve_model(source if not Path(source).exists() else Path(source).resolve())
    return ModelSpec(label, source, path=str(resolved.path if Path(source).exists() else source))


# ---- prompts and answers ----------------------------------------------------------------------------
def _fields(record: Record) -> dict[str, Any] | None:
    fields = record.metadata.get("input")
    return fields if isinstance(fields, dict) else None


def student_messages(task: Task, record: Record) -> list[dict[str, str]]:
    fields = _fields(record)
    return task.student_messages(fields) if fields else record.prompt


def teacher_messages(task: Task, record: Record) -> list[dict[str, str]]:
    """Instructions and few-shot turns before the record's input (re-rendered when the fields are kept)."""
    fields = _fields(record)
    if fields:
        return task.teacher_messages(fields)
    return _teacher_head(task) + [m for m in record.prompt if m["role"] != "system"]


def _teacher_head(task: Task) -> list[dict[str, str]]:
    msgs = task.teacher_messages(task.examples[0].input) if task.examples else None
    if msgs:
        return msgs[:-1]
    system = task.instructions.strip()
    if task.output.kind == "label":
        system += "\nAnswer with exactly one of: " + ", ".join(task.labels) + "."
    return [{"role": "system", "content": system.strip()}]


def reference_of(task: Task, record: Record) -> Any:
    """The gold answer: the label for label tasks, the final assistant turn otherwise (parsed for JSON)."""
    if task.output.kind == "label":
        return record.label or (record.completion or "").strip() or None
    ref = record.completion if record.completion is not None else record.label
    if task.output.kind == "json":
        ok, value = M.parse_json(ref)
        return value if ok else None
    return ref


# ---- calling one model ------------------------------------------------------------------------------
def call_one(
    client: Any, model: str, messages: list[dict[str, str]], task: Task, constrained: bool, max_tokens: int
) -> dict[str, Any]:
    """One request; returns the answer, latency and token counts (errors are kept, not raised)."""
    kwargs: dict[str, Any] = {"model": model, "messages": messages, "temperature": 0.0, "max_tokens": max_tokens}
    if constrained:
        kwargs["extra_body"] = {"choices": task.labels}
    start = time.perf_counter()
    try:
        resp = client.chat.completions.create(**kwargs)
    except Exception as e:  # one failed request is a wrong answer with its reason, not a failed eval
        return {"output": None, "error": f"{type(e).__name__}: {e}"[:300], "latency_ms": _ms(start)}
    latency = _ms(start)
    usage = resp.usage
    return {
        "output": resp.choices[0].message.content or "",
        "latency_ms": latency,
        "prompt_tokens": getattr(usage, "prompt_tokens", 0) or 0,
        "completion_tokens": getattr(usage, "completion_tokens", 0) or 0,
        "choice_scores": (resp.model_extra or {}).get("choice_scores"),
    }


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def _client(base_url: str, api_key: str | None, timeout: float = 600, retries: int = 2) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=base_url, api_key=api_key or "none", timeout=timeout, max_retries=retries)


def predict(
    spec: ModelSpec, task: Task, records: list[Record], max_tokens: int, workspace_root: Path | None = None
) -> list[dict[str, Any]]:
    """Answers of one model to every record, in order."""
    if spec.teacher:
        t = spec.teacher
        client = _client(t.base_url, os.environ.get(t.api_key_env or ""), t.timeout_s, t.max_retries)
        constrained = task.output.kind == "label" and t.constrained_choices
        return _predict_all(
            spec,
            client,
            t.model,
            [teacher_messages(task, r) for r in records],
            task,
            constrained,
            min(max_tokens, t.max_tokens) if task.output.kind != "label" else max_tokens,
        )
    from protege.serve.launch import ServerProcess

    # an adapter is served folded into its base, as a single student is deployed (PEFT's separate
    # LoRA matmuls would add ~20% to every request on CPU)
    merge = ["--merge"] if (Path(spec.path) / "adapter_config.json").exists() else []
    with ServerProcess(spec.path, workspace=workspace_root, extra_args=merge) as srv:
        client = _client(srv.base_url, None)
        return _predict_all(
            spec,
            client,
            spec.path,
            [student_messages(task, r) for r in records],
            task,
            task.output.kind == "label",
            max_tokens,
        )


def _predict_all(
    spec: ModelSpec, client: Any, model: str, prompts: list, task: Task, constrained: bool, max_tokens: int
) -> list[dict[str, Any]]:
    out = []
    with progress() as bar:
        job = bar.add_task(f"eval {spec.label}", total=len(prompts))
        for messages in prompts:
            out.append(call_one(client, model, messages, task, constrained, max_tokens))
            bar.advance(job)
    return out


# ---- scoring ----------------------------------------------------------------------------------------
def score(task: Task, refs: list[Any], preds: list[dict[str, Any]]) -> dict[str, Any]:
    """Task metrics, with `score` (the headline number) and its 95% bootstrap interval."""
    outputs = [p.get("output") for p in preds]
    if task.output.kind == "label":
        answers = [M_label(task, o) for o in outputs]
        for p, a in zip(preds, answers, strict=True):
            p["prediction"] = a
        hits = [float(g == a) for g, a in zip(refs, answers, strict=True)]
        return {
            "score_name": "accuracy",
            "score": M.accuracy(refs, answers),
            "score_ci": list(M.mean_ci(hits)),
            "macro_f1": M.macro_f1(refs, answers, task.labels),
            "macro_f1_ci": list(M.macro_f1_ci(refs, answers, task.labels)),
            "per_class": M.per_class(refs, answers, task.labels),
            "confusion": M.confusion_matrix(refs, answers, task.labels),
            "per_record": hits,
        }
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


def M_label(task: Task, output: str | None) -> str | None:  # noqa: N802 - reads as "metric label"
    if output is None:
        return None
    value, _ = task.parse_output(output)
    return value


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


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


# ---- the eval run -----------------------------------------------------------------------------------
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
) -> dict[str, Any]:
    """Evaluate `models` (label -> model) on dataset `data`; stores and returns the eval run's results."""
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
        **(extra_config or {}),
    }
    ws.store.start_run(name, "eval", config, str(out_dir))
    try:
        results = {}
        for spec in specs:
            key = _cache_key(spec, task, records, max_tokens)
            cached = _find_cached(ws, key) if use_cache else None
            preds = cached[1] if cached else predict(spec, task, records, max_tokens, ws.root)
            results[spec.label] = _summarise(ws, spec, task, refs, preds, key, cached[0] if cached else None)
            _write_predictions(out_dir / f"predictions-{file_safe(spec.label)}.jsonl", records, refs, preds)
        summary = _finish(ws, task, records, refs, specs, results, out_dir, judge, reference)
    except BaseException:
        ws.store.finish_run(name, "failed")
        raise
    summary.update(run=name, data=config["data"], n=len(records), output_dir=str(out_dir))
    ws.store.finish_run(name, "done", summary)
    (out_dir / "results.json").write_text(json.dumps(summary, indent=2))
    return summary


def _summarise(ws: Workspace, spec: ModelSpec, task: Task, refs: list, preds: list, key: str, cached_from: str | None):
    scores = score(task, refs, preds)
    scores.pop("per_record", None)
    return {
        "kind": spec.kind,
        "source": spec.source,
        **scores,
        **speed_and_cost(spec, preds, ws.config.local_compute_per_hour),
        "prompt": "teacher" if spec.teacher else "student",
        "cache_key": key,
        "cached_from": cached_from,
    }


def _finish(ws, task, records, refs, specs, results, out_dir, judge, reference) -> dict[str, Any]:
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


def _write_predictions(path: Path, records: list[Record], refs: list, preds: list[dict[str, Any]]) -> None:
    with path.open("w") as f:
        for i, (r, ref, p) in enumerate(zip(records, refs, preds, strict=True)):
            row = {"idx": i, "input": _fields(r) or r.prompt[-1]["content"], "reference": ref, **p}
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def load_predictions(run: dict[str, Any], label: str) -> list[dict[str, Any]]:
    path = Path(run["output_dir"]) / f"predictions-{file_safe(label)}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def file_safe(label: str) -> str:
    """A label or run name as a file-name part."""
    return re.sub(r"[^\w.-]+", "_", label)


# ---- reuse of earlier answers ------------------------------------------------------------------------
def _identity(spec: ModelSpec) -> dict[str, Any]:
    """What makes a model answer the same way: the endpoint and model for a teacher (a local port is
    left out: it changes every start), the weight files' sizes and times for a local folder."""
    if spec.teacher:
        t = spec.teacher
        url = urlparse(t.base_url or "")
        host = "local" if url.hostname in LOCAL_HOSTS else f"{url.hostname}{url.path}"
        return {"host": host, "model": t.model, "temperature": t.temperature, "constrained": t.constrained_choices}
    path = Path(spec.path)
    if not path.exists():
        return {"model": spec.path}
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in {".safetensors", ".json", ".bin"})
    return {"model": str(path.resolve()), "files": [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in files]}


def _cache_key(spec: ModelSpec, task: Task, records: list[Record], max_tokens: int) -> str:
    prompt = teacher_messages if spec.teacher else student_messages
    body = {
        "id": _identity(spec),
        "prompts": [prompt(task, r) for r in records],
        "max_tokens": max_tokens,
        "labels": task.labels if task.output.kind == "label" else None,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _find_cached(ws: Workspace, key: str) -> tuple[str, list[dict[str, Any]]] | None:
    """Predictions of an earlier finished eval run for the same model, prompts and settings."""
    rows = ws.store.query("SELECT name FROM runs WHERE kind='eval' AND status='done' ORDER BY id DESC")
    for row in rows:
        run = ws.store.get_run(row["name"])
        for label, res in ((run.get("metrics") or {}).get("models") or {}).items():
            if res.get("cache_key") == key:
                preds = load_predictions(run, label)
                if preds:
                    keep = ("output", "latency_ms", "prompt_tokens", "completion_tokens", "choice_scores", "error")
                    console.print(f"[dim]reusing {label} answers from eval run {run['name']}[/]")
                    return run["name"], [{k: p.get(k) for k in keep} for p in preds]
    return None
