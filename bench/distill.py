"""Distillation throughput against a local teacher (`protege serve` in a subprocess).

Requests/s at concurrency 1, 4 and 16 (each level in a fresh workspace, so nothing is cached),
then the same run again from the cache. Reported as ratios against concurrency 1 measured in
this run, because absolute timings on a shared CPU are noise.

    .venv/bin/python bench/distill.py [--model smollm2-135m-instruct] [--n 32] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import httpx

os.environ.setdefault("PROTEGE_QUIET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from protege.data.records import load_records  # noqa: E402
from protege.models.precision import describe_host, host_info  # noqa: E402
from protege.paths import shared_data_dir  # noqa: E402
from protege.server_process import ServerProcess  # noqa: E402
from protege.tasks import Task  # noqa: E402
from protege.teachers.distill import distill  # noqa: E402
from protege.workspace import init_workspace  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "distill.json"
TASK = Task(
    name="emotion",
    instructions="Classify the emotion expressed in the tweet.",
    input="Tweet: {{ text }}",
    output={"kind": "text"},
)


def inputs_file(folder: Path, n: int) -> tuple[Path, str]:
    shared = shared_data_dir()
    if shared and (shared / "tweeteval-emotion" / "val.jsonl").exists():
        lines = (shared / "tweeteval-emotion" / "val.jsonl").read_text().splitlines()[:n]
        rows, source = [{"text": json.loads(line)["text"]} for line in lines], "tweeteval-emotion val"
    else:
        rows, source = [{"text": f"Synthetic tweet number {i}: what a day it has been!"} for i in range(n)], "synthetic"
    path = folder / "inputs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, source


def run_level(
    root: Path, base_url: str, model: str, inputs: Path, concurrency: int, max_tokens: int, limit: int | None = None
) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    teacher = {"base_url": base_url, "model": model, "max_tokens": max_tokens, "timeout_s": 600}
    (root / "protege.yaml").write_text(json.dumps({"teachers": {"local": teacher}}))
    ws = init_workspace(root)
    result = distill(ws, TASK, inputs, "local", concurrency=concurrency, limit=limit, retries_invalid=0)
    n_records = len(load_records(ws.store, result.dataset["name"]))
    return {
        "concurrency": concurrency,
        "seconds": round(result.seconds, 3),
        "requests": result.stats["requests"],
        "cache_hits": result.stats["cache_hits"],
        "records": n_records,
        "requests_per_s": round(result.stats["requests"] / result.seconds, 3),
        "completion_tokens": result.stats["completion_tokens"],
    }


def batch_stats(url: str) -> tuple[float, float]:
    """(sum, count) of the server's batch-size histogram: were concurrent requests batched?"""
    import httpx

    values = {"protege_batch_size_sum": 0.0, "protege_batch_size_count": 0.0}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        name = line.split(" ", 1)[0]
        if name in values:
            values[name] = float(line.rsplit(" ", 1)[-1])
    return values["protege_batch_size_sum"], values["protege_batch_size_count"]


def measured(url: str, run) -> dict:
    s0, c0 = batch_stats(url)
    result = run()
    s1, c1 = batch_stats(url)
    result["server_mean_batch_size"] = round((s1 - s0) / (c1 - c0), 2) if c1 > c0 else None
    return result


def fixed_latency_levels(folder: Path, n: int = 128, delay: float = 0.25) -> dict:
    """The distiller alone: against a server that always takes `delay` s, requests/s should grow
    with concurrency almost linearly, whatever the CPU is doing."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from fake_openai import FakeOpenAI

    inputs = folder / "fake-inputs.jsonl"
    inputs.write_text("".join(json.dumps({"text": f"tweet {i}"}) + "\n" for i in range(n)))
    with FakeOpenAI(lambda body: "joy", delay=delay) as fake:
        levels = {c: run_level(folder / f"fake{c}", fake.base_url, "fake", inputs, c, 16) for c in (1, 4, 16)}
    for level in levels.values():
        level["ratio_vs_c1"] = round(level["requests_per_s"] / levels[1]["requests_per_s"], 2)
    return {"server_delay_s": delay, "requests": n, "levels": {str(c): v for c, v in levels.items()}}


def summary_lines(r: dict) -> list[str]:
    """Markdown for the README (bench/run_all.py pastes it in); ratios are against concurrency 1."""
    fixed = r["fixed_latency_teacher"]["levels"]
    lines = [
        f"Teacher: {r['teacher']}, {r['inputs']}, max_tokens {r['max_tokens']}, {r.get('dtype', 'float32')}; "
        f"host: {describe_host(r['host']) if r.get('host') else 'not recorded'}.",
        "",
        "| concurrency | real model req/s | x c1 | fixed 0.25 s teacher req/s | x c1 |",
        "|---|---|---|---|---|",
    ]
    for c, v in r["levels"].items():
        f = fixed.get(c, {})
        lines.append(
            f"| {c} | {v['requests_per_s']:.2f} | {v['ratio_vs_c1']:.2f} | "
            f"{f.get('requests_per_s', 0):.2f} | {f.get('ratio_vs_c1', 0):.2f} |"
        )
    cache = r["cache_rerun"]
    lines += ["", f"Cache-hit re-run: {cache['seconds']:.2f} s, {cache['requests']} requests sent "
              f"({cache['speedup_vs_c16']:.0f}x faster than the concurrency-16 run)."]  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--n", type=int, default=32, help="inputs per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, ServerProcess(args.model, log_path=Path(tmp) / "serve.log") as srv:
        tmp = Path(tmp)
        inputs, source = inputs_file(tmp, args.n)
        warm = run_level(
            tmp / "warm", srv.base_url, args.model, inputs, 4, args.max_tokens, limit=4
        )  # first-call costs
        levels = {
            c: measured(
                srv.url, lambda c=c: run_level(tmp / f"c{c}", srv.base_url, args.model, inputs, c, args.max_tokens)
            )
            for c in (1, 4, 16)
        }
        cached = run_level(tmp / "c16", srv.base_url, args.model, inputs, 16, args.max_tokens)
        dtype = httpx.get(f"{srv.url}/health").json()["dtype"]
        fixed = fixed_latency_levels(tmp)
    base = levels[1]["requests_per_s"]
    for level in levels.values():
        level["ratio_vs_c1"] = round(level["requests_per_s"] / base, 2)
    cached["speedup_vs_c16"] = round(levels[16]["seconds"] / max(cached["seconds"], 1e-9), 1)
    result = {
        "teacher": f"protege serve {args.model} (subprocess, 127.0.0.1)",
        "inputs": f"{args.n} rows of {source}",
        "max_tokens": args.max_tokens,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, shared with other jobs",
        "dtype": dtype,
        "host": host_info(),
        "warmup_seconds": warm["seconds"],
        "levels": {str(c): v for c, v in levels.items()},
        "cache_rerun": cached,
        "fixed_latency_teacher": fixed,
    }
    result["summary"] = summary_lines(result)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for c, v in levels.items():
        print(
            f"concurrency {c:>2}: {v['requests_per_s']:.2f} req/s ({v['ratio_vs_c1']:.2f}x c1), "
            f"mean server batch {v['server_mean_batch_size']}"
        )
    print(
        f"cache re-run: {cached['seconds']:.2f}s, {cached['requests']} requests sent, "
        f"{cached['speedup_vs_c16']}x faster than the c16 run"
    )
    for c, v in fixed["levels"].items():
        print(f"fixed-latency fake teacher, concurrency {c:>2}: {v['ratio_vs_c1']:.2f}x c1")
    print(f"-> {RESULTS}")


if __name__ == "__main__":
    sys.exit(main())
