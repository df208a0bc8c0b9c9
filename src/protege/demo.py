"""`protege demo`: the whole product in one command, on a laptop, in minutes.

Pull the bundled model; start it as a local teacher (or use OPENAI_BASE_URL/OPENAI_API_KEY);
distil the shipped support-routing task (the teacher gets long instructions and few-shot
examples, answering by constrained choice); train a LoRA student on the teacher's labels with the
bare message as its prompt; evaluate teacher, student and the untuned base on a held-out set with
gold labels; print the comparison and write the HTML report.

Everything is cached: teacher calls (calls table), the adapter (kept while its config and training
data are unchanged) and eval answers (kept while model, prompts and settings are unchanged), so a
second run mostly reads the database.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from protege.config import Price, TeacherConfig
from protege.data.records import Record, get_dataset, save_dataset
from protege.log import console
from protege.tasks import Task, load_task
from protege.workspace import Workspace

BASE = "smollm2-135m-instruct"
TEACHER = "demo-teacher"


@dataclass
class DemoSettings:
    """Sizes of the run; the defaults are the real demo, the tests shrink them."""

    n_inputs: int = 120
    n_heldout: int = 50
    epochs: float = 3
    max_steps: int | None = None
    batch_size: int = 8
    lr: float = 3.0e-4
    lora_r: int = 16
    concurrency: int = 8
    """Teacher requests in flight: the server batches them and runs their shared few-shot prompt once."""
    model: str = BASE
    """Teacher (when local) and the student's base; any local model with a chat template."""


def task_path() -> Path:
    return Path(str(resources.files("protege") / "assets" / "demo" / "support.yaml"))


def teacher_config(base_url: str | None, model: str = BASE) -> TeacherConfig:
    """A remote endpoint when OPENAI_BASE_URL and OPENAI_API_KEY are set (labels parsed from its text),
    else the local server (constrained choice)."""
    if os.environ.get("OPENAI_BASE_URL") and os.environ.get("OPENAI_API_KEY"):
        price = Price(
            input_per_1m=float(os.environ.get("PROTEGE_DEMO_PRICE_IN", "0.15")),
            output_per_1m=float(os.environ.get("PROTEGE_DEMO_PRICE_OUT", "0.60")),
        )
        return TeacherConfig(
            base_url=os.environ["OPENAI_BASE_URL"], model=os.environ.get("OPENAI_MODEL", "gpt-4o-mini"),
            api_key_env="OPENAI_API_KEY", price=price, max_tokens=8,
        )  # fmt: skip
    # a long timeout: on a busy 2-core machine a few-shot request can wait behind others for a while
    return TeacherConfig(base_url=base_url, model=model, max_tokens=8, constrained_choices=True, timeout_s=600)


def heldout_records(task: Task, rows: list[dict[str, str]]) -> list[Record]:
    """Gold-labelled records in the project's convention (student prompt + answer, input kept)."""
    return [
        Record(
            messages=task.student_messages({"message": r["message"]}) + [{"role": "assistant", "content": r["label"]}],
            label=r["label"],
            metadata={"input": {"message": r["message"]}},
            provenance={"source": "protege demo (generated)", "line": i + 1},
            review="accepted",
            split="test",
        )
        for i, r in enumerate(rows)
    ]


def train_student(ws: Workspace, task_file: Path, data: str, s: DemoSettings) -> str:
    """Train the LoRA student unless an adapter for the same config and data is already there."""
    from protege.train.config import DataConfig, LoraConfig, TrainConfig
    from protege.train.run import train

    cfg = TrainConfig(
        base=s.model, task=str(task_file), data=DataConfig(train=data), method="lora",
        lora=LoraConfig(r=s.lora_r, alpha=2 * s.lora_r), epochs=s.epochs, max_steps=s.max_steps,
        batch_size=s.batch_size, lr=s.lr, max_length=128, output="runs/demo-student", name="demo-student",
        system_prompt="",  # the base template's 16-token default system turn would cost every request
    )  # fmt: skip
    info = get_dataset(ws.store, data)
    key = hashlib.sha256(json.dumps([cfg.model_dump(mode="json"), info["hash"]], sort_keys=True).encode()).hexdigest()
    out = ws.resolve(cfg.output)
    run = ws.store.get_run(cfg.run_name)
    stamp = out / "demo-key.txt"
    if run and run["status"] == "done" and stamp.exists() and stamp.read_text() == key:
        console.print(f"[dim]reusing the trained student {out} (same config and data)[/]")
        return cfg.run_name
    train(cfg, workspace=ws)
    stamp.write_text(key)
    return cfg.run_name


def run_demo(ws: Workspace, settings: DemoSettings | None = None) -> dict[str, Any]:
    """The demo end to end; returns {"models": {label: {score, latency_p50_ms, cost_per_1k}}, "report", ...}."""
    from protege.evaluate.demo_data import write_demo_data
    from protege.evaluate.report import write_report
    from protege.evaluate.runner import run_eval
    from protege.models.fetch import pull
    from protege.serve.launch import ServerProcess
    from protege.teachers.distill import distill

    s = settings or DemoSettings()
    t0 = time.perf_counter()
    task_file = task_path()
    task = load_task(task_file)
    console.print(f"[bold]protege demo[/]: {task.name}, {s.n_inputs} inputs, {s.n_heldout} held out")
    if s.model == BASE:
        pull(BASE)
    files = write_demo_data(ws.artifacts / "demo", s.n_inputs, s.n_heldout)
    rows = [json.loads(line) for line in files["heldout"].read_text().splitlines()]
    save_dataset(ws.store, "demo-heldout", heldout_records(task, rows), source={"generator": "protege demo"})
    with ExitStack() as stack:
        remote = bool(os.environ.get("OPENAI_BASE_URL") and os.environ.get("OPENAI_API_KEY"))
        if not remote:
            console.print(f"starting the local teacher: protege serve {s.model}")
            log = ws.artifacts / "demo" / "teacher.log"
            srv = stack.enter_context(ServerProcess(s.model, workspace=ws.root, log_path=log))
        ws.config.teachers[TEACHER] = teacher_config(None if remote else srv.base_url, s.model)
        distilled = distill(ws, task, files["inputs"], TEACHER, concurrency=s.concurrency, name="demo-distilled")
        student = train_student(ws, task_file, "demo-distilled", s)
        summary = run_eval(
            ws, task, "demo-heldout", {"teacher": TEACHER, "student": student, "base": s.model},
            name=f"demo-eval-{time.strftime('%Y%m%d-%H%M%S')}", extra_config={"demo": s.__dict__},
        )  # fmt: skip
    report = write_report(ws, summary["run"])
    keep = ("score", "score_ci", "macro_f1", "latency_p50_ms", "latency_p95_ms", "cost_per_1k")
    models = {k: {f: m.get(f) for f in keep} for k, m in summary["models"].items()}
    return {
        "models": models,
        "report": report["html"],
        "markdown": report["markdown"],
        "run": summary["run"],
        "distilled": distilled.summary(),
        "student_vs_teacher": {
            "score_ratio": summary["models"]["student"]["score_vs_reference"],
            "speedup_p50": summary["models"]["student"]["speedup_vs_reference"],
        },
        "seconds": round(time.perf_counter() - t0, 1),
        "summary": summary,
    }
