"""Issue 2: workspace, migrations, config errors, the model registry and the CLI's contract."""

from __future__ import annotations

import json
import sqlite3

import pytest

from conftest import SMOLLM, run_cli
from protege.config import WorkspaceConfig, load_yaml_model
from protege.errors import UserError
from protege.store import MIGRATIONS, SCHEMA_VERSION, Store
from protege.tasks import Task
from protege.workspace import CONFIG_NAME, DB_NAME, init_workspace, open_workspace


def test_init_creates_config_database_and_artifacts(tmp_path):
    ws = init_workspace(tmp_path / "w")
    assert (ws.root / CONFIG_NAME).exists() and (ws.root / DB_NAME).exists() and (ws.root / "artifacts").is_dir()
    assert ws.store.version == SCHEMA_VERSION == len(MIGRATIONS)
    assert ws.store.query("PRAGMA journal_mode")[0][0] == "wal"
    assert "local" in ws.config.teachers  # the default config parses against the strict models


def test_cli_init_and_workspace_flag(tmp_path):
    target = tmp_path / "cli-ws"
    proc = run_cli("init", str(target))
    assert proc.returncode == 0, proc.stderr
    assert (target / DB_NAME).exists()


def test_migration_from_older_schema_keeps_data(tmp_path):
    path = tmp_path / "old.db"
    old = Store(path)
    old.migrate(target=1)  # a database as protege's first schema left it
    old.execute("INSERT INTO datasets (name, version, hash, n_records, created_at) VALUES ('d', 1, 'h', 1, 0)")
    old.execute("INSERT INTO records (dataset_id, idx, messages) VALUES (1, 0, '[]')")
    old.close()

    store = Store.open(path)
    assert store.version == SCHEMA_VERSION
    cols = {r["name"] for r in store.query("PRAGMA table_info(records)")}
    assert {"review_note", "reviewed_at"} <= cols
    assert store.query("SELECT COUNT(*) FROM records")[0][0] == 1
    assert store.migrate() == []  # idempotent


def test_failed_migration_rolls_back(tmp_path, monkeypatch):
    import protege.store as store_mod

    monkeypatch.setattr(store_mod, "MIGRATIONS", [*MIGRATIONS, "CREATE TABLE x (a INT); SELECT * FROM nope"])
    store = Store(tmp_path / "f.db")
    with pytest.raises(sqlite3.OperationalError):
        store.migrate(target=len(store_mod.MIGRATIONS))
    assert store.version == SCHEMA_VERSION
    assert not store.query("SELECT name FROM sqlite_master WHERE name='x'")


def test_unknown_config_key_names_key_file_and_line(tmp_path):
    cfg = tmp_path / "protege.yaml"
    cfg.write_text("teachers:\n  local:\n    model: m\n    prise: {input_per_1m: 1}\n")
    with pytest.raises(UserError) as err:
        load_yaml_model(cfg, WorkspaceConfig)
    msg = str(err.value)
    assert f"{cfg}:4:" in msg and "teachers.local.prise" in msg and "unknown key" in msg


def test_bad_config_is_one_line_exit_2_without_traceback(tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / CONFIG_NAME).write_text("teachers: {}\nlocal_compute_per_hour: lots\n")
    proc = run_cli("init", str(tmp_path / "w"))
    assert proc.returncode == 2
    assert "local_compute_per_hour" in proc.stderr and "protege.yaml:2" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_yaml_syntax_error_names_line(tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / CONFIG_NAME).write_text("teachers:\n  local: [unclosed\n")
    with pytest.raises(UserError, match=r"protege.yaml:\d+: not valid YAML"):
        open_workspace(tmp_path / "w")


def test_version_and_grouped_help():
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("protege ")
    proc = run_cli("--help")
    for panel in ("models", "serve", "train", "data"):
        assert panel in proc.stdout


def test_models_list_shows_the_three_bundled_models():
    proc = run_cli("models", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert set(rows) == {"smollm2-135m-instruct", "gemma-3-270m", "all-minilm-l6-v2"}
    assert rows["gemma-3-270m"]["kind"] == "base" and rows["all-minilm-l6-v2"]["kind"] == "embedding"


def test_unknown_model_is_a_usage_error():
    proc = run_cli("models", "info", "no-such-model")
    assert proc.returncode == 2
    assert "unknown model" in proc.stderr and "Traceback" not in proc.stderr


def test_local_folder_loads_through_the_same_api(tiny_model):
    from protege.models import load_model, load_tokenizer, resolve_model

    resolved = resolve_model(str(tiny_model))
    assert not resolved.is_adapter
    model, tok = load_model(str(tiny_model), dtype="float32"), load_tokenizer(str(tiny_model))
    assert tok.pad_token is not None and tok.chat_template
    assert model.config.num_hidden_layers == 2


@pytest.mark.slow
def test_pulled_smollm_answers_a_simple_question(smollm_path):
    import torch

    from protege.models import load_model, load_tokenizer

    manifest = json.loads((smollm_path / "protege_model.json").read_text())
    assert manifest["sha256"]["SmolLM2-135M-Instruct.Q4_1.gguf"]
    model, tok = load_model(SMOLLM, dtype="float32"), load_tokenizer(SMOLLM)
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0][ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.mark.slow
def test_models_info_reports_parameters(smollm_path):
    proc = run_cli("models", "info", SMOLLM, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert abs(info["parameters"] - 134.5e6) < 0.1e6 and info["kind"] == "instruct"


def test_task_output_validation():
    task = Task.model_validate(
        {"name": "t", "input": "Tweet: {{ text }}", "output": {"kind": "label", "labels": ["joy", "anger"]}}
    )
    assert task.parse_output("Joy.") == ("joy", None)
    assert task.parse_output("fear")[0] is None
    assert task.student_messages({"text": "hi"}) == [{"role": "user", "content": "Tweet: hi"}]
    jtask = Task.model_validate(
        {"name": "j", "output": {"kind": "json", "schema": {"type": "object", "required": ["a"]}}}
    )
    assert jtask.parse_output('```json\n{"a": 1}\n```') == ({"a": 1}, None)
    assert "schema" in jtask.parse_output('{"b": 1}')[1]


@pytest.mark.slow  # downloads the embedding model
def test_embedding_model_pulls_and_embeds():
    from sentence_transformers import SentenceTransformer

    from protege.models import resolve_model

    folder = resolve_model("all-minilm-l6-v2").path
    model = SentenceTransformer(str(folder), device="cpu")
    a, b, c = model.encode(["a cat sits on the mat", "a kitten rests on a rug", "quarterly tax filing deadline"])
    cos = lambda x, y: float(x @ y / ((x @ x) ** 0.5 * (y @ y) ** 0.5))  # noqa: E731
    assert a.shape == (384,) and cos(a, b) > cos(a, c)


def test_unreachable_hub_id_is_one_clear_line():
    proc = run_cli("models", "info", "some-org/some-model", env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    assert "some-org/some-model" in proc.stderr and "Hugging Face hub" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 2


@pytest.mark.slow
def test_pulled_model_is_a_plain_float_checkpoint(smollm_path):
    config = json.loads((smollm_path / "config.json").read_text())
    assert "quantization_config" not in config  # dequantised once; nothing GGUF-specific is left
    assert (smollm_path / "model.safetensors").exists() and (smollm_path / "tokenizer.json").exists()


def test_relative_workspace_stores_paths_that_work_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ws = init_workspace("rel-ws")
    assert ws.root.is_absolute() and ws.resolve("runs/x") == tmp_path / "rel-ws" / "runs" / "x"
    monkeypatch.chdir(tmp_path.parent)
    assert open_workspace(tmp_path / "rel-ws").resolve("runs/x") == tmp_path / "rel-ws" / "runs" / "x"
