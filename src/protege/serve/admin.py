"""Admin endpoints of `protege serve`: loading and unloading adapters at run time.

They change what the server runs and read the server's disk, so they are off unless an admin key is
configured (`--admin-key` / PROTEGE_ADMIN_KEY; without one the routes do not exist: 404), they take
that key and no other, and they load adapters only from folders under `--adapter-dir` (resolved,
symlinks included, so neither `..` nor a link can leave it) or, only with `--allow-hub-adapters`,
from the Hugging Face hub. A refused path and a missing one get the same answer, so the endpoint
cannot be used to learn what exists outside the allowed folders.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request

from protege.errors import UserError
from protege.serve.engine import Engine, UnknownModel
from protege.serve.protocol import AdapterRequest, APIError

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class AdminPolicy:
    key: str
    adapter_dirs: tuple[Path, ...] = field(default_factory=tuple)
    allow_hub: bool = False

    def adapter_source(self, path: str) -> str:
        """The folder (or hub id) a load request may read, else one UserError for every refusal."""
        refused = UserError(
            f"path {path!r}: no adapter folder at that path under this server's --adapter-dir"
            + (" (nor a hub id)" if self.allow_hub else "")
        )
        if not self.adapter_dirs and not self.allow_hub:
            raise UserError("this server loads no adapters at run time: start it with --adapter-dir DIR")
        for root in self.adapter_dirs:
            found = _inside(root, path)
            if found is not None:
                return str(found)
        if self.allow_hub and HUB_ID.match(path) and ".." not in path and not Path(path).expanduser().exists():
            return path
        raise refused


def _inside(root: Path, path: str) -> Path | None:
    """`path` (relative to `root`, or absolute) resolved, when it is an adapter folder inside `root`."""
    base = root.resolve()
    try:
        found = (base / Path(path).expanduser()).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return None
    if not found.is_relative_to(base) or not (found / "adapter_config.json").is_file():
        return None
    return found


def _check_key(key: str) -> Any:
    async def check(request: Request) -> None:
        header = request.headers.get("authorization", "")
        given = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(given.encode(), key.encode()):
            raise APIError(
                401, "invalid or missing admin key (Authorization: Bearer ADMIN_KEY)", code="invalid_api_key"
            )

    return check


def admin_router(engine: Engine, policy: AdminPolicy) -> APIRouter:
    router = APIRouter(dependencies=[Depends(_check_key(policy.key))])

    @router.post("/adapters")
    async def load_adapter(body: AdapterRequest) -> dict[str, Any]:
        try:
            await engine.load_adapter(body.name, policy.adapter_source(body.path))
        except UserError as e:
            raise APIError(400, str(e), param="path") from None
        return {"id": body.name, "object": "model", "parent": engine.base_names[0], "path": engine.adapters[body.name]}

    @router.delete("/adapters/{name:path}")
    async def unload_adapter(name: str) -> dict[str, Any]:
        try:
            await engine.unload_adapter(name)
        except UnknownModel:
            raise APIError(404, f"no adapter named {name!r} is loaded", param="name", code="model_not_found") from None
        except UserError as e:
            raise APIError(400, str(e), param="name") from None
        return {"id": name, "object": "model", "deleted": True}

    return router
