"""The CLI's structure: every stage's commands import on their own, `python -m protege` runs, and
config docstrings reach the JSON Schema and `protege train --help`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import run_cli
from protege.config import Strict, WorkspaceConfig, field_docs, load_yaml_model
from protege.errors import UserError
from protege.tasks import Task
from protege.train.config import TrainConfig, load_train_config

STAGES = ["data", "teachers", "review", "train", "evaluate", "serve"]


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_cli_imports_first_in_a_fresh_interpreter(stage):
    proc = _fresh(f"import protege.{stage}.cli as m; assert callable(m.register)")
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_shared_options_import_no_stage():
    code = "import json, sys, protege.cli_options; print(json.dumps([m for m in sys.modules if m[:8] == 'protege.']))"
    proc = _fresh(code)
    assert proc.returncode == 0, proc.stderr
    loaded = {m.split(".")[1] for m in json.loads(proc.stdout)}
    assert loaded and not loaded & set(STAGES), loaded


@pytest.mark.parametrize("module", ["protege", "protege.cli"])
def test_python_dash_m_runs_the_cli(module):
    proc = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("protege "), proc.stderr


def _config_models() -> list[type[Strict]]:
    seen, todo = [], [WorkspaceConfig, Task, TrainConfig]
    while todo:
        model = todo.pop()
        if model not in seen:
            seen.append(model)
            todo += [a for f in model.model_fields.values() for a in _models_in(f.annotation)]
    return seen


def _models_in(annotation) -> list[type[Strict]]:
    if isinstance(annotation, type) and issubclass(annotation, Strict):
        return [annotation]
    return [m for a in getattr(annotation, "__args__", ()) for m in _models_in(a)]


def test_every_config_field_has_its_docstring_in_the_schema():
    models = _config_models()
    assert {m.__name__ for m in models} >= {"TrainConfig", "LoraConfig", "TeacherConfig", "Price", "OutputSpec"}
    for model in models:
        props = model.model_json_schema()["properties"]
        undocumented = [name for name, p in props.items() if not p.get("description")]
        assert not undocumented, f"{model.__name__}: {undocumented}"
    lora = TrainConfig.model_json_schema()["$defs"]["LoraConfig"]["properties"]["r"]
    assert lora["description"] == "Rank of the low-rank update." and lora["minimum"] == 1


def test_train_help_lists_every_config_key_and_schema_prints_it():
    proc = run_cli("train", "--help", env={"COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    for row in field_docs(TrainConfig):
        assert row["key"] in proc.stdout, row["key"]
    assert "lora.r int (>= 1) = 16" in proc.stdout and "Rank of the low-rank update." in proc.stdout
    schema = run_cli("train", "--schema")  # no CONFIG needed
    assert schema.returncode == 0, schema.stderr
    assert json.loads(schema.stdout) == TrainConfig.model_json_schema()


@pytest.mark.parametrize(
    "line,field",
    [("batch_size: 0", "batch_size"), ("lora: {r: 0}", "lora.r"), ("kd: {alpha: 1.5}", "kd.alpha")],
)
def test_out_of_range_train_values_name_file_line_and_field(tmp_path, line, field):
    path = tmp_path / "train.yaml"
    path.write_text(f"base: m\ndata: {{train: x.jsonl}}\n{line}\n")
    with pytest.raises(UserError, match=rf"train.yaml:3: {field}: Input should be"):
        load_train_config(path)


def test_out_of_range_teacher_value_names_file_line_and_field(tmp_path):
    path = tmp_path / "protege.yaml"
    path.write_text("teachers:\n  t:\n    model: m\n    max_tokens: 0\n")
    with pytest.raises(UserError, match=r"protege.yaml:4: teachers.t.max_tokens: Input should be greater than or"):
        load_yaml_model(path, WorkspaceConfig)
