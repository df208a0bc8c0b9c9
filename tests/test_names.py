"""One rule for names that become paths (datasets, runs, eval runs, adapters): whatever stage or
command takes the name, `..`, separators, a leading dot and control characters are refused."""

from __future__ import annotations

import json

import pytest

from conftest import ROOT, run_cli
from protege.data.records import Record, list_datasets, save_dataset
from protege.names import InvalidName, check_name, name_problem

BAD = {
    "": "empty",
    "   ": "empty",
    "..": "starts with a dot",
    ".": "starts with a dot",
    ".hidden": "starts with a dot",
    "../../etc/passwd": "path separator",
    "runs/x": "path separator",
    "C:\\temp": "path separator",
    "a\x00b": "control character",
    "line\nbreak": "control character",
    "bell\x07": "control character",
    "rtl\u202eexe.txt": "control character",
    " padded": "starts or ends with a space",
    "x" * 201: "longer than 200 bytes",
}
GOOD = ["emotion-distilled", "tmp.AbC123", "eval-emotion-20240101-120000", "émotion_v2", "a b", "x" * 200, "v1.2.3"]


@pytest.mark.parametrize("name", sorted(BAD), ids=repr)
def test_bad_names_are_refused_saying_why(name):
    with pytest.raises(InvalidName) as err:
        check_name(name, "eval name")
    assert str(err.value).startswith(f"eval name {name!r} is not allowed: ")
    assert BAD[name] in str(err.value) and err.value.exit_code == 2
    assert isinstance(err.value, ValueError)  # so a pydantic field validator reports it per field


@pytest.mark.parametrize("name", GOOD)
def test_ordinary_names_pass(name):
    assert check_name(name) == name and name_problem(name) is None


def test_an_eval_name_is_checked_before_anything_is_written(ws, tmp_path):
    from protege.evaluate.runner import run_eval
    from protege.tasks import load_task

    (ws.root / "protege.yaml").write_text(json.dumps({"teachers": {"t": {"base_url": "http://127.0.0.1:9/v1",
                                                                            "model": "m"}}}))  # fmt: skip
    from protege.workspace import open_workspace

    ws = open_workspace(ws.root)
    record = Record(messages=[{"role": "user", "content": "Tweet: x"}, {"role": "assistant", "content": "joy"}])
    save_dataset(ws.store, "gold", [record.model_copy(update={"label": "joy"})])
    task = load_task(ROOT / "examples" / "tasks" / "emotion.yaml")
    with pytest.raises(InvalidName, match="eval name '../../escape'"):
        run_eval(ws, task, "gold", {"t": "t"}, name="../../escape")
    assert not (ws.artifacts / "escape").exists() and not (ws.root / "escape").exists()
    assert ws.store.query("SELECT COUNT(*) FROM runs")[0][0] == 0


def test_a_run_name_is_checked_before_training(ws):
    from protege.train.config import TrainConfig
    from protege.train.run import train

    cfg = TrainConfig(base="no-such-model", data={"train": "nothing"}, output="runs/x", name="../x")
    with pytest.raises(InvalidName, match="run name '../x'"):
        train(cfg, ws)


def test_logs_export_refuses_a_bad_name(ws):
    r = run_cli("-w", str(ws.root), "logs", "export", "--name", "../x")
    assert r.returncode == 2 and "--name '../x' is not allowed" in r.stderr
    assert list_datasets(ws.store) == []
