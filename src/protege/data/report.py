"""What `protege data stats/show/list` print: the figures (plain dicts, also the --json output)
and their rich rendering on stdout."""

from __future__ import annotations

import datetime
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from protege.data import quality
from protege.data.records import Record

BAR = 40


def dataset_stats(records: list[Record], model: str | None = None, max_length: int | None = None) -> dict[str, Any]:
    """Counts, label distribution, turns and length statistics (tokens with `model`, else characters)."""
    out: dict[str, Any] = {
        "records": len(records),
        "splits": dict(Counter(r.split or "(none)" for r in records)),
        "review": dict(Counter(r.review for r in records)),
        "labels": quality.label_distribution(records),
        "turns": dict(sorted(Counter(len(r.messages) for r in records).items())),
        "exact_duplicates": sum(len(g) - 1 for g in quality.exact_duplicates(records)),
    }
    if model:
        from protege.models import load_tokenizer, resolve_model

        resolved = resolve_model(model)
        tok = load_tokenizer(resolved)
        window = max_length or quality.context_window(tok, resolved.base.path if resolved.is_adapter else resolved.path)
        out["lengths"] = quality.length_stats(quality.token_lengths(records, tok), window)
        out["length_unit"] = "tokens"
        out["model"] = model
    else:
        out["lengths"] = quality.length_stats(quality.char_lengths(records), max_length)
        out["length_unit"] = "characters"
    return out


def _bar(count: int, largest: int) -> str:
    return "█" * max(1 if count else 0, round(BAR * count / max(largest, 1)))


def print_stats(stats: dict[str, Any]) -> None:
    con = Console()
    head = Table.grid(padding=(0, 2))
    head.add_row("dataset", str(stats.get("dataset", "")))
    head.add_row("records", str(stats["records"]))
    head.add_row("splits", ", ".join(f"{k} {v}" for k, v in stats["splits"].items()))
    head.add_row("review", ", ".join(f"{k} {v}" for k, v in stats["review"].items()))
    head.add_row("turns", ", ".join(f"{k}: {v}" for k, v in stats["turns"].items()))
    head.add_row("exact duplicates", str(stats["exact_duplicates"]))
    con.print(head)
    labels = stats["labels"]
    if labels and list(labels) != ["(none)"]:
        table = Table("label", "count", "share", "", title="labels", title_justify="left")
        top = max(labels.values())
        for label, count in labels.items():
            table.add_row(label, str(count), f"{count / stats['records']:.1%}", _bar(count, top))
        con.print(table)
    lengths = stats["lengths"]
    if lengths.get("count"):
        unit = stats["length_unit"]
        con.print(
            f"length ({unit}): mean {lengths['mean']}, min {lengths['min']}, p50 {lengths['p50']}, "
            f"p90 {lengths['p90']}, p99 {lengths['p99']}, max {lengths['max']}"
        )
        table = Table(unit, "count", "", title="length histogram", title_justify="left")
        top = max(h["count"] for h in lengths["histogram"])
        for h in lengths["histogram"]:
            table.add_row(f"{h['from']}-{h['to']}", str(h["count"]), _bar(h["count"], top))
        con.print(table)
        if "over_max_length" in lengths:
            over = lengths["over_max_length"]
            style = "red" if over else "green"
            con.print(f"[{style}]{len(over)} records over max length {lengths['max_length']}[/] {over[:20]}")


def print_records(records: list[Record], indices: list[int]) -> None:
    con = Console()
    colours = {"system": "magenta", "user": "cyan", "assistant": "green"}
    for i in indices:
        r = records[i]
        body = "\n".join(f"[{colours[m.role]}]{m.role}:[/] {_escape(m.content)}" for m in r.messages)
        info = [f"label={r.label}"] if r.label is not None else []
        info += [f"review={r.review}"] + ([f"split={r.split}"] if r.split else [])
        src = r.provenance.get("source")
        if src:
            info.append(f"{src}:{r.provenance.get('line')}")
        con.print(Panel(body, title=f"#{i}", subtitle=" ".join(info), title_align="left", subtitle_align="left"))
    if not indices:
        con.print("no matching records")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def print_datasets(rows: list[dict[str, Any]]) -> None:
    table = Table("name", "version", "records", "source", "parents", "created")
    by_id = {r["id"]: f"{r['name']}@{r['version']}" for r in rows}
    for r in rows:
        src = r["source"] or {}
        what = src.get("kind", "")
        if what == "import":
            what += f" {Path(str(src.get('file', ''))).name}"
        parents = ", ".join(by_id.get(p, str(p)) for p in r["parents"] or [])
        created = datetime.datetime.fromtimestamp(r["created_at"]).strftime("%Y-%m-%d %H:%M")
        table.add_row(r["name"], str(r["version"]), str(r["n_records"]), what, parents, created)
    Console().print(table)
