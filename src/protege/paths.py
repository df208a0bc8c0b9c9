"""Where things live on disk. Environment variables make every location overridable, so tests
are hermetic (the simonw/llm pattern): PROTEGE_WORKSPACE for the workspace, PROTEGE_CACHE for
pulled models and downloaded wheels, PROTEGE_SHARED_DATA for the shared public datasets.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_workspace() -> Path:
    return Path(os.environ.get("PROTEGE_WORKSPACE") or "./protege-workspace")


def cache_dir() -> Path:
    root = os.environ.get("PROTEGE_CACHE") or Path.home() / ".cache" / "protege"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir() -> Path:
    path = cache_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def wheels_dir() -> Path:
    path = cache_dir() / "wheels"
    path.mkdir(parents=True, exist_ok=True)
    return path


def shared_data_dir() -> Path | None:
    """The real public data, or None where absent: `$PROTEGE_SHARED_DATA` when it is set (and then
    nothing else, so an empty folder there means "none", as a test of a missing dependency needs),
    else `shared/data` beside the project or beside the current folder."""
    env = os.environ.get("PROTEGE_SHARED_DATA")
    if env:
        candidates = [Path(env)]
    else:
        here = Path(__file__).resolve()
        candidates = [p.parent / "shared" / "data" for p in here.parents]
        candidates.append(Path.cwd().parent / "shared" / "data")
    return next((c for c in candidates if (c / "README.md").exists()), None)
