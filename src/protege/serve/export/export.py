"""`protege export`: one entry point over the formats, with the rules every format shares.

- Bad input (format, quantisation, architecture, tokenizer, chat template, an occupied --out) is
  refused before anything is written, with one line naming what is supported (exit 2).
- Everything is written into a hidden sibling folder and renamed onto --out at the end, so --out
  holds a complete export or nothing, whatever fails or is interrupted on the way.
- The check (check.py) runs on the written files; its figures go into export.json, the model card
  and the result. A failed check leaves the export in place, marked failed, for inspection
  (the CLI exits 1).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from protege import __version__
from protege.errors import UserError
from protege.log import status
from protege.serve.export import formats
from protege.serve.export.check import read_prompts
from protege.serve.export.source import Source, load_source, safe_name

FORMATS = ("hf", "gguf", "ollama", "vllm")
QUANTISED = ("gguf", "ollama")


@dataclass
class ExportResult:
    format: str
    path: Path
    quant: str | None
    source: str
    seconds: float
    files: list[str] = field(default_factory=list)
    check: dict[str, Any] | None = None
    commands: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    size_bytes: int | None = None
    """Size of `path` when it is one file (a GGUF)."""

    @property
    def passed(self) -> bool:
        return self.check is None or bool(self.check.get("passed"))

    def summary(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "path": str(self.path),
            "quant": self.quant,
            "token_agreement": self.check["token_agreement"] if self.check else None,
            "passed": self.passed,
            "source": self.source,
            "seconds": round(self.seconds, 2),
            "size_bytes": self.size_bytes,
            "check": self.check,
            "commands": self.commands,
            "notes": self.notes,
            "files": self.files,
        }


def check_options(fmt: str, quant: str | None) -> tuple[str, str | None]:
    from protege.serve.export.gguf_file import check_quant

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: supported: {', '.join(FORMATS)}")
    if fmt in QUANTISED:
        return fmt, check_quant(quant or "f16")
    if quant:
        raise UserError(f"--quant applies to --format {' and '.join(QUANTISED)}, not {fmt}")
    return fmt, None


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not force:
        raise UserError(f"--out {out}: already exists; choose another folder or pass --force to replace it")
    if not out.parent.exists():
        raise UserError(f"--out {out}: its parent folder {out.parent} does not exist")


def _refuse_early(src: Source, fmt: str) -> None:
    """The architecture, tokenizer and chat-template checks, before any weights are loaded or files written."""
    from transformers import AutoConfig

    from protege.serve.export.gguf_file import arch_of
    from protege.serve.export.gguf_vocab import read_vocab
    from protege.serve.export.template import split_turns

    if fmt in QUANTISED:
        config = AutoConfig.from_pretrained(str(src.config_path.parent))
        arch_of(config)
        read_vocab(src.tokenizer, max(config.vocab_size, len(src.tokenizer)))
    if fmt == "ollama":  # a TEMPLATE is cut from the chat template turn by turn
        split_turns(src.tokenizer)


def run_export(
    model: str,
    fmt: str,
    out: str | Path,
    quant: str | None = None,
    workspace: Any = None,
    prompts: str | Path | None = None,
    name: str | None = None,
    force: bool = False,
    max_new_tokens: int = 32,
    threads: int | None = None,
) -> ExportResult:
    """Export MODEL (run name, adapter, folder or registry name) to `out` in format `fmt`.
    `threads` sets torch's CPU threads for the check (default: torch's own choice)."""
    fmt, quant = check_options(fmt, quant)
    out = Path(out).expanduser().absolute()
    _check_out(out, force)
    prompt_list = read_prompts(Path(prompts) if prompts else None)
    src = load_source(model, workspace)
    served_name = safe_name(name) if name else src.name
    _refuse_early(src, fmt)
    if threads:
        import torch

        torch.set_num_threads(threads)
    start = time.perf_counter()
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with status(f"exporting {model} as {fmt}{f' ({quant})' if quant else ''}"):
            written = _write(src, fmt, tmp, out, quant, prompt_list, max_new_tokens, served_name)
        local = tmp / written.path.relative_to(out)
        result = ExportResult(
            format=fmt,
            path=written.path,
            quant=quant,
            source=model,
            seconds=time.perf_counter() - start,
            files=sorted({*written.files, "README.md", "export.json"}),
            check=written.check,
            commands=written.commands,
            notes=written.notes,
            size_bytes=local.stat().st_size if local.is_file() else None,
        )
        (tmp / "README.md").write_text(_card(src, result))
        (tmp / "export.json").write_text(json.dumps(result.summary(), indent=2) + "\n")
        _put_in_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def _write(src: Source, fmt: str, tmp: Path, out: Path, quant: str | None, prompts: list, max_new: int, name: str):
    if fmt == "hf":
        return formats.write_hf(src, tmp, out, prompts, max_new)
    if fmt == "gguf":
        return formats.write_gguf_file(src, tmp, out, quant, prompts, max_new)
    if fmt == "ollama":
        return formats.write_ollama(src, tmp, out, quant, prompts, max_new, name)
    return formats.write_vllm(src, tmp, out, prompts, max_new, name)


def _put_in_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder onto `out` (an existing one, with --force, is moved aside first
    and deleted only once the new one is in place)."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _card(src: Source, result: ExportResult) -> str:
    """The run's model card (provenance, data, teachers' terms) with an Export section."""
    card = src.card or f"# {src.name}\n\nExported from `{src.given}`.\n"
    when = datetime.now(UTC).isoformat(timespec="seconds")
    command = f"protege export {src.given} --format {result.format}"
    lines = ["", "## Export", "", f"`{command}` (protege {__version__}, {when}):"]
    if src.is_adapter:
        lines.append(f"- LoRA adapter (rank {src.rank}) over `{src.target.base.name}`, merged in float32 where merged.")
    lines.append("- files: " + ", ".join(f"`{f}`" for f in result.files))
    if result.quant:
        lines.append(f"- weights: {result.quant.upper()} (norms float32)")
    if result.check:
        c = result.check
        tolerance = f" (tolerance {c['logit_tolerance']:.0e})" if c["logit_tolerance"] else ""
        lines.append(
            f"- check ({'passed' if c['passed'] else 'FAILED'}): on the {c['answer_tokens']} answer tokens of "
            f"{c['prompts']} prompts, the same greedy pick at {c['token_agreement']:.1%} "
            f"(required {c['min_token_agreement']:.0%}); answers generated independently agree on "
            f"{c['free_running_agreement']:.1%} of tokens; largest logit difference {c['max_abs_logit_diff']:.4g} "
            f"= {c['relative_logit_diff']:.2e} of the logit scale{tolerance}."
        )
    lines += [f"- `{cmd}`" for cmd in result.commands.values()]
    lines += [f"- note: {n}" for n in result.notes]
    return card.rstrip() + "\n" + "\n".join(lines) + "\n"
