"""Shared fixtures. Tests are hermetic: each gets its own workspace (PROTEGE_WORKSPACE), while
pulled models stay in the normal cache (PROTEGE_CACHE or ~/.cache/protege) so the bundled
135M model is fetched and converted once, not once per test.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SMOLLM = "smollm2-135m-instruct"


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
    """The bundled 135M instruct model, pulled once (cached across runs)."""
    from protege.models.fetch import pull

    return pull(SMOLLM)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, smollm_path) -> Path:
    """A 2-layer Llama with SmolLM2's tokenizer and chat template, random weights (seeded).
    Fast enough for every test that needs a model but not its knowledge."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", smollm_path)


def build_tiny_model(dest: Path, tokenizer_from: Path, layers: int = 2, hidden: int = 64) -> Path:
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
    """Run `protege ARGS` as a user would, in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "protege.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def shared_data() -> Path:
    """../shared/data, or skip the test with a message where it is absent."""
    from protege.paths import shared_data_dir

    path = shared_data_dir()
    if path is None:
        pytest.skip("../shared/data is absent: this test needs the shared public datasets")
    return path
