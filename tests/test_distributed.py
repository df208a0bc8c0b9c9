"""Training on several processes through `accelerate launch`, on CPU (gloo): FSDP2 (the shipped
example's settings) against one process, and a two-machine launch as two ranks on loopback.
DDP against one process is tests/test_train.py::test_two_processes_match_one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT, free_port
from protege.train.config import TrainConfig

ROWS = [
    {"text": "I am so angry at this queue", "label": "anger"},
    {"text": "what a lovely sunny day", "label": "joy"},
    {"text": "tomorrow will be better, I know it", "label": "optimism"},
    {"text": "I miss her so much", "label": "sadness"},
]
BIN = Path(sys.executable).parent


@pytest.fixture
def job(tmp_path, tiny_model):
    """A tiny label task on the tiny Llama (float32: the comparison is about the split, not rounding)."""
    task = tmp_path / "emotion.yaml"
    task.write_text(
        "name: emotion\ninput: 'Tweet: {{ text }}'\noutput:\n  kind: label\n  labels: [anger, joy, optimism, sadness]\n"
    )
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS * 4))

    def make(**kw) -> TrainConfig:
        base = {
            "base": str(tiny_model),
            "task": str(task),
            "data": {"train": str(data)},
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
            "batch_size": 4,
            "lr": 1e-2,
            "max_steps": 3,
            "schedule": "constant",
            "dtype": "float32",
            "threads": 1,
            "output": str(tmp_path / "out"),
        }
        return TrainConfig.model_validate(base | kw)

    return make


def _adapter(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def _fsdp_config(tmp_path: Path) -> Path:
    """examples/accelerate/fsdp.yaml as shipped, on 2 processes of this machine."""
    config = yaml.safe_load((ROOT / "examples" / "accelerate" / "fsdp.yaml").read_text())
    config["num_processes"] = 2
    path = tmp_path / "fsdp-2.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _launch(args: list[str], env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "accelerate"), "launch", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def _write_job(cfg: TrainConfig, path: Path) -> Path:
    path.write_text(json.dumps(cfg.model_dump(mode="json")))
    return path


@pytest.mark.slow  # two accelerate launches of two processes each: ~40 s on 2 shared cores
def test_fsdp_two_processes_match_one(job, ws, tmp_path):
    """FSDP2 with the shipped example's settings on 2 CPU processes: decoder layers sharded one by one,
    the adapter saved whole (gathered from the shards), the same weights and losses as one process
    with the same effective batch; label evaluation (which reads the gathered weights) runs too;
    checkpoints hold whole tensors and `--resume` continues from them."""
    from protege.train.run import train

    data = {"train": job().data.train, "eval": job().data.train, "eval_limit": 4}
    one = job(output=str(tmp_path / "one"), data=data)
    train(one, ws)
    two = job(output=str(tmp_path / "two"), batch_size=2, data=data)
    args = ["--config_file", str(_fsdp_config(tmp_path)), str(BIN / "protege"), "-w", str(ws.root), "train"]
    res = _launch([*args, str(_write_job(two, tmp_path / "two.json"))])
    assert res.returncode == 0, res.stderr[-4000:]
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["processes"] == 2 and "eval_accuracy" in metrics
    # accelerate's FSDP2 really ran (not DDP under another name), with each decoder layer a unit of its own
    assert metrics["distributed"]["type"] == "FSDP" and "LlamaDecoderLayer" in metrics["distributed"]["fsdp_units"]
    a, b = _adapter(tmp_path / "one"), _adapter(tmp_path / "two")
    assert a.keys() == b.keys() and all(b[k].shape == a[k].shape for k in a)  # whole tensors, not one rank's slice
    for name in a:  # the tolerance of the DDP test (tests/test_train.py): 1% of lr
        torch.testing.assert_close(b[name], a[name], rtol=1e-3, atol=1e-4)
    la = json.loads((tmp_path / "one" / "metrics.json").read_text())["history"]
    assert [h["loss"] for h in metrics["history"]] == pytest.approx([h["loss"] for h in la], rel=1e-3)
    ckpt = torch.load(next((tmp_path / "two" / "checkpoints").glob("step-*")) / "trainable.pt", weights_only=True)
    assert {k: tuple(v.shape) for k, v in ckpt.items()} == {f"model.{k}": tuple(v.shape) for k, v in _named(a).items()}
    # resume for 2 more steps under FSDP equals one process running 5 steps
    five = job(output=str(tmp_path / "one5"), max_steps=5, data=data)
    train(five, ws)
    more = two.model_copy(update={"max_steps": 5})
    res = _launch([*args, str(_write_job(more, tmp_path / "two5.json")), "--resume"])
    assert res.returncode == 0, res.stderr[-4000:]
    for name, value in _adapter(tmp_path / "one5").items():
        torch.testing.assert_close(_adapter(tmp_path / "two")[name], value, rtol=1e-3, atol=1e-4)


def _named(adapter: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Adapter file keys (PEFT drops the adapter name) -> the PeftModel parameter names under the loss module."""
    out = {}
    for key, value in adapter.items():
        stem, _, leaf = key.rpartition(".")
        out[f"{stem}.default.{leaf}"] = value
    return out


@pytest.mark.slow  # two processes start and train: ~20 s
def test_two_machines_as_two_ranks_on_loopback(job, ws, tmp_path):
    """`accelerate launch --num_machines 2 --machine_rank R --main_process_ip IP`, once per machine:
    here both "machines" are this one, rank 0 and rank 1 started separately and meeting on 127.0.0.1.
    The run is a 2-process DDP run like any other: it matches one process."""
    from protege.train.run import train

    one = job(output=str(tmp_path / "one"))
    train(one, ws)
    two = _write_job(job(output=str(tmp_path / "two"), batch_size=2), tmp_path / "two.json")
    port = str(free_port())
    common = ["--multi_gpu", "--num_machines", "2", "--num_processes", "2", "--main_process_ip", "127.0.0.1"]
    common += ["--main_process_port", port, "--mixed_precision", "no", "--dynamo_backend", "no"]
    tail = [str(BIN / "protege"), "-w", str(ws.root), "train", str(two)]
    procs = [
        subprocess.Popen(
            [str(BIN / "accelerate"), "launch", *common, "--machine_rank", str(rank), *tail],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-3000:] + outs[1][1][-3000:]
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["processes"] == 2
    a, b = _adapter(tmp_path / "one"), _adapter(tmp_path / "two")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-3, atol=1e-4)


# ---- what needs CUDA, checked where it can be without it ---------------------------------------
def test_deepspeed_batch_keys_are_filled_before_prepare():
    """The shipped ZeRO-2 example gives accelerate a config with the micro-batch size on `auto`, which
    `accelerator.prepare` can only fill from a DataLoader (protege passes none): it refused to start.
    protege fills it, the accumulation steps and the train batch size from the train config, turns
    accelerate's default clipping (1.0 on `auto`) off as in a single-process run, and refuses a
    disagreeing fixed value. (DeepSpeed itself needs CUDA: the run is not tested here.)"""
    from accelerate.utils import DeepSpeedPlugin

    from protege.errors import UserError
    from protege.train.distributed import fill_deepspeed_config

    example = yaml.safe_load((ROOT / "examples" / "accelerate" / "deepspeed-zero2.yaml").read_text())
    ds = DeepSpeedPlugin(**example["deepspeed_config"]).deepspeed_config
    assert ds["train_micro_batch_size_per_gpu"] == "auto" and ds["zero_optimization"]["stage"] == 2
    fill_deepspeed_config(ds, batch_size=4, grad_accum=2, world=8)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (
        4,
        2,
        64,
    )
    assert ds["gradient_clipping"] == 0.0
    with pytest.raises(UserError, match="train_micro_batch_size_per_gpu: 16, but the train config gives 4"):
        fill_deepspeed_config({"train_micro_batch_size_per_gpu": 16}, batch_size=4, grad_accum=1, world=2)


def test_deepspeed_zero3_and_resume_are_refused():
    from types import SimpleNamespace

    from accelerate.utils import DeepSpeedPlugin

    from protege.errors import UserError
    from protege.train.distributed import configure_deepspeed

    def acc(stage: int) -> SimpleNamespace:  # the two attributes configure_deepspeed reads
        return SimpleNamespace(
            state=SimpleNamespace(deepspeed_plugin=DeepSpeedPlugin(zero_stage=stage)), num_processes=2
        )

    with pytest.raises(UserError, match="ZeRO-3 is not supported"):
        configure_deepspeed(acc(3), 4, 1, resume=False)
    with pytest.raises(UserError, match="--resume under DeepSpeed"):
        configure_deepspeed(acc(2), 4, 1, resume=True)


def test_qlora_merge_goes_into_the_float_base(job, tiny_model, tmp_path):
    """`merge: true` after QLoRA: the adapter is merged into the float32 base loaded from disk, never
    folded into the 4-bit weights it trained over (that would re-quantise them). Checked on a float
    LoRA standing in for the 4-bit model, which needs CUDA: what gets merged is a fresh float32 load of
    the saved adapter, and the merged weights are the base's plus the adapter's update."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from protege.train.lora import attach_lora
    from protege.train.outputs import merge_source

    cfg = job(method="qlora", merge=True)
    trained = attach_lora(AutoModelForCausalLM.from_pretrained(str(tiny_model)), cfg.lora)
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if "lora_B" in name:
                p.fill_(0.01)
    out = tmp_path / "adapter"
    trained.save_pretrained(out)
    config = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps(config | {"base_model_name_or_path": str(tiny_model)}))
    source = merge_source(cfg, trained, out)
    assert source is not trained and isinstance(source, PeftModel)
    assert {p.dtype for p in source.parameters()} == {torch.float32}
    merged = source.merge_and_unload()
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.state_dict()[q], base.state_dict()[q])
    assert merge_source(job(method="lora", merge=True), trained, out) is trained  # plain LoRA merges in place
