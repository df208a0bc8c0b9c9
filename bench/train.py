"""Training speed, accuracy and memory: protege LoRA vs TRL's SFTTrainer on the same job.

Job: ../shared/data/tweeteval-emotion, smollm2-135m-instruct, LoRA r=16 alpha=32 on all linear
layers, the first 800 training rows, batch 8, one epoch, lr 2e-4 -- the same for every contender.
Each contender runs in its own subprocess (peak RSS is per process). TRL is time-capped: it runs a
fixed number of steps and its trained-token rate is measured over them (the rate is flat after the
first step). Validation accuracy: the first 200 val rows, constrained choice over the 4 labels.
Every contender runs in the same dtype (`--dtype`, float32 by default), recorded in the results.

Precision check: the same LoRA epoch again under bf16-mixed (what `dtype: auto` picks on a CPU with
AVX512-BF16), to show its accuracy stays within 1 point of float32. On a host without bf16 the bf16
matmuls are emulated (models.precision.bf16_matmul_emulation: bf16 numbers at float32 speed), so
that row's accuracy is a bf16 figure and its speed is not.

    .venv/bin/python bench/train.py                   # the full job (~30 min on 2 idle cores)
    .venv/bin/python bench/train.py --steps 10        # quicker: every contender capped at 10 steps

Writes bench/results/train.json (ratios against TRL from the same run) and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = "smollm2-135m-instruct"
HP = {"rows": 800, "batch_size": 8, "lr": 2e-4, "r": 16, "alpha": 32, "dropout": 0.05, "eval_rows": 200}


def data_dir() -> Path:
    from protege.paths import shared_data_dir

    shared = shared_data_dir()
    if shared is None:
        sys.exit("../shared/data is absent: this benchmark needs tweeteval-emotion")
    return shared / "tweeteval-emotion"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- contenders (each runs in its own process) ---------------------------------------------------
def run_protege(method: str, steps: int | None, evaluate: bool, work: Path, dtype: str) -> dict:
    from protege.train.config import TrainConfig
    from protege.train.run import train
    from protege.workspace import init_workspace

    d = data_dir()
    cfg = TrainConfig.model_validate(
        {
            "base": BASE,
            "task": str(ROOT / "examples/tasks/emotion.yaml"),
            "data": {
                "train": str(d / "train.jsonl"),
                "limit": HP["rows"],
                **({"eval": str(d / "val.jsonl"), "eval_limit": HP["eval_rows"]} if evaluate else {}),
            },
            "method": method,
            "lora": {"r": HP["r"], "alpha": HP["alpha"], "dropout": HP["dropout"], "targets": "all-linear"},
            "epochs": 1,
            "max_steps": steps,
            "batch_size": HP["batch_size"],
            "lr": HP["lr"],
            "threads": 2,
            "dtype": dtype,
            "output": str(work / f"protege-{method}-{dtype}"),
        }
    )
    m = train(cfg, init_workspace(work / "ws"))
    return {
        "steps": m["steps"],
        "trained_tokens": m["trained_tokens"],
        "train_seconds": m["train_seconds"],
        "tokens_per_s": m["tokens_per_s"],
        "accuracy": m.get("eval_accuracy"),
        "macro_f1": m.get("eval_macro_f1"),
        "final_loss": m["final_loss"],
        "precision": m["precision"],
        "bf16_matmul": m["bf16_matmul"],
    }


def run_trl(steps: int | None, work: Path, dtype: str) -> dict:
    """SFTTrainer with its defaults for the same job (conversational data, LoRA via peft_config)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from protege.models.load import load_tokenizer, resolve_model
    from protege.tasks import load_task
    from protege.train.data import load_conversations
    from protege.train.run import load_causal_lm

    torch.set_num_threads(2)
    task = load_task(ROOT / "examples/tasks/emotion.yaml")
    conv = load_conversations(str(data_dir() / "train.jsonl"), task, None, limit=HP["rows"])
    resolved = resolve_model(BASE)
    tok = load_tokenizer(resolved)
    model = load_causal_lm(str(resolved.path), torch.float32)  # the same plain HF load as protege
    mixed = dtype == "bf16-mixed"  # Trainer's bf16=True is autocast over float32 weights, as protege's
    args = SFTConfig(
        output_dir=str(work / "trl"),
        per_device_train_batch_size=HP["batch_size"],
        learning_rate=HP["lr"],
        num_train_epochs=1,
        max_steps=steps or -1,
        report_to="none",
        save_strategy="no",
        logging_steps=10,
        seed=0,
        bf16=mixed,  # TRL 1.x defaults to bf16 where available: set explicitly so both run the same dtype
        use_cpu=not torch.cuda.is_available(),
    )
    peft = LoraConfig(r=HP["r"], lora_alpha=HP["alpha"], lora_dropout=HP["dropout"], target_modules="all-linear")
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list([{"messages": c} for c in conv.chats]),
        processing_class=tok,
        peft_config=peft,
    )
    lengths = [len(x) for x in trainer.train_dataset["input_ids"]]
    t0 = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - t0
    n_steps = out.global_step
    # trained = non-padding tokens: the mean example length x examples seen
    tokens = sum(lengths) / len(lengths) * n_steps * HP["batch_size"]
    return {
        "steps": n_steps,
        "trained_tokens": round(tokens),
        "train_seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
        "final_loss": out.training_loss,
        "precision": dtype,
    }


def worker(args: argparse.Namespace) -> None:
    work = Path(args.work)
    if args.worker == "trl":
        result = run_trl(args.steps, work, args.dtype)
    else:
        result = run_protege(args.worker, args.steps, args.evaluate, work, args.dtype)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    Path(args.result).write_text(json.dumps(result))


def spawn(name: str, steps: int | None, work: Path, dtype: str, evaluate: bool = False) -> dict:
    result = work / f"{name}-{dtype}.json"
    cmd = [sys.executable, __file__, "--worker", name, "--work", str(work), "--result", str(result)]
    cmd += ["--dtype", dtype]
    if steps:
        cmd += ["--steps", str(steps)]
    if evaluate:
        cmd.append("--evaluate")
    t0 = time.perf_counter()
    env = {**os.environ, "PROTEGE_QUIET": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(result.read_text())
    out["wall_seconds"] = round(time.perf_counter() - t0, 1)
    print(f"  {name}: {json.dumps(out)}", file=sys.stderr)
    return out


LABELS = ["anger", "joy", "optimism", "sadness"]


def label_context(report: dict) -> None:
    """Intervals for every accuracy and the majority-class row, from the stored figures and the
    shared data (no model runs): an accuracy over n rows is k correct answers, whose bootstrap
    interval depends on k and n alone."""
    from protege.data.files import read_rows
    from protege.metrics import majority_baseline, mean_ci

    n = HP["eval_rows"]
    for key in ("protege_lora", "protege_lora_bf16_mixed"):
        run = report.get(key)
        if run and run.get("accuracy") is not None:
            k = round(run["accuracy"] * n)
            run["accuracy_ci"] = [round(x, 3) for x in mean_ci([1.0] * k + [0.0] * (n - k))]
    d = data_dir()
    train = [r["label"] for _, r in read_rows(d / "train.jsonl")][: HP["rows"]]
    gold = [r["label"] for _, r in read_rows(d / "val.jsonl")][:n]
    report["majority"] = majority_baseline(train, gold, LABELS, f"the first {HP['rows']} train rows")


def summary_lines(r: dict) -> list[str]:
    """Markdown for the README (bench/run_all.py pastes it in)."""
    from protege.models.precision import describe_host

    lora, trl, full, mixed = r["protege_lora"], r["trl_sft"], r["protege_full"], r.get("protege_lora_bf16_mixed")

    def acc(x: dict) -> str:
        if x.get("accuracy") is None:
            return "-"
        ci = x.get("accuracy_ci")
        return f"{x['accuracy']:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")

    lines = [
        f"LoRA r=16 on all linear layers, {r['job']['rows']} tweeteval-emotion rows, batch 8, "
        f"smollm2-135m-instruct, every contender in {r['dtype']}; host: {describe_host(r['host'])}.",
        "",
        "| contender | precision | steps | trained tokens/s | peak RSS | val accuracy, 200 rows (95% CI) |",
        "|---|---|---|---|---|---|",
        f"| protege lora | {lora['precision']} | {lora['steps']} | {lora['tokens_per_s']:.1f} | "
        f"{lora['peak_rss_mb']:.0f} MB | {acc(lora)} |",
        f"| TRL SFTTrainer (defaults, same job; baseline) | {trl['precision']} | {trl['steps']} | "
        f"{trl['tokens_per_s']:.1f} | {trl['peak_rss_mb']:.0f} MB | - |",
        f"| protege full | {full['precision']} | {full['steps']} | {full['tokens_per_s']:.1f} | "
        f"{full['peak_rss_mb']:.0f} MB | - |",
    ]
    if mixed:
        emulated = mixed.get("bf16_matmul") == "emulated"
        speed = "(emulated: not a speed)" if emulated else f"{mixed['tokens_per_s']:.1f}"
        lines.append(
            f"| protege lora, `auto` on a bf16 host | bf16-mixed{' (emulated)' if emulated else ''} | "
            f"{mixed['steps']} | {speed} | {mixed['peak_rss_mb']:.0f} MB | {acc(mixed)} |"
        )
    if maj := r.get("majority"):
        lo, hi = maj["score_ci"]
        lines.append(
            f"| majority: always {maj['label']!r} ({maj['source']}) | - | - | - | - | "
            f"{maj['score']:.3f} ({lo:.3f}-{hi:.3f}) |"
        )
    lines += [
        "",
        "TRL runs with its defaults (gradient checkpointing on, loss over the whole sequence), not tuned: "
        "the speedup below is against that baseline.",
        f"protege LoRA vs TRL: **{r['speedup_vs_trl']:.2f}x** trained tokens/s (target 3x); peak RSS lora/full "
        f"{r['rss_lora_vs_full']:.2f}; accuracy measured after: {r['accuracy_after']} (target 0.77).",
    ]
    if mixed and mixed.get("accuracy") is not None and lora.get("accuracy") is not None:
        gap = (mixed["accuracy"] - lora["accuracy"]) * 100
        lines.append(
            f"bf16-mixed vs {lora['precision']} accuracy: {gap:+.1f} points (bound: within 1 point)"
            + (
                "; its bf16 matmuls were emulated on this host, so the accuracy is a bf16 figure, the speed is not."
                if mixed.get("bf16_matmul") == "emulated"
                else "."
            )
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=None, help="cap protege lora at N steps (default: the epoch)")
    ap.add_argument("--trl-steps", type=int, default=20, help="TRL's time cap in steps")
    ap.add_argument("--full-steps", type=int, default=8, help="steps of the full fine-tuning run (for RSS)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bf16-mixed"], help="every contender's dtype")
    ap.add_argument("--no-precision-check", action="store_true", help="skip the bf16-mixed LoRA epoch")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--evaluate", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--resummarise", action="store_true", help="recompute intervals and summary of the stored results")
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if args.resummarise:
        out = ROOT / "bench" / "results" / "train.json"
        report = json.loads(out.read_text())
        label_context(report)
        report["summary"] = summary_lines(report)
        out.write_text(json.dumps(report, indent=2))
        return print("\n".join(report["summary"]))
    data_dir()
    import torch

    from protege.models.precision import host_info

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="protege-bench-train-") as tmp:
        work = Path(tmp)
        trl = spawn("trl", min(args.trl_steps, args.steps or args.trl_steps), work, args.dtype)
        # accuracy is only meaningful after the whole epoch: a capped run measures speed and memory only
        lora = spawn("lora", args.steps, work, args.dtype, evaluate=args.steps is None)
        full = spawn("full", args.full_steps, work, args.dtype)
        mixed = None
        if not args.no_precision_check and args.dtype != "bf16-mixed":
            mixed = spawn("lora", args.steps, work, "bf16-mixed", evaluate=args.steps is None)
    ratio = lora["tokens_per_s"] / trl["tokens_per_s"]
    epoch_steps = -(-HP["rows"] // HP["batch_size"])
    report = {
        "job": {"base": BASE, "data": "tweeteval-emotion", **HP, "epoch_steps": epoch_steps},
        "cpu_threads": 2,
        "dtype": args.dtype,
        "host": host_info(),
        "protege_lora": lora,
        "trl_sft": trl,
        "protege_full": full,
        "protege_lora_bf16_mixed": mixed,
        "speedup_vs_trl": round(ratio, 2),
        "accuracy_after": "epoch" if lora["steps"] >= epoch_steps else "not measured (capped run)",
        "rss_lora_vs_full": round(lora["peak_rss_mb"] / full["peak_rss_mb"], 2),
        "targets": {"speedup_vs_trl": 3.0, "accuracy": 0.77, "bf16_mixed_accuracy_gap_points": 1.0},
    }
    label_context(report)
    report["summary"] = summary_lines(report)
    out = ROOT / "bench" / "results" / "train.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(
        f"protege lora {lora['tokens_per_s']:.0f} tok/s vs TRL SFTTrainer {trl['tokens_per_s']:.0f} tok/s: "
        f"{ratio:.2f}x | accuracy ({report['accuracy_after']}) {lora['accuracy']} "
        f"(bf16-mixed: {mixed and mixed['accuracy']}) | peak RSS lora "
        f"{lora['peak_rss_mb']:.0f} MB vs full {full['peak_rss_mb']:.0f} MB | TRL {trl['peak_rss_mb']:.0f} MB -> {out}"
    )


if __name__ == "__main__":
    main()
