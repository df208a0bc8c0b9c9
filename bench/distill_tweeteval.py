"""Distillation on real data: TweetEval emotion (../shared/data/tweeteval-emotion).

Teacher: the bundled SmolLM2-135M-Instruct with instructions and 8 few-shot examples (listed in
the system message: as chat turns it answers its last example's label for nearly every tweet),
served by `protege serve` and called over HTTP with constrained choice. Students: LoRA adapters on
the same base, trained with the bare tweet as the prompt (and an empty system turn), one on the
teacher's labels for a train subset and one on the gold labels of the same subset. Everything
(teacher, both students, the untuned base) is scored by `protege eval` on the same subset of the
test split.

Sizes (CPU, 2 cores): TRAIN_N train rows (the first ones after the few-shot examples), TEST_N test
rows (the first ones). Ratios are against the teacher measured in the same run. Every model is also
set against the majority-class baseline: always answering the most frequent gold label of the same
training rows (on this data, "anger"); a model whose accuracy interval holds that baseline's accuracy
is reported as indistinguishable from it.

    .venv/bin/python bench/distill_tweeteval.py [--train-n 800] [--test-n 300]
    .venv/bin/python bench/distill_tweeteval.py --resummarise   # rewrite the summary of the stored results

`--resummarise` runs no model: it recomputes the majority row from ../shared/data, sets each stored
model against it and rewrites the summary (for results stored before the row existed).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from protege.config import TeacherConfig
from protege.data.records import Record, load_records, save_dataset
from protege.evaluate.runner import run_eval
from protege.metrics import majority_baseline, versus_majority
from protege.models.precision import describe_host, host_info
from protege.paths import shared_data_dir
from protege.server_process import ServerProcess
from protege.tasks import Task
from protege.teachers.distill import distill
from protege.train.config import DataConfig, TrainConfig
from protege.train.run import train
from protege.workspace import init_workspace

BASE = "smollm2-135m-instruct"
LABELS = ["anger", "joy", "optimism", "sadness"]
OUT = Path(__file__).parent / "results" / "distill_tweeteval.json"


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def make_task(shots: list[dict]) -> Task:
    return Task(
        name="emotion",
        instructions="Classify the emotion expressed in the tweet: anger, joy, optimism or sadness.",
        input="Tweet: {{ text }}",
        output={"kind": "label", "labels": LABELS},
        examples=[{"input": {"text": r["text"]}, "output": r["label"]} for r in shots],
        examples_as="system",  # as chat turns, the 135M teacher answers its last shot's label (0.29)
    )


def records(task: Task, rows: list[dict], split: str) -> list[Record]:
    return [
        Record(messages=task.student_messages({"text": r["text"]}) + [{"role": "assistant", "content": r["label"]}],
               label=r["label"], metadata={"input": {"text": r["text"]}}, review="accepted", split=split)
        for r in rows
    ]  # fmt: skip


def pick_shots(rows: list[dict], per_label: int = 2) -> list[dict]:
    shots = []
    for label in LABELS:
        shots += [r for r in rows if r["label"] == label][:per_label]
    return shots


def student(ws, task_file: Path, data: str, name: str, epochs: float) -> dict:
    cfg = TrainConfig(base=BASE, task=str(task_file), data=DataConfig(train=data), method="lora", epochs=epochs,
                      batch_size=8, lr=2e-4, max_length=128, output=f"runs/{name}", name=name,
                      system_prompt="")  # fmt: skip
    return train(cfg, workspace=ws)


MAJORITY_SOURCE = "gold labels of the training rows"


def majority(pool: list[dict], test_rows: list[dict]) -> dict:
    """Always the most frequent gold label of the training rows, scored on the test rows (what
    `protege eval --majority-from emotion-gold` computes in a full run)."""
    return majority_baseline([r["label"] for r in pool], [r["label"] for r in test_rows], LABELS, MAJORITY_SOURCE)


NAMES = {
    "teacher": "teacher (instructions, 8 examples)",
    "student_teacher_labels": "student on teacher labels",
    "student_gold_labels": "student on gold labels",
    "base_untuned": "base, untuned (bare tweet, no instructions)",
}


TRAIN_KEYS = ("seconds", "final_loss", "tokens_per_s", "precision")


def precision_line(result: dict) -> str:
    """Which precision trained and served the models, and on what host."""
    trained = {t.get("precision") or "float32" for t in result["train"].values()}
    served = {m.get("dtype") or "float32" for m in result["models"].values()}
    host = describe_host(result["host"]) if result.get("host") else result.get("host_note", "host not recorded")
    return f"Training precision {', '.join(sorted(trained))}; serving {', '.join(sorted(served))}; host: {host}."


def summary_lines(result: dict) -> list[str]:
    """The README's table: every model on the same test rows, ratios against the teacher, the majority
    row, and what the figures say, written from the figures."""
    lines = [
        f"{result['teacher']}; students: {result['students']}; {result['train_subset']}; "
        f"scored on the {result['test_subset']}. Teacher agreement with gold on the train rows: "
        f"{result['teacher_agreement_with_gold_on_train_subset']:.3f}.",
        "",
        "| model | accuracy (95% CI) | macro-F1 | vs majority | prompt tokens | p50 latency "
        "| vs teacher: score, speed |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, m in result["models"].items():
        lo, hi = m["score_ci"]
        lines.append(
            f"| {NAMES.get(label, label)} | {m['score']:.3f} ({lo:.3f}-{hi:.3f}) | {m['macro_f1']:.3f} | "
            f"{m.get('vs_majority', '-')} | {m['prompt_tokens_mean']:.0f} | {m['latency_p50_ms']:,.0f} ms | "
            f"{m['score_vs_reference']:.2f}x, {m['speedup_vs_reference']:.1f}x |"
        )
    if maj := result.get("majority"):
        lo, hi = maj["score_ci"]
        lines.append(
            f"| majority: always {maj['label']!r} ({maj['source']}) | {maj['score']:.3f} ({lo:.3f}-{hi:.3f}) | "
            f"{maj['macro_f1']:.3f} | | | | |"
        )
    lines += ["", *findings(result)]
    if note := result.get("majority_note"):
        lines += ["", note]
    t = result["timings_s"]
    lines += ["", precision_line(result)]
    lines += ["", f"Distil {t['distill_s']:.0f} s, train {t['train_distilled_s']:.0f} + {t['train_gold_s']:.0f} s, "
              f"eval {t['eval_s']:.0f} s."]  # fmt: skip
    return lines


def findings(result: dict) -> list[str]:
    """The summary's sentences, each derived from the figures (nothing typed that could drift)."""
    models, maj = result["models"], result.get("majority")
    if not {"teacher", "student_teacher_labels", "student_gold_labels"} <= set(models):
        return []
    teacher, distilled, gold = models["teacher"], models["student_teacher_labels"], models["student_gold_labels"]
    speed = f"{distilled['speedup_vs_reference']:.1f}x faster per request than the teacher"
    if not maj:
        return [f"The student on teacher labels keeps {distilled['score_vs_reference']:.0%} of the teacher's "
                f"accuracy, {speed}; the same student on gold labels scores {gold['score']:.3f}."]  # fmt: skip
    same = [NAMES[k] for k in ("teacher", "student_teacher_labels") if models[k].get("vs_majority") != "above"]
    out = [f"Always answering {maj['label']!r} scores {maj['score']:.3f} (macro-F1 {maj['macro_f1']:.3f})."]
    if "student on teacher labels" in same:
        t_lo, t_hi = teacher["score_ci"]
        teacher_note = (
            f"the teacher ({teacher['score']:.3f}, {t_lo:.3f}-{t_hi:.3f}) is itself indistinguishable from the baseline"
            if NAMES["teacher"] in same
            else f"the teacher ({teacher['score']:.3f}) is {teacher['score'] - maj['score']:.3f} above the baseline"
        )
        out.append(
            f"The student on teacher labels ({distilled['score']:.3f}, macro-F1 {distilled['macro_f1']:.3f}) is "
            f"indistinguishable from that baseline: distillation from this teacher gave a student {speed}, but "
            f"no measurably more accurate than always answering {maj['label']!r}. Its "
            f"{distilled['score_vs_reference']:.0%} of the teacher's accuracy says little: {teacher_note}."
        )
    else:
        out.append(
            f"The student on teacher labels ({distilled['score']:.3f}) is above it and keeps "
            f"{distilled['score_vs_reference']:.0%} of the teacher's accuracy, {speed}."
        )
    if gold.get("vs_majority") == "above":
        out.append(
            f"The same student trained on gold labels reaches {gold['score']:.3f} (macro-F1 {gold['macro_f1']:.3f}): "
            "the teacher's labels, not the student, bound what distillation reaches here."
        )
    return out


def resummarise() -> int:
    """Add the majority row to the stored results (from ../shared/data; no model is run) and rewrite
    their summary."""
    result = json.loads(OUT.read_text())
    shared = shared_data_dir()
    if shared is None or not (shared / "tweeteval-emotion").exists():
        print("skipped: ../shared/data/tweeteval-emotion is absent")
        return 0
    pool, test_rows, shots = rows(shared, *_sizes(result))
    assert result["train_subset"] == f"first {len(pool)} train rows (after the {len(shots)} few-shot examples)"
    result["majority"] = majority(pool, test_rows)
    for m in result["models"].values():
        m["vs_majority"] = versus_majority(m["score_ci"], result["majority"]["score"])
    if "host" not in result:  # the stored run predates host records; its closing note (stop 9) names the host
        result["host_note"] = "AMD EPYC without AVX512-BF16, 2 cores (from the run's closing note; not recorded then)"
    result["majority_note"] = (
        "The majority row and the vs-majority column were computed afterwards from ../shared/data and the "
        "stored figures (`--resummarise`); the models were not rerun. Macro-F1 is over all four labels, "
        "each of which occurs in the test rows, so the stored values are those of the current rule."
    )
    result["summary"] = summary_lines(result)
    OUT.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print("\n".join(result["summary"]))
    return 0


def _sizes(result: dict) -> tuple[int, int]:
    train_n = int(result["train_subset"].split()[1])
    test_n = int(result["test_subset"].split()[1])
    return train_n, test_n


def rows(shared: Path, train_n: int, test_n: int) -> tuple[list[dict], list[dict], list[dict]]:
    """(training pool, test rows, few-shot examples): the first rows after the examples, the first test rows."""
    train_rows = read(shared / "tweeteval-emotion" / "train.jsonl")
    test_rows = read(shared / "tweeteval-emotion" / "test.jsonl")[:test_n]
    shots = pick_shots(train_rows)
    pool = [r for r in train_rows if r not in shots][:train_n]
    return pool, test_rows, shots


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-n", type=int, default=800)
    ap.add_argument("--test-n", type=int, default=300)
    ap.add_argument("--epochs", type=float, default=1)
    ap.add_argument("--resummarise", action="store_true", help="Rewrite the stored results' summary; run nothing.")
    args = ap.parse_args()
    if args.resummarise:
        return resummarise()
    shared = shared_data_dir()
    if shared is None or not (shared / "tweeteval-emotion").exists():
        print("skipped: ../shared/data/tweeteval-emotion is absent")
        return 0
    pool, test_rows, shots = rows(shared, args.train_n, args.test_n)
    task = make_task(shots)
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="protege-bench-") as tmp:
        ws = init_workspace(Path(tmp) / "ws")
        task_file = Path(tmp) / "emotion.yaml"
        task_file.write_text(json.dumps(task.model_dump(by_alias=True)))  # JSON is YAML
        save_dataset(ws.store, "emotion-gold", records(task, pool, "train"))
        save_dataset(ws.store, "emotion-test", records(task, test_rows, "test"))
        inputs = Path(tmp) / "inputs.jsonl"
        inputs.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in pool))
        with ServerProcess(BASE, workspace=ws.root) as srv:
            ws.config.teachers["fewshot"] = TeacherConfig(base_url=srv.base_url, model=BASE, max_tokens=8,
                                                          constrained_choices=True)  # fmt: skip
            t0 = time.perf_counter()
            distilled = distill(ws, task, inputs, "fewshot", concurrency=8, name="emotion-distilled")
            timings["distill_s"] = time.perf_counter() - t0
            teacher_labels = [r.label for r in load_records(ws.store, "emotion-distilled")]
            agreement = sum(t == g["label"] for t, g in zip(teacher_labels, pool, strict=True)) / len(pool)
            t0 = time.perf_counter()
            m_distilled = student(ws, task_file, "emotion-distilled", "student-distilled", args.epochs)
            timings["train_distilled_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            m_gold = student(ws, task_file, "emotion-gold", "student-gold", args.epochs)
            timings["train_gold_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            models = {"teacher": "fewshot", "student_teacher_labels": "student-distilled",
                      "student_gold_labels": "student-gold", "base_untuned": BASE}  # fmt: skip
            summary = run_eval(ws, task, "emotion-test", models, name="bench-eval", use_cache=False,
                               majority_from="emotion-gold")  # fmt: skip
            timings["eval_s"] = time.perf_counter() - t0
    table = {
        label: {
            k: m.get(k)
            for k in (
                "score",
                "score_ci",
                "macro_f1",
                "macro_f1_ci",
                "vs_majority",
                "dtype",
                "latency_p50_ms",
                "latency_p95_ms",
                "prompt_tokens_mean",
                "cost_per_1k",
                "score_vs_reference",
                "speedup_vs_reference",
            )
        }  # fmt: skip
        for label, m in summary["models"].items()
    }
    result = {
        "data": "tweeteval-emotion",
        "train_subset": f"first {len(pool)} train rows (after the {len(shots)} few-shot examples)",
        "test_subset": f"first {len(test_rows)} rows of the test split",
        "teacher": f"{BASE}, instructions + {len(shots)} examples in the system message, constrained choice over HTTP",
        "students": f"LoRA r=16 on {BASE}, {args.epochs} epoch(s), batch 8, lr 2e-4, bare-tweet prompt, "
        "empty system turn",
        "metric": "accuracy (95% bootstrap CI); ratios against the teacher in this run",
        "teacher_agreement_with_gold_on_train_subset": agreement,
        "distill": distilled.summary(),
        "train": {"student_teacher_labels": {k: m_distilled.get(k) for k in TRAIN_KEYS},
                  "student_gold_labels": {k: m_gold.get(k) for k in TRAIN_KEYS}},
        "host": host_info(),
        "models": table,
        "majority": {**summary["majority"], "source": MAJORITY_SOURCE},
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }  # fmt: skip
    result["summary"] = summary_lines(result)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2, default=str) + "\n")
    for label, m in table.items():
        print(f"{label:>24}: accuracy {m['score']:.3f} [{m['score_ci'][0]:.3f}, {m['score_ci'][1]:.3f}]  "
              f"p50 {m['latency_p50_ms']:.0f} ms  x{m['speedup_vs_reference']:.2f} speed vs teacher")  # fmt: skip
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
