"""`protege export`: a thin wrapper over `protege.serve.export.run_export`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from protege.cli_options import JsonOpt, WorkspaceOpt


def export_cmd(
    model: Annotated[str, typer.Argument(help="Training run name, adapter folder, model folder or registry name.")],
    fmt: Annotated[str, typer.Option("--format", help="hf | gguf | ollama | vllm")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write (must not exist, or be empty).")],
    quant: Annotated[str | None, typer.Option("--quant", help="gguf / ollama weights: f16 (default) | q8_0")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Model name for Ollama / vLLM (default: MODEL's).")] = None,
    prompts: Annotated[
        Path | None,
        typer.Option("--prompts", help="JSONL/CSV of prompts for the check (default: 20 built-in prompts)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace --out if it exists.")] = False,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="Torch CPU threads for the check.")] = None,
    workspace_: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Export a model or training run for llama.cpp, Ollama, vLLM or Hugging Face, checked on export."""
    from protege.cli_options import GLOBAL, print_json, workspace
    from protege.errors import DataError
    from protege.log import console
    from protege.serve.export import run_export

    result = run_export(
        model,
        fmt,
        out,
        quant,
        workspace=lambda: workspace(workspace_ or GLOBAL["workspace"]),
        prompts=prompts,
        name=name,
        force=force,
        threads=threads,
    )
    if as_json:
        print_json(result.summary())
    else:
        console.print(f"[green]exported[/] {model} -> {result.path} ({result.format}, {result.seconds:.1f}s)")
        if result.check:
            c = result.check
            limit = f"tolerance {c['logit_tolerance']:.0e}" if c["logit_tolerance"] else "not gated"
            console.print(
                f"check {'passed' if c['passed'] else '[red]FAILED[/]'}: token agreement {c['token_agreement']:.1%} "
                f"(required {c['min_token_agreement']:.0%}) over {c['prompts']} prompts, free-running "
                f"{c['free_running_agreement']:.1%}; max logit diff {c['max_abs_logit_diff']:.3g} "
                f"({c['relative_logit_diff']:.1e} of scale, {limit})"
            )
        for command in result.commands.values():
            console.print(f"  {command}")
        for note in result.notes:
            console.print(f"[dim]note: {note}[/]")
    if not result.passed:
        raise DataError(f"the exported {result.format} does not answer like {model}; see {out}/export.json")
