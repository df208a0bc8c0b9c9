"""Export: how long `protege export` takes and how faithful its files are, for a trained student.

The student: a LoRA (r=16, all linear layers, empty system turn as the demo's student) trained here
on smollm2-135m-instruct for --steps steps over the first 200 tweeteval-emotion training rows. It is
exported as GGUF F16, GGUF Q8_0 and a merged Hugging Face folder; each export runs its own check
(serve/export/check.py): transformers loads the written files back and answers the 20 built-in prompts
(greedy, 32 new tokens) next to the reference (the merged float32 model; for `hf`, the unmerged adapter).
The figures are the check's: token agreement (the candidate's greedy pick at each of the reference's
answer tokens), free-running agreement (answers generated independently, compared token by token),
largest logit difference relative to the logit scale; and the file sizes.

    .venv/bin/python bench/export.py [--steps 30]
    .venv/bin/python bench/export.py --resummarise   # rewrite the summary of the stored results

Writes bench/results/export.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "export.json"
BASE = "smollm2-135m-instruct"
EXPORTS = [("gguf", "f16"), ("gguf", "q8_0"), ("hf", None)]


def train_student(work: Path, steps: int) -> tuple[Path, float]:
    from protege.paths import shared_data_dir
    from protege.train.config import TrainConfig
    from protege.train.run import train
    from protege.workspace import init_workspace

    shared = shared_data_dir()
    if shared is None:
        sys.exit("../shared/data is absent: this benchmark trains on tweeteval-emotion")
    cfg = TrainConfig.model_validate(
        {
            "base": BASE,
            "task": str(ROOT / "examples/tasks/emotion.yaml"),
            "data": {"train": str(shared / "tweeteval-emotion" / "train.jsonl"), "limit": 200},
            "lora": {"r": 16, "alpha": 32, "dropout": 0.05},
            "max_steps": steps,
            "batch_size": 8,
            "lr": 2e-4,
            "system_prompt": "",
            "threads": 2,
            "output": str(work / "student"),
        }
    )
    start = time.perf_counter()
    train(cfg, init_workspace(work / "ws"))
    return work / "student", time.perf_counter() - start


def run(steps: int) -> dict[str, Any]:
    from protege.serve.export import run_export

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        student, train_s = train_student(work, steps)
        rows = []
        for fmt, quant in EXPORTS:
            result = run_export(str(student), fmt, work / f"{fmt}-{quant}", quant=quant, threads=2)
            size = result.size_bytes or sum(f.stat().st_size for f in result.path.rglob("*") if f.is_file())
            rows.append(
                {
                    "format": fmt,
                    "quant": quant,
                    "seconds": round(result.seconds, 1),
                    "check_seconds": result.check["seconds"],
                    "size_bytes": size,
                    "check": result.check,
                }
            )
    return {"student": {"base": BASE, "steps": steps, "train_seconds": round(train_s, 1)}, "exports": rows}


def summary_lines(results: dict[str, Any]) -> list[str]:
    s = results["student"]
    lines = [
        f"A LoRA student of {s['base']} (r=16, {s['steps']} steps on 200 tweeteval-emotion rows), exported and "
        "checked by `protege export`: transformers loads each file back and answers the 20 built-in prompts "
        "(greedy, up to 32 tokens) beside the merged float32 model (for hf: the unmerged adapter). "
        f"Host: {results.get('host_text', 'not recorded')}.",
        "",
        "| export | size | time (of which the check) | token agreement | free-running agreement | "
        "max logit diff / scale | check |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in results["exports"]:
        c = row["check"]
        name = f"{row['format']} {row['quant'].upper()}" if row["quant"] else f"{row['format']} (merged)"
        lines.append(
            f"| {name} | {row['size_bytes'] / 2**20:.0f} MiB | {row['seconds']:.0f} s ({row['check_seconds']:.0f} s) | "
            f"{c['token_agreement']:.1%} of {c['answer_tokens']} | {c['free_running_agreement']:.1%} | "
            f"{c['relative_logit_diff']:.1e} | {'passed' if c['passed'] else 'FAILED'} |"
        )
    sizes = {(r["format"], r["quant"]): r["size_bytes"] for r in results["exports"]}
    if ("gguf", "f16") in sizes and ("gguf", "q8_0") in sizes:
        ratio = sizes[("gguf", "q8_0")] / sizes[("gguf", "f16")]
        lines += [
            "",
            f"Q8_0 is {ratio:.2f}x the size of F16. Gates: token agreement >= 95% for F16 and hf (>= 90% for Q8_0), "
            "and for F16 and hf a logit difference within 1% (hf: 1e-4) of the scale.",
        ]
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--resummarise", action="store_true")
    args = ap.parse_args()
    if args.resummarise:
        results = json.loads(OUT.read_text())
    else:
        from protege.models.precision import describe_host, host_info

        results = run(args.steps)
        results["host"] = host_info()
        results["host_text"] = describe_host(results["host"])
    results["summary"] = summary_lines(results)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(results["summary"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
