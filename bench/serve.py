"""Serving throughput: 1, 8 and 32 concurrent clients against `protege serve smollm2-135m-instruct`.

Each level sends greedy chat requests (fixed max_tokens) from N client threads with the official
openai client. The baseline is one request at a time, measured in the same run, so the headline is a
ratio (batched tokens/s at 32 clients over one-at-a-time tokens/s; target >= 4x) that survives a
busy machine. Greedy answers at every level are also compared with the one-at-a-time answers: dynamic
batching must not change what any client gets.

    .venv/bin/python bench/serve.py [--requests-per-client 2] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from openai import OpenAI

from protege.models.precision import describe_host, host_info
from protege.server_process import ServerProcess

MODEL = "smollm2-135m-instruct"
RESULTS = Path(__file__).parent / "results" / "serve.json"
TOPICS = [
    "the moon", "volcanoes", "honey bees", "the Roman empire", "photosynthesis", "jazz", "glaciers", "chess",
    "bread", "the internet", "whales", "electricity", "the Sahara", "tea", "bicycles", "rainbows",
    "octopuses", "the printing press", "coffee", "mountains", "libraries", "penguins", "trains", "tulips",
    "lightning", "pyramids", "football", "rivers", "owls", "cheese", "satellites", "forests",
]  # fmt: skip


def prompts(n: int) -> list[str]:
    return [
        f"Write two sentences about {TOPICS[i % len(TOPICS)]}." + " Be brief." * (i // len(TOPICS)) for i in range(n)
    ]


def one(client: OpenAI, prompt: str, max_tokens: int) -> tuple[str, int, float]:
    start = time.perf_counter()
    resp = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0
    )
    return resp.choices[0].message.content, resp.usage.completion_tokens, time.perf_counter() - start


def level(client: OpenAI, clients: int, items: list[str], max_tokens: int) -> tuple[dict, list[str]]:
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda p: one(client, p, max_tokens), items))
    wall = time.perf_counter() - start
    latencies = sorted(r[2] for r in results)
    tokens = sum(r[1] for r in results)
    summary = {
        "clients": clients,
        "requests": len(items),
        "completion_tokens": tokens,
        "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 2),
        "latency_p50_s": round(statistics.median(latencies), 3),
        "latency_p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 3),
    }
    return summary, [r[0] for r in results]


def batch_stats(url: str) -> dict:
    """How many batches the server ran and their mean size (from /metrics): a low mean at 32 clients
    means requests missed the batching window, not that batched compute is slow."""
    import httpx

    values = {}
    for line in httpx.get(url.rstrip("/") + "/metrics").text.splitlines():
        if line.startswith(("protege_batch_size_sum", "protege_batch_size_count")):
            name, value = line.split()[0], float(line.split()[-1])
            values[name.removeprefix("protege_batch_size_")] = value
    count = values.get("count", 0)
    return {"batches": int(count), "mean_rows": round(values.get("sum", 0) / count, 2) if count else 0}


def summary_lines(rows: list[dict], baseline_tps: float, max_tokens: int, dtype: str, host: dict) -> list[str]:
    """Markdown table for the README: the ratio column is against one-at-a-time (1 client, measured
    before and after the batched levels in the same run)."""
    lines = [
        f"Greedy chat, {MODEL}, max_tokens={max_tokens}, {dtype} (as the server reports it); "
        f"host: {describe_host(host)}. "
        f"Baseline: one request at a time ({baseline_tps:.1f} tok/s, mean of before and after).",
        "",
        "| clients | tok/s | p50 latency (s) | p95 latency (s) | vs one-at-a-time |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = r["tokens_per_s"] / baseline_tps
        lines.append(
            f"| {r['clients']} | {r['tokens_per_s']:.1f} | {r['latency_p50_s']:.2f} | {r['latency_p95_s']:.2f} "
            f"| {ratio:.2f}x |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests-per-client", type=int, default=2, help="Requests each of the 32 clients sends.")
    parser.add_argument("--baseline-requests", type=int, default=12, help="Requests sent one at a time.")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()

    total = 32 * args.requests_per_client
    items = prompts(total)
    with ServerProcess(MODEL, extra_args=["--max-batch-size", "32"]) as srv:
        client = OpenAI(base_url=srv.base_url, api_key="none", max_retries=0, timeout=600)
        one(client, "warm up", 4)
        base, base_texts = level(client, 1, items[: args.baseline_requests], args.max_tokens)
        rows = [base]
        mismatches = 0
        for clients in (8, 32):
            n = total if clients == 32 else max(16, args.baseline_requests)
            summary, texts = level(client, clients, items[:n], args.max_tokens)
            mismatches += sum(a != b for a, b in zip(texts, base_texts, strict=False))
            rows.append(summary)
        # The machine may be shared: one-at-a-time again after the batched levels, so the ratio
        # uses a baseline that spans the same period.
        after, texts = level(client, 1, items[: args.baseline_requests], args.max_tokens)
        mismatches += sum(a != b for a, b in zip(texts, base_texts, strict=True))
        batches = batch_stats(srv.url)
        dtype = httpx.get(f"{srv.url}/health").json()["dtype"]
    baseline_tps = (base["tokens_per_s"] + after["tokens_per_s"]) / 2
    ratio = rows[-1]["tokens_per_s"] / baseline_tps
    result = {
        "model": MODEL,
        "max_tokens": args.max_tokens,
        "cpu_count": os.cpu_count(),
        "dtype": dtype,
        "host": host_info(),
        "levels": rows,
        "baseline_after": after,
        "baseline_tokens_per_s": round(baseline_tps, 2),
        "throughput_ratio_32_vs_1": round(ratio, 2),
        "throughput_ratio_8_vs_1": round(rows[1]["tokens_per_s"] / baseline_tps, 2),
        "target_ratio": 4.0,
        "greedy_mismatches_vs_one_at_a_time": mismatches,
        "generate_batches": batches,
        "note": "one-at-a-time baseline measured before and after in the same run (mean); the machine may be "
        "shared, compare ratios only",
    }
    result["summary"] = summary_lines(rows, baseline_tps, args.max_tokens, dtype, result["host"])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        print(
            f"{r['clients']:>3} clients: {r['tokens_per_s']:>7.1f} tok/s  "
            f"p50 {r['latency_p50_s']:.2f}s  p95 {r['latency_p95_s']:.2f}s  ({r['requests']} requests)"
        )
    print(f"32 clients vs one at a time: {ratio:.1f}x (target >= 4x); greedy mismatches: {mismatches}")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
