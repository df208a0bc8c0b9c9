"""Library entry points behind `protege serve`: resolve what to serve, build the engine, run uvicorn.

In-process use (tests, notebooks): `engine = build_engine("smollm2-135m-instruct")`,
`app = create_app(engine)`; everything else talks to the server over HTTP (see launch.py).
"""

from __future__ import annotations

from pathlib import Path

from protege.errors import UserError
from protege.models.load import ResolvedModel, resolve_model
from protege.serve.engine import Engine


def resolve_target(model: str) -> ResolvedModel:
    """MODEL as the registry/folder/hub resolver understands it, else a training run of that name
    in the workspace (its output folder)."""
    try:
        return resolve_model(model)
    except UserError as first:
        from protege.cli import workspace

        run = workspace().store.get_run(model)
        if not run or not run.get("output_dir"):
            raise first from None
        folder = workspace().resolve(run["output_dir"])
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
) -> Engine:
    """The base answers to MODEL as given and to its resolved name; an adapter passed as MODEL is
    served over its base and is the default model, under MODEL's name. `merge` folds that adapter
    into the base weights (faster; the base is then not served)."""
    target = resolve_target(model)
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


def run_server(engine: Engine, host: str, port: int, api_key: str | None = None, access_log: bool = False) -> None:
    import uvicorn

    from protege.serve.server import create_app

    app = create_app(engine, api_key)
    try:
        uvicorn.run(app, host=host, port=port, access_log=access_log, log_level="warning")
    finally:
        engine.close()
