"""Datasets in and out: the shared public datasets import, every format round-trips, and bad rows
are reported with their line and leave the database as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ROOT, run_cli, shared_data
from protege.data.export import EXPORT_FORMATS, export_records
from protege.data.importers import InvalidData, convert_source, detect_format, import_file
from protege.data.records import Record, get_dataset, list_datasets, load_records, save_dataset
from protege.errors import UserError
from protege.tasks import load_task

EXAMPLES = ROOT / "examples" / "data"
TASK = ROOT / "examples" / "tasks" / "emotion.yaml"


def _count_rows(ws) -> tuple[int, int]:
    return (
        ws.store.query("SELECT COUNT(*) FROM datasets")[0][0],
        ws.store.query("SELECT COUNT(*) FROM records")[0][0],
    )


# ---- the shared public datasets -----------------------------------------------------------------


def test_import_tweeteval_train_with_task(ws):
    path = shared_data() / "tweeteval-emotion" / "train.jsonl"
    task = load_task(TASK)
    info = import_file(ws.store, path, mapping={"input": "text", "label": "label"}, task=task)
    assert info["name"] == "train" and info["n_records"] == 3257 and info["skipped"] == []
    records = load_records(ws.store, "train")
    assert {r.label for r in records} == {"anger", "joy", "optimism", "sadness"}
    first_row = json.loads(path.read_text().splitlines()[0])
    r = records[0]
    assert [m.role for m in r.messages] == ["user", "assistant"]
    assert r.messages[0].content == "Tweet: " + first_row["text"].strip()
    assert r.completion == r.label == first_row["label"]
    assert r.metadata["input"] == first_row  # the full row, so the template can be rendered again
    assert task.render(r.metadata["input"]) == r.messages[0].content
    assert r.provenance["source"] == str(path) and r.provenance["line"] == 1
    assert records[100].provenance["line"] == 101


def test_import_alpaca_seed_tasks_first_instance(ws):
    path = shared_data() / "alpaca-seed-tasks.jsonl"
    assert detect_format(path) == "alpaca"
    info = import_file(ws.store, path)
    assert info["n_records"] == 175
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    records = load_records(ws.store, "alpaca-seed-tasks")
    for row, r in zip(rows, records, strict=True):
        inst = row["instances"][0]
        assert r.completion == inst["output"]
        assert r.messages[0].content.startswith(row["instruction"].rstrip())
        if inst["input"].strip():
            assert r.messages[0].content.endswith(inst["input"].lstrip())
        assert r.metadata["id"] == row["id"] and r.metadata["is_classification"] == row["is_classification"]


def test_import_davinci_outputs_as_teacher_answers(ws):
    path = shared_data() / "davinci003-user-instructions.jsonl"
    info = import_file(ws.store, path, fmt="alpaca", mapping={"output": "teacher_output"})
    assert info["n_records"] == 152
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    records = load_records(ws.store, info["name"])
    for row, r in zip(rows, records, strict=True):
        assert r.completion == row["teacher_output"]
        assert row["input"].strip() in r.messages[0].content
        assert r.metadata["reference_output"] == row["reference_output"]
        assert r.metadata["input"] == {"instruction": row["instruction"], "input": row["input"]}


# ---- round trips --------------------------------------------------------------------------------


def _sample_records() -> list[Record]:
    return [
        Record(
            messages=[
                {"role": "system", "content": "Classify the emotion."},
                {"role": "user", "content": 'Tweet: "so happy", she said,\nand left'},
                {"role": "assistant", "content": "joy"},
            ],
            label="joy",
            metadata={"input": {"text": '"so happy", she said,\nand left', "id": 7}, "tags": ["a", "b"]},
            provenance={"teacher": "gpt", "cost": 0.001},
            review="accepted",
            review_note="checked by hand, clearly joy",
            reviewed_at=1712345678.25,
            split="train",
        ),
        Record(
            messages=[
                {"role": "user", "content": "Übersetze: la bibliothèque ouvre à neuf heures"},
                {"role": "assistant", "content": "Die Bibliothek öffnet um neun Uhr."},
            ],
            metadata={},
        ),
        Record(
            messages=[
                {"role": "user", "content": "Translate the sentence into French.\n\nThe library opens at nine."},
                {"role": "assistant", "content": "La bibliothèque ouvre à neuf heures."},
            ],
            metadata={
                "input": {"instruction": "Translate the sentence into French.", "input": "The library opens at nine."}
            },
            review="edited",
        ),
    ]


def _multi_turn() -> Record:
    return Record(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "A prime between 10 and 20?"},
            {"role": "assistant", "content": "13"},
            {"role": "user", "content": "Another?"},
            {"role": "assistant", "content": "17"},
        ],
        metadata={"conversation": 3},
    )


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_export_then_import_is_lossless(ws, tmp_path, fmt):
    records = _sample_records() + ([] if fmt in ("jsonl", "csv") else [_multi_turn()])
    suffix = {"csv": ".csv", "parquet": ".parquet", "hf": "", "alpaca": ".json", "sharegpt": ".json"}.get(fmt, ".jsonl")
    out = export_records(records, fmt, tmp_path / f"export{suffix}")
    detected = detect_format(out)
    assert detected == fmt
    info = import_file(ws.store, out, name="back")  # format detected, no mapping given
    back = load_records(ws.store, "back")
    assert info["n_records"] == len(records)
    for a, b in zip(records, back, strict=True):
        assert b.messages == a.messages
        assert (b.label, b.metadata, b.split) == (a.label, a.metadata, a.split)
        assert (b.review, b.review_note, b.reviewed_at) == (a.review, a.review_note, a.reviewed_at)
        assert a.provenance.items() <= b.provenance.items()  # plus the new source file and line
        assert b.provenance["source"] == str(out)


def test_alpaca_export_recovers_instruction_and_input(ws, tmp_path):
    import_file(ws.store, EXAMPLES / "alpaca_sample.json", name="alpaca")
    out = export_records(load_records(ws.store, "alpaca"), "alpaca", tmp_path / "a.json")
    original = json.loads((EXAMPLES / "alpaca_sample.json").read_text())
    exported = json.loads(out.read_text())
    for a, b in zip(original, exported, strict=True):
        assert {k: b[k] for k in ("instruction", "input", "output")} == a


def test_flat_export_refuses_multi_turn(tmp_path):
    from protege.errors import DataError

    with pytest.raises(DataError, match="record 0: a flat table holds one user turn"):
        export_records([_multi_turn()], "csv", tmp_path / "x.csv")


def test_hf_folder_with_class_labels(ws, tmp_path):
    import datasets

    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["anger", "joy", "optimism", "sadness"])}
    )
    ds = datasets.Dataset.from_dict({"text": ["grr", "yay", "meh"], "label": [0, 1, 3]}, features=features)
    ds.save_to_disk(str(tmp_path / "emo"))
    info = import_file(ws.store, tmp_path / "emo", mapping={"input": "text", "label": "label"}, task=load_task(TASK))
    assert info["name"] == "emo"
    records = load_records(ws.store, "emo")
    assert [r.label for r in records] == ["anger", "joy", "sadness"]
    assert records[0].messages[0].content == "Tweet: grr"
    assert records[2].provenance["line"] == 3


def test_hub_id_unreachable_is_one_line_usage_error(ws):
    with pytest.raises(UserError, match="not a local dataset and the hub could not provide it") as err:
        import_file(ws.store, "nobody-here/no-such-dataset", fmt="hf")
    assert "\n" not in str(err.value)


# ---- invalid data -------------------------------------------------------------------------------

BAD_LINES = [
    '{"text": "Finally finished my thesis!", "label": "joy"}',
    '{"text": "Nobody ever listens to me", "label": "anger"',
    '{"label": "sadness"}',
    '{"text": 42, "label": "joy"}',
    '{"text": "What a day", "label": "surprise"}',
    '{"text": "   ", "label": "joy"}',
    '{"text": "Back to work tomorrow", "label": "optimism"}',
]


def test_malformed_rows_are_reported_by_line_and_nothing_is_written(ws, tmp_path):
    import_file(ws.store, EXAMPLES / "emotion_sample.jsonl", task=load_task(TASK))
    before = _count_rows(ws)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(BAD_LINES) + "\n")
    with pytest.raises(InvalidData) as err:
        import_file(ws.store, bad, mapping={"input": "text", "label": "label"}, task=load_task(TASK))
    found = [(p.line, p.field) for p in err.value.problems]
    assert found == [(2, "json"), (3, "text"), (4, "text"), (5, "label"), (6, "text")]
    messages = [str(p) for p in err.value.problems]
    assert messages[0].startswith(f"{bad}:2: json: invalid JSON")
    assert messages[1] == f"{bad}:3: text: missing"
    assert messages[2] == f"{bad}:4: text: expected a string, got a number"
    assert "'surprise' is not one of the labels" in messages[3]
    assert _count_rows(ws) == before  # the database is unchanged

    info = import_file(
        ws.store, bad, mapping={"input": "text", "label": "label"}, task=load_task(TASK), skip_invalid=True
    )
    assert info["n_records"] == 2 and [p["line"] for p in info["skipped"]] == [2, 3, 4, 5, 6]
    assert [r.provenance["line"] for r in load_records(ws.store, "bad")] == [1, 7]


def test_chat_formats_report_roles_and_empty_turns(tmp_path):
    sharegpt = tmp_path / "chats.json"
    sharegpt.write_text(
        "[\n"
        '  {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},\n'
        '  {"conversations": [{"from": "human", "value": "hi"}, {"from": "tool", "value": "x"}]},\n'
        '  {"conversations": [{"from": "human", "value": ""}, {"from": "gpt", "value": "?"}]},\n'
        '  {"conversations": "not a list"}\n'
        "]\n"
    )
    result = convert_source(sharegpt)
    assert result.format == "sharegpt" and len(result.records) == 1
    assert [str(p).split(": ", 1)[0].rsplit(":", 1)[1] for p in result.problems] == ["3", "4", "5"]
    assert [(p.field, p.message) for p in result.problems] == [
        ("conversations[1].from", "unknown role 'tool' (expected human, gpt or system)"),
        ("messages[0].content", "empty user turn"),
        ("conversations", "expected a list, got a string"),
    ]
    chat = tmp_path / "chat.jsonl"
    chat.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]}\n')
    (problem,) = convert_source(chat).problems
    assert str(problem) == f"{chat}:1: messages[1].role: unknown role 'robot' (expected system, user or assistant)"


def test_cli_import_validate_exit_codes(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(BAD_LINES) + "\n")
    r = run_cli("data", "validate", str(bad), "--task", str(TASK))
    assert r.returncode == 1
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 5 and lines[0].startswith(f"{bad}:2: json:") and lines[1] == f"{bad}:3: text: missing"

    r = run_cli("data", "import", str(bad), "--task", str(TASK))
    assert r.returncode == 1 and f"{bad}:5: label:" in r.stderr
    assert json.loads(run_cli("data", "list", "--json").stdout) == []

    r = run_cli("data", "import", str(bad), "--skip-invalid", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["n_records"] == 3  # no task: "surprise" is fine

    assert run_cli("data", "import", str(bad), "--format", "yaml").returncode == 2
    assert run_cli("data", "export", "bad", "--format", "csv").returncode == 2  # --out missing
    assert run_cli("data", "export", "nope", "--format", "csv", "--out", "x.csv").returncode == 2


def test_usage_errors_are_user_errors(tmp_path):
    from protege.data.importers import parse_mapping

    with pytest.raises(UserError, match="expected FIELD=COLUMN"):
        parse_mapping("input")
    with pytest.raises(UserError, match="file not found"):
        convert_source(tmp_path / "missing.jsonl")
    with pytest.raises(UserError, match="alpaca has no field 'label'"):
        convert_source(EXAMPLES / "alpaca_sample.json", mapping={"label": "output"})


def test_examples_all_import(ws):
    for path in sorted(Path(EXAMPLES).iterdir()):
        if path.suffix in (".json", ".jsonl", ".csv") and "invalid" not in path.name:
            info = import_file(ws.store, path)
            assert info["n_records"] >= 2, path
    names = {d["name"] for d in list_datasets(ws.store)}
    assert {"alpaca_sample", "dolly_sample", "sharegpt_sample", "openai_chat_sample", "emotion_sample"} <= names


# ---- versions and exports that lose nothing, and leak no rejects -------------------------------


def test_a_resave_that_changes_only_review_data_or_provenance_is_a_new_version(ws):
    records = _sample_records()
    first = save_dataset(ws.store, "d", records)
    assert save_dataset(ws.store, "d", _sample_records())["version"] == first["version"]  # same content

    changes = [
        {"review": "rejected"},
        {"review_note": "wrong label"},
        {"reviewed_at": 1712345999.0},
        {"provenance": {"teacher": "other"}},
        {"metadata": {"input": {"text": "x"}}},
    ]
    versions = [first["version"]]
    for change in changes:
        changed = [r.model_copy(update=change) if i == 1 else r for i, r in enumerate(_sample_records())]
        info = save_dataset(ws.store, "d", changed)
        versions.append(info["version"])
        back = load_records(ws.store, f"d@{info['version']}")[1]
        assert all(getattr(back, k) == v for k, v in change.items()), change  # stored, not dropped
    assert versions == [1, 2, 3, 4, 5, 6]
    # saving the first content again makes it the latest, rather than returning the old version 1
    assert save_dataset(ws.store, "d", _sample_records())["version"] == 7
    assert get_dataset(ws.store, "d")["hash"] == first["hash"]


def _mixed_review_dataset(ws) -> None:
    base = {"messages": [{"role": "user", "content": "Tweet: x"}, {"role": "assistant", "content": "joy"}]}
    records = [
        Record(**base, label="joy", review="accepted"),
        Record(**base, label="joy", review="pending"),
        Record(**base, label="joy", review="edited", review_note="fixed"),
        Record(**{**base, "messages": [base["messages"][0], {"role": "assistant", "content": "Banana."}]},
               review="rejected", provenance={"rejected_reason": "not one of the labels"}),
    ]  # fmt: skip
    save_dataset(ws.store, "mixed", records)


def test_export_leaves_rejected_records_out_unless_asked(ws, tmp_path):
    _mixed_review_dataset(ws)

    def exported(*status: str) -> list[str]:
        out = tmp_path / "out.jsonl"
        r = run_cli("-w", str(ws.root), "data", "export", "mixed", "-f", "openai-chat", "-o", str(out), *status)
        assert r.returncode == 0, r.stderr
        return [json.loads(line).get("review", "pending") for line in out.read_text().splitlines()]

    assert exported() == ["accepted", "pending", "edited"]
    assert exported("--status", "all") == ["accepted", "pending", "edited", "rejected"]
    assert exported("--status", "rejected") == ["rejected"]
    assert exported("--status", "accepted,edited") == ["accepted", "edited"]
    r = run_cli("-w", str(ws.root), "data", "export", "mixed", "-f", "csv", "-o", "x.csv", "--status", "approved")
    assert r.returncode == 2 and "--status" in r.stderr


def test_names_that_would_become_bad_paths_are_refused(ws, tmp_path):
    from protege.names import InvalidName

    records = _sample_records()
    for bad in ["../evil", "a/b", "a\\b", "..", ".hidden", "", "tab\there", " padded"]:
        with pytest.raises(InvalidName, match="dataset name"):
            save_dataset(ws.store, bad, records)
    assert list_datasets(ws.store) == []
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "hi", "label": "joy"}\n')
    for bad in ["../../etc", ".x", "a/b"]:
        r = run_cli("-w", str(ws.root), "data", "import", str(src), "--name", bad)
        assert r.returncode == 2 and f"--name {bad!r} is not allowed" in r.stderr, r.stderr
    assert list_datasets(ws.store) == []
    assert save_dataset(ws.store, "tmp.abc-émotion_2", records)["version"] == 1  # dots inside, unicode: fine
