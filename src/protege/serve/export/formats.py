"""The four export formats, each writing into a folder that `export.run_export` renames into place.

- hf: merged safetensors, tokenizer with the student's chat template, generation config whose EOS
  ids include the end-of-turn token, model card. Checked against the unmerged adapter.
- gguf: one file (F16 or Q8_0) with tokenizer and chat template in its metadata. Checked against the
  merged model after transformers loads it back (`gguf_file=`).
- ollama: the GGUF and a Modelfile (FROM, TEMPLATE from the chat template, PARAMETER stop, SYSTEM).
- vllm: the adapter and its base as folders, and the `vllm serve ... --enable-lora` command with the
  adapter's rank; a full model is written as `hf` into model/.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protege.serve.export.check import compare
from protege.serve.export.source import Source
from protege.serve.export.template import answer_stop_ids, go_template, split_turns, stop_strings

VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM accepts for --max-lora-rank (vllm.config.lora.MaxLoRARanks)."""


@dataclass
class Written:
    path: Path
    """The main artefact, as it will be once the folder is in place."""
    files: list[str] = field(default_factory=list)
    check: dict[str, Any] | None = None
    commands: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def write_hf(src: Source, tmp: Path, final: Path, prompts: list, max_new: int) -> Written:
    from transformers import AutoModelForCausalLM, GenerationConfig

    tok = src.tokenizer
    model = src.merged()
    stop = answer_stop_ids(tok)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    gen = GenerationConfig.from_model_config(model.config)
    gen.eos_token_id = stop if len(stop) > 1 else stop[0]
    gen.pad_token_id = tok.pad_token_id
    gen.save_pretrained(str(tmp))
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp), dtype="float32").eval()
    check = compare(src.unmerged(), tok, reloaded, _load_tok(tmp), prompts, stop, "hf", max_new)
    return Written(final, _files(tmp), check, {"serve": f"protege serve {final}"})


def _load_tok(folder: Path, gguf_file: str | None = None) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def write_gguf_file(src: Source, tmp: Path, final: Path, quant: str, prompts: list, max_new: int) -> Written:
    import torch
    from transformers import AutoModelForCausalLM

    from protege.serve.export.gguf_file import write_gguf

    tok = src.tokenizer
    stop = answer_stop_ids(tok)
    filename = f"{src.name}-{quant}.gguf"
    write_gguf(src.merged(), tok, tmp / filename, quant, src.name, end_of_turn=stop[-1])
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp), gguf_file=filename, dtype=torch.float32).eval()
    check = compare(src.merged(), tok, loaded, _load_tok(tmp, filename), prompts, stop, quant, max_new)
    path = final / filename
    return Written(path, _files(tmp), check, {"llama.cpp": f"llama-server -m {path}"})


def write_ollama(src: Source, tmp: Path, final: Path, quant: str, prompts: list, max_new: int, name: str) -> Written:
    written = write_gguf_file(src, tmp, final, quant, prompts, max_new)
    turns = split_turns(src.tokenizer)
    lines = [f"FROM ./{written.path.name}", f'TEMPLATE """{go_template(turns)}"""']
    lines += [f"PARAMETER stop {_quote(s)}" for s in stop_strings(src.tokenizer, turns)]
    system = _baked_system(src.tokenizer, turns)
    if system:
        lines.append(f'SYSTEM """{system}"""')
    (tmp / "Modelfile").write_text("\n".join(lines) + "\n")
    written.files = _files(tmp)
    written.commands = {"create": f"ollama create {name} -f {final / 'Modelfile'}", "run": f"ollama run {name}"}
    return written


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _baked_system(tok: Any, turns: Any) -> str | None:
    """The system prompt the template adds when a conversation brings none (a student's trained
    system prompt), recovered by rendering an empty system turn through the system parts."""
    empty = turns.system_pre + turns.system_post
    if not turns.head or turns.head == empty:
        return None
    if turns.head.startswith(turns.system_pre) and turns.head.endswith(turns.system_post):
        return turns.head[len(turns.system_pre) : len(turns.head) - len(turns.system_post)] or None
    return None


def write_vllm(src: Source, tmp: Path, final: Path, prompts: list, max_new: int, name: str) -> Written:
    if not src.is_adapter:
        written = write_hf(src, _mkdir(tmp / "model"), final / "model", prompts, max_new)
        written.files = _files(tmp)
        written.commands = {"serve": f"vllm serve {final / 'model'} --served-model-name {name}"}
        return written
    rank = src.rank or 1
    allowed = next((r for r in VLLM_RANKS if r >= rank), None)
    if allowed is None:
        from protege.errors import UserError

        raise UserError(f"adapter rank {rank}: vLLM serves LoRA ranks up to {VLLM_RANKS[-1]}")
    adapter = _copy_folder(src.target.path, tmp / "adapter", skip={"checkpoints", "tensorboard", "merged"})
    base_ref = _base_for_vllm(src, tmp)
    command = f"vllm serve {base_ref} --enable-lora --lora-modules {name}={final / 'adapter'} --max-lora-rank {allowed}"
    notes = []
    if allowed != rank:
        notes.append(f"the adapter's rank is {rank}; vLLM takes --max-lora-rank from {VLLM_RANKS}, so {allowed}")
    if src.tokenizer.chat_template != src.base_tokenizer.chat_template:
        command += f" --chat-template {final / 'adapter' / 'chat_template.jinja'}"
        _write_template(adapter, src.tokenizer.chat_template)
        notes.append("the student's chat template (its trained system prompt) differs from the base's: --chat-template")
    notes.append(
        "one adapter: served merged it needs no LoRA kernels per request; "
        f"`protege export {src.given} --format hf --out DIR` then `vllm serve DIR`"
    )
    return Written(final / "adapter", _files(tmp), None, {"serve": command.replace(str(tmp), str(final))}, notes)


def _base_for_vllm(src: Source, tmp: Path) -> str:
    """A hub base is named by its id; a local or bundled base is copied beside the adapter."""
    base = src.target.base
    if "/" in base.name and not Path(base.name).exists():
        return base.name
    _copy_folder(base.path, tmp / "base", skip=set())
    return str(tmp / "base")


def _write_template(folder: Path, template: str) -> None:
    path = folder / "chat_template.jinja"
    if not path.exists():
        path.write_text(template)


def _copy_folder(src: Path, dest: Path, skip: set[str]) -> Path:
    shutil.copytree(src, dest, ignore=lambda _d, names: [n for n in names if n in skip])
    return dest


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
