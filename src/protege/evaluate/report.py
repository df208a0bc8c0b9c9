"""`protege report RUN`: one self-contained HTML file and a Markdown summary of an eval (or train) run.

Plots are matplotlib PNGs embedded as base64 data URIs, so the file can be mailed or attached to a
ticket and opens anywhere without the workspace or a network.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from protege.errors import UserError
from protege.evaluate.answers import file_safe
from protege.workspace import Workspace


# ---- data -------------------------------------------------------------------------------------------
def loss_history(folder: str | Path | None) -> list[tuple[float, float]]:
    """(step, loss) pairs from a training output folder: metrics.json or trainer_state.json log history."""
    if not folder or not Path(folder).is_dir():
        return []
    folder = Path(folder)
    candidates = [folder / "metrics.json", folder / "trainer_state.json"]
    candidates += sorted(folder.glob("checkpoint-*/trainer_state.json"), reverse=True)
    for path in candidates:
        if path.exists():
            points = _points(json.loads(path.read_text()))
            if points:
                return points
    return []


def _points(data: Any) -> list[tuple[float, float]]:
    if isinstance(data, dict):
        for key in ("log_history", "loss_history", "losses", "loss_curve", "train_loss_history", "history"):
            if key in data:
                pts = _points(data[key])
                if pts:
                    return pts
        return []
    if not isinstance(data, list):
        return []
    out = []
    for i, item in enumerate(data):
        if isinstance(item, dict) and isinstance(item.get("loss"), int | float):
            out.append((float(item.get("step", item.get("epoch", i))), float(item["loss"])))
        elif isinstance(item, list | tuple) and len(item) == 2:
            out.append((float(item[0]), float(item[1])))
        elif isinstance(item, int | float):
            out.append((float(i + 1), float(item)))
    return out


def training_folders(ws: Workspace, run: dict[str, Any]) -> dict[str, str]:
    """label -> training output folder, for the evaluated models that came from a training run."""
    if run["kind"] == "train":
        return {run["name"]: str(ws.resolve(run["output_dir"]))} if run.get("output_dir") else {}
    out = {}
    for label, src in ((run.get("config") or {}).get("models") or {}).items():
        train = ws.store.get_run(src)
        if train and train["kind"] == "train" and train.get("output_dir"):
            out[label] = str(ws.resolve(train["output_dir"]))
        elif Path(src).is_dir() and (Path(src) / "adapter_config.json").exists():
            out[label] = src
    return out


# ---- plots ------------------------------------------------------------------------------------------
def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_scores(models: dict[str, dict[str, Any]], majority: dict[str, Any] | None = None) -> str:
    plt = _plt()
    labels = list(models)
    scores = [models[m]["score"] for m in labels]
    lo = [s - models[m]["score_ci"][0] for s, m in zip(scores, labels, strict=True)]
    hi = [models[m]["score_ci"][1] - s for s, m in zip(scores, labels, strict=True)]
    fig, ax = plt.subplots(figsize=(1.4 * len(labels) + 2, 3.2))
    ax.bar(labels, scores, yerr=[lo, hi], capsize=6, color="#4C78A8")
    if majority:
        ax.axhline(majority["score"], color="#E15759", linestyle="--", label=f"always {majority['label']!r}")
        ax.legend(loc="upper right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(models[labels[0]].get("score_name", "score"))
    ax.set_title("score (95% bootstrap interval)")
    return _png(fig)


def plot_latency(models: dict[str, dict[str, Any]]) -> str:
    plt = _plt()
    import numpy as np

    labels = list(models)
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(1.4 * len(labels) + 2, 3.2))
    ax.bar(x - 0.2, [models[m]["latency_p50_ms"] for m in labels], 0.4, label="p50", color="#59A14F")
    ax.bar(x + 0.2, [models[m]["latency_p95_ms"] for m in labels], 0.4, label="p95", color="#F28E2B")
    ax.set_xticks(x, labels)
    ax.set_ylabel("ms per request")
    ax.set_title("latency")
    ax.legend()
    return _png(fig)


def plot_cost(models: dict[str, dict[str, Any]]) -> str:
    plt = _plt()
    labels = list(models)
    fig, ax = plt.subplots(figsize=(1.4 * len(labels) + 2, 3.2))
    ax.bar(labels, [models[m]["cost_per_1k"] for m in labels], color="#B07AA1")
    ax.set_ylabel("$ per 1,000 requests")
    ax.set_title("cost")
    return _png(fig)


def plot_confusion(label: str, confusion: dict[str, Any]) -> str:
    plt = _plt()
    matrix = confusion["matrix"]
    fig, ax = plt.subplots(figsize=(0.8 * len(confusion["cols"]) + 2, 0.7 * len(confusion["rows"]) + 1.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(confusion["cols"])), confusion["cols"], rotation=45, ha="right")
    ax.set_yticks(range(len(confusion["rows"])), confusion["rows"])
    peak = max((max(r) for r in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > peak / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(label)
    return _png(fig)


def plot_loss(curves: dict[str, list[tuple[float, float]]]) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for label, pts in curves.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("training loss")
    ax.legend()
    return _png(fig)


# ---- tables -----------------------------------------------------------------------------------------
def comparison_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model, then the majority-class baseline for label tasks: what the CLI table, the
    Markdown and the HTML all show."""
    rows = []
    for label, m in summary.get("models", {}).items():
        rows.append(
            {
                "model": label,
                "source": m.get("source"),
                m.get("score_name", "score"): m["score"],
                "ci95": _ci(m["score_ci"]),
                **({"macro_f1": m["macro_f1"]} if "macro_f1" in m else {}),
                **({"vs_majority": m["vs_majority"]} if "vs_majority" in m else {}),
                **({"exact_match": m["exact_match"]} if "exact_match" in m else {}),
                **({"win_rate": m["judge"]["win_rate"]} if "judge" in m else {}),
                **({"judge_invalid": m["judge"].get("invalid_rate")} if "judge" in m else {}),
                "vs_ref": m.get("score_vs_reference"),
                "p50_ms": m["latency_p50_ms"],
                "p95_ms": m["latency_p95_ms"],
                "speedup": m.get("speedup_vs_reference"),
                "prompt_tok": m["prompt_tokens_mean"],
                "cost_per_1k": m["cost_per_1k"],
            }
        )
    if majority := summary.get("majority"):
        rows.append(majority_table_row(majority))
    return rows


def majority_table_row(majority: dict[str, Any]) -> dict[str, Any]:
    """The baseline as a table row: always answering the most frequent training label."""
    return {
        "model": f"majority (always {majority['label']!r})",
        "source": f"most frequent label of {majority['source']}",
        majority.get("score_name", "accuracy"): majority["score"],
        "ci95": _ci(majority["score_ci"]),
        "macro_f1": majority["macro_f1"],
    }


def baseline_notes(summary: dict[str, Any]) -> list[str]:
    """Sentences under every table: what the majority row is, which models do no better than it, and
    how many judge verdicts could not be read."""
    notes = []
    if majority := summary.get("majority"):
        notes.append(
            f"Majority baseline: always answering {majority['label']!r}, the most frequent label of "
            f"{majority['source']}: accuracy {majority['score']:.3f}, macro-F1 {majority['macro_f1']:.3f}."
        )
    for label, m in summary.get("models", {}).items():
        relation = m.get("vs_majority") if majority else None  # none in runs stored before the baseline
        if relation == "same as majority":
            notes.append(
                f"{label}: accuracy {m['score']:.3f} ({_ci(m['score_ci'])}) is indistinguishable from the majority "
                f"baseline's {majority['score']:.3f}: no evidence it knows more than the label counts."
            )
        elif relation == "below":
            notes.append(
                f"{label}: accuracy {m['score']:.3f} is below the majority baseline's {majority['score']:.3f}."
            )
        if (judged := m.get("judge")) and judged.get("invalid"):
            notes.append(
                f"{label}: the judge's verdict was unreadable for {judged['invalid']} of {judged['judged']} records "
                f"({judged['invalid_rate']:.0%}); its win rate counts only the others."
            )
    return notes


def _ci(ci: list[float] | None) -> str | None:
    return f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else None


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) < 1:
            return f"{value:.4f}"
        # ratios (vs_ref 1.04, speedup 4.29) need their second decimal; milliseconds do not
        return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def markdown(run: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    summary = run.get("metrics") or {}
    lines = [f"# {run['name']} ({run['kind']})", ""]
    if run["kind"] == "eval":
        lines += [
            f"Task `{summary.get('task')}` ({summary.get('kind')}), dataset `{summary.get('data')}`, "
            f"{summary.get('n')} records; reference model: `{summary.get('reference')}`.",
            "",
        ]
    if rows:
        cols = list(dict.fromkeys(k for r in rows for k in r))
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    elif run.get("metrics"):
        lines += ["```json", json.dumps(run["metrics"], indent=2, default=str)[:4000], "```"]
    lines += [f"\n{note}" for note in baseline_notes(summary)]
    lines += [
        "",
        "Cost basis: " + "; ".join(f"{k}: {m.get('cost_basis')}" for k, m in summary.get("models", {}).items()),
    ]
    return "\n".join(lines) + "\n"


def _html_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(title: str, png: str) -> str:
    alt = html.escape(title)
    return f'<figure><img alt="{alt}" src="data:image/png;base64,{png}"><figcaption>{alt}</figcaption></figure>'


CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
    "th{background:#f3f3f3}figure{display:inline-block;margin:0.5em}img{max-width:100%}"
)


def render_html(run: dict[str, Any], rows: list[dict[str, Any]], figures: list[tuple[str, str]]) -> str:
    summary = run.get("metrics") or {}
    intro = html.escape(markdown(run, []).splitlines()[2].replace("`", "")) if run["kind"] == "eval" else ""
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>protege report: {html.escape(run['name'])}</title>",
        f"<style>{CSS}</style></head><body><h1>{html.escape(run['name'])}</h1><p>{intro}</p>",
        _html_table(rows),
        "".join(f"<p>{html.escape(note)}</p>" for note in baseline_notes(summary)),
        "".join(_img(t, p) for t, p in figures),
    ]
    if summary and not rows:
        parts.append(f"<pre>{html.escape(json.dumps(summary, indent=2, default=str)[:20000])}</pre>")
    return "".join(parts) + "</body></html>"


# ---- the command -----------------------------------------------------------------------------------
def figures_for(ws: Workspace, run: dict[str, Any]) -> list[tuple[str, str]]:
    models = (run.get("metrics") or {}).get("models") or {}
    figs: list[tuple[str, str]] = []
    if models:
        majority = (run.get("metrics") or {}).get("majority")
        figs += [
            ("score", plot_scores(models, majority)),
            ("latency", plot_latency(models)),
            ("cost", plot_cost(models)),
        ]
        figs += [(f"confusion: {k}", plot_confusion(k, m["confusion"])) for k, m in models.items() if "confusion" in m]
    curves = {k: pts for k, folder in training_folders(ws, run).items() if (pts := loss_history(folder))}
    if curves:
        figs.append(("training loss", plot_loss(curves)))
    return figs


def get_run(ws: Workspace, name: str) -> dict[str, Any]:
    run = ws.store.get_run(name)
    if run is None:
        known = [r["name"] for r in ws.store.query("SELECT name FROM runs ORDER BY id DESC LIMIT 10")]
        raise UserError(f"unknown run {name!r}; recent: {', '.join(known) or 'none'}")
    return run


def combined_run(ws: Workspace, names: list[str]) -> dict[str, Any]:
    """Several eval runs over the same records as one run whose models are RUN/LABEL, so a student
    retrained last week and today's sit in one table (each `vs_ref` stays against its own run's
    reference). Runs over different records are refused: their scores are not comparable."""
    runs = [get_run(ws, n) for n in names]
    if other := [r["name"] for r in runs if r["kind"] != "eval"]:
        raise UserError(f"only eval runs can be compared; not eval: {', '.join(other)}")
    first = runs[0]["metrics"] or {}
    scope = ("task", "data", "n")
    for run in runs[1:]:
        m = run["metrics"] or {}
        if any(m.get(k) != first.get(k) for k in scope):
            theirs, ours = ({k: x.get(k) for k in scope} for x in (m, first))
            raise UserError(f"runs {runs[0]['name']!r} {ours} and {run['name']!r} {theirs} scored different records")
    models, sources = {}, {}
    for r in runs:
        for label, m in ((r["metrics"] or {}).get("models") or {}).items():
            models[f"{r['name']}/{label}"] = m
            sources[f"{r['name']}/{label}"] = ((r.get("config") or {}).get("models") or {}).get(label, m.get("source"))
    metrics = {**first, "models": models, "reference": "each run's own"}
    return {"name": " vs ".join(names), "kind": "eval", "metrics": metrics, "config": {"models": sources}}


def write_report(ws: Workspace, run_name: str | list[str], out: str | Path | None = None) -> dict[str, str]:
    """Writes RUN's HTML report (default: the run's folder / report.html) and report.md beside it.
    Several eval run names give one comparison report (default: artifacts/reports/compare-...);
    rounds runs (`protege rounds`) give their score-vs-labels curves, several in one plot."""
    names = [run_name] if isinstance(run_name, str) else list(run_name)
    if get_run(ws, names[0])["kind"] == "rounds":  # predict -> review -> retrain: score against labels spent
        from protege.evaluate.rounds_report import write_rounds_report

        return write_rounds_report(ws, names, out)
    run = get_run(ws, names[0]) if len(names) == 1 else combined_run(ws, names)
    rows = comparison_rows(run.get("metrics") or {}) if run["kind"] == "eval" else []
    if run.get("output_dir"):
        default = ws.resolve(run["output_dir"]) / "report.html"
    else:
        slug = "-".join(file_safe(n) for n in names)[:120]
        default = ws.artifacts / "reports" / (f"compare-{slug}.html" if len(names) > 1 else f"{slug}.html")
    out_path = Path(out) if out else default
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(render_html(run, rows, figures_for(ws, run)))
    md_path = out_path.with_suffix(".md")
    md_path.write_text(markdown(run, rows))
    return {"html": str(out_path), "markdown": str(md_path)}
