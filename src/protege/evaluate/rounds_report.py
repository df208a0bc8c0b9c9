"""`protege report` of `protege rounds` runs: the score against the human labels spent, one curve per
run (uncertainty vs random order side by side), with each round's 95% interval as a band.

A rounds run stores its per-round table in the runs table (kind `rounds`), so this reads the
database only. Runs whose reviews were simulated (a gold field answering) say so in the title, the
table and every caption.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from protege.errors import UserError
from protege.evaluate.answers import file_safe
from protege.evaluate.report import CSS, _html_table, _img, _plt, _png, fmt, get_run
from protege.workspace import Workspace


def curve(run: dict[str, Any]) -> list[tuple[int, float, float, float]]:
    """(labels used, score, low, high): the starting model at 0 labels, then each round's handed-over model."""
    result = run.get("metrics") or {}
    start = result.get("start") or {}
    points = []
    if start.get("score") is not None:
        lo, hi = start.get("score_ci") or (start["score"], start["score"])
        points.append((0, start["score"], lo, hi))
    for r in result.get("rounds", []):
        if r.get("score") is not None:
            lo, hi = r.get("score_ci") or (r["score"], r["score"])
            points.append((r["labels_used"], r["score"], lo, hi))
    return points


def plot_curves(runs: list[dict[str, Any]]) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for run in runs:
        pts = curve(run)
        if not pts:
            continue
        x = [p[0] for p in pts]
        label = f"{run['name']} ({(run['metrics'] or {}).get('order', '?')})"
        ax.plot(x, [p[1] for p in pts], marker="o", label=label)
        ax.fill_between(x, [p[2] for p in pts], [p[3] for p in pts], alpha=0.15)
        majority = [(r["labels_used"], r["majority"]["score"]) for r in run["metrics"]["rounds"] if r.get("majority")]
        if majority:
            ax.plot([m[0] for m in majority], [m[1] for m in majority], linestyle=":", color="#999")
    simulated = any((r.get("metrics") or {}).get("simulated") for r in runs)
    ax.set_xlabel("human labels used" + (" (simulated: gold labels stand in for people)" if simulated else ""))
    ax.set_ylabel("eval score of the model handed over")
    ax.set_title("score vs labels (95% interval bands; dotted: majority-class baseline)")
    ax.legend(loc="lower right")
    return _png(fig)


def rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for run in runs:
        m = run.get("metrics") or {}
        for r in m.get("rounds", []):
            ci = r.get("score_ci")
            out.append({
                "run": run["name"], "order": m.get("order"), "round": r["round"], "labels used": r["labels_used"],
                "score": r["score"], "ci95": f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else None, "handed over": r["kept"],
                "candidate": r.get("candidate_score"), "majority": (r.get("majority") or {}).get("score"),
                "kappa model/human": r.get("kappa_model_human"), "edit rate": r.get("edit_rate"),
                "simulated": "simulated" if m.get("simulated") else "people",
            })  # fmt: skip
    return out


def write_rounds_report(ws: Workspace, names: list[str], out: str | Path | None = None) -> dict[str, str]:
    runs = [get_run(ws, n) for n in names]
    if other := [r["name"] for r in runs if r["kind"] != "rounds"]:
        raise UserError(f"rounds runs can only be reported with other rounds runs; not rounds: {', '.join(other)}")
    default = (
        ws.resolve(runs[0]["output_dir"]) / "report.html"
        if len(runs) == 1 and runs[0].get("output_dir")
        else ws.artifacts / "reports" / f"rounds-{'-'.join(file_safe(n) for n in names)[:120]}.html"
    )
    return render(runs, Path(out) if out else default)


def render(runs: list[dict[str, Any]], out_path: Path) -> dict[str, str]:
    """Write the HTML and Markdown of `runs` (each {name, metrics: a rounds result})."""
    table = rows(runs)
    simulated = any((r.get("metrics") or {}).get("simulated") for r in runs)
    title = " vs ".join(r["name"] for r in runs) + (" (simulated review)" if simulated else "")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    notes = [((r.get("metrics") or {}).get("start") or {}).get("why") for r in runs]
    body = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>protege report: {html.escape(title)}</title>",
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        "".join(f"<p>{html.escape(n)}</p>" for n in notes if n),
        _html_table(table),
        _img("score vs labels", plot_curves(runs)),
    ]
    if simulated:
        body.append("<p>Simulated: each record's gold label answered in place of a person.</p>")
    out_path.write_text("".join(body) + "</body></html>")
    md = out_path.with_suffix(".md")
    cols = list(table[0]) if table else []
    lines = [f"# {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in table]
    md.write_text("\n".join(lines) + "\n")
    return {"html": str(out_path), "markdown": str(md)}
