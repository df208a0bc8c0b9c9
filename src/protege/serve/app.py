"""Library entry points behind `protege serve`: resolve what to serve, build the engine, run uvicorn.

In-process use (tests, notebooks): `engine = build_engine("smollm2-135m-instruct")`,
`app = create_app(engine)`; everything else talks to the server over HTTP (see launch.py).
The workspace (for training-run names) is passed in by the caller, never read from the CLI.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from protege.errors import UserError
from protege.models.load import ResolvedModel, resolve_model
from protege.serve.admin import AdminPolicy
from protege.serve.engine import Engine
from protege.serve.limits import DEFAULT_MAX_BODY_MB
from protege.workspace import Workspace

WorkspaceSource = Workspace | Callable[[], Workspace] | None
"""A workspace, or a function that opens it (called only when MODEL names a training run, so serving
a model or a folder never creates a workspace)."""


def resolve_target(model: str, workspace: WorkspaceSource = None) -> ResolvedModel:
    """MODEL as the registry/folder/hub resolver understands it, else a training run of that name
    in the workspace passed in (its output folder)."""
    try:
        return resolve_model(model)
    except UserError as first:
        if workspace is None:
            raise
        ws = workspace() if callable(workspace) else workspace
        run = ws.store.get_run(model)
        if not run or not run.get("output_dir"):
            raise first from None
        folder = ws.resolve(run["output_dir"])
        if not Path(folder).exists():
            raise UserError(f"run {model!r}: its output folder {folder} is missing") from None
        return resolve_model(folder)


def build_engine(
    model: str,
    adapters: dict[str, str | Path] | None = None,
    dtype: str = "auto",
    max_batch_size: int = 32,
    max_queue: int = 256,
    batch_wait_ms: float = 10.0,
    threads: int | None = None,
    merge: bool = False,
    workspace: WorkspaceSource = None,
) -> Engine:
    """The base answers to MODEL as given and to its resolved name; an adapter passed as MODEL is
    served over its base and is the default model, under MODEL's name. `merge` folds that adapter
    into the base weights (faster; the base is then not served). `workspace` is where a MODEL that
    names a training run is looked up."""
    target = resolve_target(model, workspace)
    adapters = dict(adapters or {})
    if merge and (not target.is_adapter or adapters):
        raise UserError("--merge serves one adapter folded into its base: give an adapter as MODEL and no --adapter")
    if target.is_adapter:
        base = target.base
        names = [base.name, str(base.path)]
        adapters = {model: target.path, **adapters}
        default = model
    else:
        base = target
        names = [model, target.name, str(target.path)]
        default = model
    return Engine(
        base,
        names,
        adapters,
        dtype=dtype,  # `auto`: float32 on CPU (models.precision.inference_dtype)
        max_batch_size=max_batch_size,
        max_queue=max_queue,
        batch_wait_ms=batch_wait_ms,
        default_model=default,
        threads=threads,
        merge=merge,
    )


def run_server(
    engine: Engine,
    host: str,
    port: int,
    api_key: str | None = None,
    access_log: bool = False,
    admin: AdminPolicy | None = None,
    max_body_bytes: int = int(DEFAULT_MAX_BODY_MB * 2**20),
) -> None:
    import uvicorn

    from protege.serve.server import create_app

    app = create_app(engine, api_key, admin=admin, max_body_bytes=max_body_bytes)
    try:
        uvicorn.run(app, host=host, port=port, access_log=access_log, log_level="warning")
    finally:
        engine.close()
