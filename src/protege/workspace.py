"""A workspace is a folder: `protege.yaml` (config), `protege.db` (SQLite), `artifacts/`.

Every command takes `--workspace`; the default is `$PROTEGE_WORKSPACE` or `./protege-workspace`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from protege.config import WorkspaceConfig, load_yaml_model
from protege.errors import UserError
from protege.paths import default_workspace
from protege.store import Store

CONFIG_NAME = "protege.yaml"
DB_NAME = "protege.db"

DEFAULT_CONFIG = """\
# protege workspace configuration. Docs: docs/interfaces.md
teachers:
  local:
    base_url: http://127.0.0.1:8000/v1   # any OpenAI-compatible endpoint
    model: smollm2-135m-instruct
    api_key_env: PROTEGE_TEACHER_KEY     # name of the variable, never the key itself
    price: {input_per_1m: 0.0, output_per_1m: 0.0}
    terms: null                          # provider's terms on training with its outputs
local_compute_per_hour: 0.50             # $ per hour of this machine, for local cost figures
"""


@dataclass
class Workspace:
    root: Path
    config: WorkspaceConfig
    store: Store

    @property
    def artifacts(self) -> Path:
        path = self.root / "artifacts"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def resolve(self, path: str | Path) -> Path:
        """Relative output paths (e.g. `runs/emotion-lora`) land inside the workspace."""
        p = Path(path)
        return p if p.is_absolute() else self.root / p


def init_workspace(root: str | Path | None = None) -> Workspace:
    root = (Path(root) if root else default_workspace()).resolve()
    root.mkdir(parents=True, exist_ok=True)
    (root / "artifacts").mkdir(exist_ok=True)
    cfg = root / CONFIG_NAME
    if not cfg.exists():
        cfg.write_text(DEFAULT_CONFIG)
    return open_workspace(root)


def open_workspace(root: str | Path | None = None, create: bool = True) -> Workspace:
    """Open (and, by default, create) the workspace; older databases are migrated forward."""
    # Absolute, so paths stored in the database (run outputs) mean the same from any folder.
    root = (Path(root) if root else default_workspace()).resolve()
    if not (root / CONFIG_NAME).exists():
        if not create:
            raise UserError(f"{root}: not a protege workspace (run `protege init {root}`)")
        return init_workspace(root)
    config = load_yaml_model(root / CONFIG_NAME, WorkspaceConfig)
    store = Store.open(root / DB_NAME)
    return Workspace(root=root, config=config, store=store)
