"""Training: every method on the tiny model, resume, stopping, truncation, packing isolation,
constrained choice, and a two-process (gloo) run matching a one-process run."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import EMOTION_LABELS as LABELS
from conftest import EMOTION_ROWS as ROWS
from conftest import run_cli
from protege.errors import UserError
from protege.train.config import TrainConfig


@pytest.fixture(scope="module")
def learnable_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model with larger initial weights (initializer_range 0.2 instead of 0.02), so a few
    steps really learn the rows: with the default init the tied head's logits are too small for LoRA
    to move the loss by more than a few percent, which a broken trainer would also manage."""
    return _variant(tiny_model, tmp_path_factory.mktemp("learnable") / "tiny-learnable", seed=0)


def _variant(tiny_model: Path, out: Path, seed: int) -> Path:
    """The tiny model's architecture and tokenizer with fresh weights (initializer_range 0.2)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(str(tiny_model))
    config.initializer_range = 0.2
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(str(tiny_model)).save_pretrained(out)
    return out


@pytest.fixture
def job(tmp_path, learnable_model):
    """A tiny label task: a task file and a JSONL of rows, repeated so a few steps can learn it."""
    task = tmp_path / "emotion.yaml"
    task.write_text(
        "name: emotion\ninput: 'Tweet: {{ text }}'\noutput:\n  kind: label\n  labels: [anger, joy, optimism, sadness]\n"
    )
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS * 4))

    def make(**kw) -> TrainConfig:
        base = {
            "base": str(learnable_model),
            "task": str(task),
            "data": {"train": str(data)},
            "method": "lora",
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
            "batch_size": 4,
            "lr": 1e-2,
            "max_steps": 8,
            "schedule": "constant",
            "output": str(tmp_path / "out"),
        }
        base.update(kw)
        return TrainConfig.model_validate(base)

    return make


def _train(cfg: TrainConfig, ws, resume: bool = False) -> dict:
    from protege.train.run import train

    return train(cfg, ws, resume=resume)


def _losses(metrics: dict) -> list[float]:
    return [h["loss"] for h in metrics["history"]]


@pytest.mark.parametrize(
    "method,extra",
    [("lora", {}), ("full", {"lr": 2e-3}), ("kd", {"teacher": None, "kd": {"temperature": 2.0, "alpha": 0.5}})],
)
def test_each_method_lowers_the_loss(job, ws, learnable_model, method, extra):
    """dtype auto: on a host with bf16 (or PROTEGE_CPU_BF16=1) this is the bf16-mixed path."""
    if method == "kd":
        extra = {**extra, "teacher": str(learnable_model)}
    cfg = job(method=method, **extra)
    metrics = _train(cfg, ws)
    losses = _losses(metrics)
    assert len(losses) == 8
    # measured in float32: lora and full end 45-55% below their first loss, kd (half of whose loss is the
    # KL to itself as teacher, ~0 throughout) ~28%; the bounds leave room for bf16-mixed
    bound = 0.85 if method == "kd" else 0.7
    assert sum(losses[-2:]) / 2 < losses[0] * bound, losses
    out = Path(cfg.output)
    assert (out / "README.md").exists() and (out / "metrics.json").exists()
    run = ws.store.get_run(cfg.run_name)
    assert run["kind"] == "train" and run["status"] == "done" and run["output_dir"] == str(out)
    from protege.models.load import load_model

    model = load_model(out)  # adapter or full weights, both load the same way
    assert model is not None
    if method != "full":
        cfg_json = json.loads((out / "adapter_config.json").read_text())
        assert Path(cfg_json["base_model_name_or_path"]) == Path(learnable_model).resolve()


def test_resume_equals_an_uninterrupted_run(job, ws, tmp_path):
    full = job(max_steps=6, save_every=3, schedule="linear", output=str(tmp_path / "a"), dtype="float32")
    straight = _train(full, ws)
    ref = {k: v.clone() for k, v in _adapter(tmp_path / "a").items()}
    # the same job, "interrupted" after step 3: only the step-3 checkpoint is left
    second = job(max_steps=6, save_every=3, schedule="linear", output=str(tmp_path / "b"), dtype="float32")
    _train(second, ws)
    ckpts = sorted((tmp_path / "b" / "checkpoints").glob("step-*"))
    assert [c.name for c in ckpts] == ["step-0000003", "step-0000006"]
    shutil.rmtree(ckpts[-1])
    resumed = _train(second, ws, resume=True)
    assert resumed["steps"] == 6
    assert _losses(resumed)[-3:] == pytest.approx(_losses(straight)[-3:], rel=1e-4)
    got = _adapter(tmp_path / "b")
    for name, value in ref.items():
        torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-6)


def _adapter(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_label_student_answers_only_labels_and_scores_match_a_plain_forward(job, ws, tmp_path):
    data = {"train": str(tmp_path / "train.jsonl"), "eval": str(tmp_path / "train.jsonl")}
    cfg = job(data=data, eval_every=8, max_steps=16, dtype="float32")
    metrics = _train(cfg, ws)
    evals = [h["eval_accuracy"] for h in metrics["history"] if "eval_accuracy" in h]
    assert len(evals) == 2 and "eval_macro_f1" in metrics
    # chance is 0.25 on the four rows it trained on; measured 0.75 after 8 and 16 steps in float32
    assert metrics["eval_accuracy"] >= 0.75, evals
    from protege.models.load import load_model, load_tokenizer
    from protege.train.classify import predict_labels, score_choices

    model, tok = load_model(cfg.output), load_tokenizer(cfg.output)
    prompts = [[{"role": "user", "content": f"Tweet: {r['text']}"}] for r in ROWS] + [
        [{"role": "user", "content": "Tweet: something else entirely, answer freely"}]
    ]
    preds = predict_labels(model, tok, prompts, LABELS)
    assert all(p in LABELS for p in preds)
    # the packed scorer equals log-likelihoods from an ordinary unpacked forward
    scores = score_choices(model, tok, prompts[:1], LABELS)
    head = tok.apply_chat_template(prompts[0], tokenize=False, add_generation_prompt=True)
    head_ids = tok(head, add_special_tokens=False)["input_ids"]
    for j, lab in enumerate(LABELS):
        ans = tok(lab, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([head_ids + ans])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].float(), -1)
        ref = sum(logp[len(head_ids) + k - 1, t].item() for k, t in enumerate(ans))
        assert scores[0, j].item() == pytest.approx(ref, abs=1e-3)


@pytest.mark.slow  # over 10 s
def test_trained_student_stops_by_itself(job, ws):
    cfg = job(method="full", lr=5e-3, max_steps=80)
    _train(cfg, ws)
    from protege.models.load import load_model, load_tokenizer

    model, tok = load_model(cfg.output), load_tokenizer(cfg.output)
    for row in ROWS:
        prompt = tok.apply_chat_template(
            [{"role": "user", "content": f"Tweet: {row['text']}"}], tokenize=False, add_generation_prompt=True
        )
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        out = model.generate(ids, max_new_tokens=30, do_sample=False, eos_token_id=tok.eos_token_id)
        new = out[0, ids.shape[1] :].tolist()
        assert tok.eos_token_id in new[:8], tok.decode(new)
        assert tok.decode(new[: new.index(tok.eos_token_id)]).strip() in LABELS


def test_truncation_is_counted_and_keeps_the_answer(job, ws, tiny_model):
    from protege.models.load import load_tokenizer
    from protege.train.data import tokenize_all

    tok = load_tokenizer(str(tiny_model))
    chat = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "joy"}]
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    examples, truncated = tokenize_all(tok, [chat, short], 64)
    assert truncated == 1 and len(examples[0].input_ids) == 64
    kept = [t for t, on in zip(examples[0].input_ids, examples[0].trained, strict=True) if on]
    assert tok.decode(kept) == "joy" + tok.eos_token
    metrics = _train(job(max_length=24, max_steps=2), ws)
    assert metrics["truncated"] == 16


def test_packed_examples_do_not_see_each_other(tiny_model):
    from protege.models.load import load_model, load_tokenizer
    from protege.train.data import collate, tokenize_chat
    from protege.train.model import answer_logits

    model, tok = load_model(str(tiny_model), dtype="float32"), load_tokenizer(str(tiny_model))
    a = tokenize_chat(tok, [{"role": "user", "content": "first one"}, {"role": "assistant", "content": "joy"}], 128)
    b = tokenize_chat(
        tok, [{"role": "user", "content": "a second, longer"}, {"role": "assistant", "content": "sad"}], 128
    )
    with torch.no_grad():
        shared = collate([a, b], packing=True)
        assert shared["attention_mask"] is not None  # both start with the same system prompt
        packed = answer_logits(model, shared)
        plain = answer_logits(model, collate([a, b], packing=True, share_prefix=False))
        alone = torch.cat([answer_logits(model, collate([x], packing=True)) for x in (a, b)])
        padded = answer_logits(model, collate([a, b], packing=False))
    for got in (packed, plain, padded):
        torch.testing.assert_close(got, alone, rtol=1e-4, atol=1e-4)


def test_qlora_without_cuda_is_a_clear_usage_error(job, ws, tmp_path):
    path = tmp_path / "qlora.yaml"
    path.write_text(json.dumps(job(method="qlora").model_dump(mode="json")))
    # CUDA hidden, so the test runs (and never skips) on a GPU machine too
    res = run_cli("-w", str(ws.root), "train", str(path), env={"CUDA_VISIBLE_DEVICES": ""})
    assert res.returncode == 2 and "qlora needs a CUDA GPU" in res.stderr, res.stderr[-2000:]


@pytest.mark.slow  # over 10 s
def test_cli_train_and_bad_config(job, tmp_path, ws):
    cfg = job(max_steps=2)
    path = tmp_path / "train.yaml"
    path.write_text(json.dumps(cfg.model_dump(mode="json") | {"output": "runs/cli"}))
    res = run_cli("-w", str(ws.root), "train", str(path), "--set", "max_steps=3", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["steps"] == 3 and out["output"] == str(ws.root / "runs" / "cli")
    bad = run_cli("-w", str(ws.root), "train", str(path), "--set", "lora.rank=4")
    assert bad.returncode == 2 and "lora.rank: unknown key" in bad.stderr


@pytest.mark.slow  # over 10 s
def test_two_processes_match_one(job, ws, tmp_path):
    """Same effective batch (1 x 4 vs 2 x 2): the same update, up to float summation order. float32
    pinned: under bf16 autocast the two batch shapes round differently (249 of 1,024 elements
    differed by up to 0.018 on an AVX512-BF16 host when this test ran under `auto`)."""
    one = job(max_steps=3, output=str(tmp_path / "one"), dtype="float32")
    _train(one, ws)
    two_yaml = tmp_path / "two.yaml"
    two = job(max_steps=3, batch_size=2, output=str(tmp_path / "two"), dtype="float32")
    two_yaml.write_text(json.dumps(two.model_dump(mode="json")))
    accelerate = Path(sys.executable).parent / "accelerate"
    protege = Path(sys.executable).parent / "protege"
    cmd = [
        str(accelerate),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",  # multi_gpu: the torchrun launcher (gloo on CPU)
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
    ]
    cmd += ["--dynamo_backend", "no", str(protege), "-w", str(ws.root), "train", str(two_yaml)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["processes"] == 2
    a, b = _adapter(tmp_path / "one"), _adapter(tmp_path / "two")
    assert a.keys() == b.keys()
    # Adam moves a weight by up to lr (1e-2) a step; where a gradient is near zero, summation order alone
    # moves its normalised update a little (measured: one element of 512 off by 5e-5). A wrong split of the
    # batch across processes moves weights by a sizeable fraction of lr: 1e-4 (1% of lr) catches that.
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-3, atol=1e-4)
    la = json.loads((tmp_path / "one" / "metrics.json").read_text())["history"]
    lb = json.loads((tmp_path / "two" / "metrics.json").read_text())["history"]
    assert [h["loss"] for h in lb] == pytest.approx([h["loss"] for h in la], rel=1e-3)


def test_system_prompt_is_trained_saved_and_served(job, ws):
    """`system_prompt: ""` replaces the template's default system turn in training, in the saved
    tokenizer and in what the server renders for the adapter; the bare base keeps its default."""
    from protege.models.load import load_tokenizer
    from protege.serve.app import build_engine

    cfg = job(system_prompt="", max_steps=1)
    _train(cfg, ws)
    messages = [{"role": "user", "content": "Tweet: hello"}]
    saved = load_tokenizer(cfg.output).apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert saved.startswith("<|im_start|>system\n<|im_end|>\n<|im_start|>user\nTweet: hello")
    engine = build_engine(cfg.output, threads=1)
    try:
        student = engine.chat_prompt(messages, engine.route(None))
        base = engine.chat_prompt(messages, None)
        assert engine.tokenizer.decode(student) == saved
        assert "You are a helpful AI assistant" in engine.tokenizer.decode(base) and len(base) > len(student) + 10
    finally:
        engine.close()


# ---- precision ----------------------------------------------------------------------------------
@pytest.mark.slow  # over 10 s
def test_auto_on_a_bf16_host_is_mixed_precision_recorded_everywhere(job, ws, tmp_path, monkeypatch):
    """PROTEGE_CPU_BF16=1 makes this host act as one with AVX512-BF16: `auto` is then bf16-mixed
    (float32 weights, bf16 matmuls), which really changes the numbers a little and is written into
    metrics.json, the run record and the model card. =0 is the float32 path."""
    from safetensors import safe_open

    monkeypatch.setenv("PROTEGE_CPU_BF16", "1")
    mixed = _train(job(output=str(tmp_path / "mixed"), name="mixed"), ws)
    monkeypatch.setenv("PROTEGE_CPU_BF16", "0")
    plain = _train(job(output=str(tmp_path / "plain"), name="plain"), ws)
    assert (mixed["precision"], plain["precision"]) == ("bf16-mixed", "float32")
    assert ws.store.get_run("mixed")["config"]["precision"] == "bf16-mixed"
    assert "Precision: `bf16-mixed` (config `dtype: auto`" in (tmp_path / "mixed" / "README.md").read_text()
    with safe_open(str(tmp_path / "mixed" / "adapter_model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}  # noqa: SIM118 (not a dict)
    a, b = _losses(mixed), _losses(plain)
    assert a != b and a == pytest.approx(b, rel=0.05)


def test_bfloat16_weights_on_request(job, ws, tmp_path):
    metrics = _train(job(dtype="bfloat16", max_steps=2, output=str(tmp_path / "w")), ws)
    assert metrics["precision"] == "bfloat16"


# ---- knowledge distillation --------------------------------------------------------------------
def test_kd_loss_sum_is_the_hand_computed_kl_plus_cross_entropy():
    from protege.train.kd import kd_loss_sum

    student = torch.tensor([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]])
    teacher = torch.tensor([[0.5, 0.5, 2.0, 9.0], [1.0, 0.0, 0.0, -9.0]])  # a padded 4th output, cut off
    targets = torch.tensor([1, 2])
    t, alpha = 2.0, 0.3

    def softmax(row: list[float]) -> list[float]:
        e = [math.exp(x / t) for x in row]
        return [x / sum(e) for x in e]

    kl = ce = 0.0
    for s_row, t_row, y in zip(student.tolist(), teacher.tolist(), targets.tolist(), strict=True):
        p_s, p_t = softmax(s_row), softmax(t_row[:3])
        kl += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s, strict=True))
        ce -= s_row[y] - math.log(sum(math.exp(x) for x in s_row))
    want = alpha * t * t * kl + (1 - alpha) * ce
    assert kd_loss_sum(student, teacher, targets, t, alpha).item() == pytest.approx(want, rel=1e-6)


@pytest.mark.slow  # over 10 s
def test_kd_moves_the_student_towards_a_different_teacher(job, ws, tmp_path):
    """alpha 1: the loss is the KL to the teacher alone, no label is used. The student as its own
    teacher starts at KL 0 (nothing to learn: not a test of KD); a teacher fully fine-tuned on the
    rows starts far away, is approached, and carries its labels over to the student."""
    data = {"train": str(tmp_path / "train.jsonl"), "eval": str(tmp_path / "train.jsonl")}
    teacher = _train(job(method="full", lr=2e-3, max_steps=16, output=str(tmp_path / "teacher"), data=data), ws)
    assert teacher["eval_accuracy"] == 1.0
    kd = {"temperature": 1.0, "alpha": 1.0}
    self_taught = _losses(_train(job(method="kd", teacher=job().base, kd=kd, max_steps=1), ws))
    assert self_taught[0] == pytest.approx(0.0, abs=1e-4)
    student = _train(job(method="kd", teacher=str(tmp_path / "teacher"), kd=kd, max_steps=12, data=data), ws)
    losses = _losses(student)
    # measured (float32): KL 4.4 -> 0.55 in 12 steps, the student then right on 3 of the 4 rows
    assert losses[0] > 2.0 and sum(losses[-2:]) / 2 < 0.25 * losses[0], losses
    assert student["eval_accuracy"] >= 0.75


def test_kd_refuses_a_teacher_with_another_tokenizer(job, ws, learnable_model, tmp_path):
    """Same vocabulary size, two token ids swapped: the head widths agree, the meaning of ids does not."""
    teacher = tmp_path / "teacher"
    shutil.copytree(learnable_model, teacher)
    spec = json.loads((teacher / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[300:302]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (teacher / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(UserError, match="tokenizer differs from the student's .*2 of"):
        _train(job(method="kd", teacher=str(teacher)), ws)


# ---- resume safety -----------------------------------------------------------------------------
class _RunsCode:
    """Unpickling this runs a shell command (what a planted checkpoint could do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("victim", ["optim.pt", "trainable.pt"])
def test_resume_refuses_a_checkpoint_that_would_run_code(job, ws, tmp_path, victim):
    cfg = job(max_steps=2, output=str(tmp_path / "run"))
    _train(cfg, ws)
    ckpt = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))[-1]
    marker = tmp_path / "pwned"
    torch.save({"optimizer": _RunsCode(marker), "rng": _RunsCode(marker)}, ckpt / victim)
    with pytest.raises(UserError, match=f"{victim}: refused to load"):
        _train(job(max_steps=4, output=str(tmp_path / "run")), ws, resume=True)
    assert not marker.exists()
