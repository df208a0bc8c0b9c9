"""`protege serve`: an OpenAI-compatible server for a model, a training run or a LoRA adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from protege.errors import UserError
from protege.serve.limits import DEFAULT_MAX_BODY_MB

# OMP_WAIT_POLICY is left to the OpenMP default (a short spin, then sleep). Measured on 2 idle cores,
# 54-token prompt: one-token answer 420 ms (default) vs 550 ms (PASSIVE) vs 345 ms (ACTIVE); a
# constrained choice 615 vs 900 vs 525 ms. ACTIVE starves other processes (an idle teacher server
# spinning beside training); PASSIVE pays a wake-up on every parallel region. On an oversubscribed
# machine, export OMP_WAIT_POLICY=PASSIVE before `protege serve`.


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the top-level app (panel: serve)."""
    from protege.serve.export.cli import export_cmd

    app.command("serve", rich_help_panel="serve")(serve)
    app.command("export", rich_help_panel="serve")(export_cmd)


def serve(
    model: Annotated[
        str, typer.Argument(help="Registry name, model folder, adapter folder, .gguf, hub id or run name.")
    ],
    adapter: Annotated[
        list[str] | None, typer.Option("--adapter", help="NAME=PATH of a LoRA adapter on the same base (repeatable).")
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="PROTEGE_API_KEY",
            help="Require this bearer key on /v1 (prefer the env var: a flag is visible in `ps`).",
        ),
    ] = None,
    admin_key: Annotated[
        str | None,
        typer.Option(
            "--admin-key",
            envvar="PROTEGE_ADMIN_KEY",
            help="Enable POST/DELETE /v1/adapters behind this bearer key (without it they do not exist).",
        ),
    ] = None,
    adapter_dir: Annotated[
        list[Path] | None,
        typer.Option("--adapter-dir", help="Folder POST /v1/adapters may load adapters from (repeatable)."),
    ] = None,
    allow_hub_adapters: Annotated[
        bool, typer.Option(help="Let POST /v1/adapters download adapters from the Hugging Face hub.")
    ] = False,
    max_body_mb: Annotated[
        float, typer.Option(min=0.001, help="Refuse request bodies over this many MiB with 413.")
    ] = DEFAULT_MAX_BODY_MB,
    max_batch_size: Annotated[int, typer.Option(min=1, help="Most sequences in one batch.")] = 32,
    max_queue: Annotated[int, typer.Option(min=1, help="Most requests in flight before answering 503.")] = 256,
    batch_wait_ms: Annotated[float, typer.Option(min=0, help="How long to wait for a batch to fill.")] = 10.0,
    dtype: Annotated[
        str, typer.Option(help="auto | float32 | bfloat16 (auto: float32 on CPU so batching never changes answers).")
    ] = "auto",
    threads: Annotated[int | None, typer.Option(min=1, help="Torch CPU threads (default: all cores).")] = None,
    access_log: Annotated[bool, typer.Option(help="Log every HTTP request.")] = False,
    merge: Annotated[
        bool, typer.Option(help="Fold the adapter given as MODEL into the base weights: ~20% faster, base not served.")
    ] = False,
) -> None:
    """Serve MODEL (and adapters) behind OpenAI's /v1/chat/completions, /v1/completions and /v1/models."""
    from protege.cli_options import workspace
    from protege.log import console
    from protege.serve.admin import AdminPolicy
    from protege.serve.app import build_engine, run_server

    adapters = dict(_parse_adapter(a) for a in adapter or [])
    if (adapter_dir or allow_hub_adapters) and not admin_key:
        raise UserError("--adapter-dir and --allow-hub-adapters need --admin-key (or PROTEGE_ADMIN_KEY)")
    for folder in adapter_dir or []:
        if not folder.is_dir():
            raise UserError(f"--adapter-dir {folder}: not a folder")
    admin = AdminPolicy(admin_key, tuple(adapter_dir or ()), allow_hub_adapters) if admin_key else None
    engine = build_engine(
        model,
        adapters,
        dtype=dtype,
        max_batch_size=max_batch_size,
        max_queue=max_queue,
        batch_wait_ms=batch_wait_ms,
        threads=threads,
        merge=merge,
        workspace=workspace,  # opened only if MODEL names a training run
    )
    names = ", ".join(c["id"] for c in engine.model_cards())
    console.print(f"[green]serving[/] {names} on http://{host}:{port}/v1 ({str(engine.dtype).replace('torch.', '')})")
    run_server(engine, host, port, api_key, access_log, admin, int(max_body_mb * 2**20))


def _parse_adapter(spec: str) -> tuple[str, Path]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise UserError(f"--adapter {spec!r}: expected NAME=PATH")
    return name, Path(path)
