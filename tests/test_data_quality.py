"""Quality checks on real tweets: planted duplicates are found, planted contamination is removed,
splits are stratified and reproducible, token lengths use the model's tokenizer; and the CLI
commands that derive datasets record their lineage."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from conftest import ROOT, run_cli, shared_data
from protege.data import quality
from protege.data.importers import import_file
from protege.data.records import Record, list_datasets, load_records, save_dataset
from protege.data.report import dataset_stats
from protege.tasks import load_task

TASK = ROOT / "examples" / "tasks" / "emotion.yaml"


def _tweets(split: str = "train", n: int | None = None) -> list[dict]:
    lines = (shared_data() / "tweeteval-emotion" / f"{split}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines[:n]]


def _record(text: str, label: str | None = None) -> Record:
    messages = [{"role": "user", "content": text}] + ([{"role": "assistant", "content": label}] if label else [])
    return Record(messages=messages, label=label)


def _records(rows: list[dict]) -> list[Record]:
    return [_record(r["text"], r["label"]) for r in rows]


def test_planted_near_duplicates_are_found():
    rows = _tweets(n=300)
    records = _records(rows)
    # Real-world kinds of near copies of tweets 10, 50 and 120: a retweet prefix, one word changed,
    # an extra hashtag; and an exact copy of tweet 200 in other case and punctuation.
    planted = {
        10: "RT @someone: " + rows[10]["text"],
        50: rows[50]["text"].replace(rows[50]["text"].split()[len(rows[50]["text"].split()) // 2], "banana", 1),
        120: rows[120]["text"] + " #blessed",
    }
    for source, text in planted.items():
        records.append(_record(text, rows[source]["label"]))
    records.append(_record(rows[200]["text"].upper() + " !!!", rows[200]["label"]))
    exact = quality.exact_duplicates(records)
    assert [200, 303] in exact
    clusters = quality.near_duplicates(records, threshold=0.7)
    by_member = {i: c["indices"] for c in clusters for i in c["indices"]}
    for k, source in enumerate(planted):
        assert source in by_member and 300 + k in by_member[source], (source, clusters)
    assert all(c["similarity"] >= 0.7 for c in clusters)

    kept, report = quality.dedup(records, near=True, threshold=0.7)
    assert report["removed"] == len(records) - len(kept) >= 4
    kept_texts = {r.messages[0].content for r in kept}
    assert not any(text in kept_texts for text in planted.values())  # the copies go, the originals stay
    assert all(rows[i]["text"] in kept_texts for i in planted)


def test_decontamination_removes_planted_overlaps():
    train_rows, eval_rows = _tweets("train", 400), _tweets("test", 100)
    long_eval = [r for r in eval_rows if len(r["text"].split()) >= 15][:3]
    train = _records(train_rows)
    planted = []
    for r in long_eval:  # an evaluation tweet quoted inside a training example
        planted.append(len(train))
        train.append(_record("Quote of the day: " + r["text"] + " - so true", r["label"]))
    kept, report = quality.decontaminate(train, _records(eval_rows), n=13)
    removed = [m["index"] for m in report["matches"]]
    assert removed == planted
    assert len(kept) == 400 and report["removed"] == 3

    # a short evaluation item (fewer than n words) counts when it is copied whole
    short = _record("Monday again, great", "anger")
    kept, report = quality.decontaminate([_record("monday AGAIN great!!", "anger")], [short], n=13)
    assert kept == [] and report["removed"] == 1


def test_stratified_split_is_proportional_and_reproducible():
    records = _records(_tweets())
    a = quality.stratified_split(records, val=0.1, test=0.1, seed=0)
    b = quality.stratified_split(records, val=0.1, test=0.1, seed=0)
    c = quality.stratified_split(records, val=0.1, test=0.1, seed=1)
    assert [r.split for r in a] == [r.split for r in b]
    assert [r.split for r in a] != [r.split for r in c]
    assert [r.messages for r in a] == [r.messages for r in records]  # same order, only `split` set
    totals = Counter(r.label for r in records)
    for split, share in (("val", 0.1), ("test", 0.1), ("train", 0.8)):
        counts = Counter(r.label for r in a if r.split == split)
        for label, total in totals.items():
            assert abs(counts[label] - share * total) <= 1, (split, label)
    with pytest.raises(ValueError):
        quality.stratified_split(records, val=0.6, test=0.5)


def test_token_lengths_use_the_model_tokenizer(tiny_model):
    from transformers import AutoTokenizer

    records = _records(_tweets(n=50))
    stats = dataset_stats(records, model=str(tiny_model), max_length=40)
    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    expected = [
        len(
            tok(
                tok.apply_chat_template([m.model_dump() for m in r.messages], tokenize=False), add_special_tokens=False
            )["input_ids"]
        )
        for r in records
    ]
    lengths = stats["lengths"]
    assert stats["length_unit"] == "tokens" and lengths["max"] == max(expected) and lengths["min"] == min(expected)
    assert lengths["over_max_length"] == [i for i, n in enumerate(expected) if n > 40]
    assert sum(h["count"] for h in lengths["histogram"]) == 50
    assert stats["labels"] == dict(Counter(r.label for r in records).most_common())
    assert quality.context_window(tok, tiny_model) == 1024  # the model config's, the default --max-length


def test_cli_dedup_split_decontaminate_stats_show(ws, tmp_path):
    rows = _tweets(n=60)
    data = tmp_path / "emo.jsonl"
    dupes = [rows[3], {"text": rows[5]["text"].upper(), "label": rows[5]["label"]}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows + dupes))
    import_file(ws.store, data, task=load_task(TASK))

    r = run_cli("data", "dedup", "emo", "--near", "--threshold", "0.9", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["dataset"] == "emo@2" and report["removed"] >= 2
    assert [3, 60] in report["exact_clusters"] and [5, 61] in report["exact_clusters"]

    r = run_cli("data", "split", "emo", "--val", "0.2", "--test", "0.2", "--seed", "3", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["dataset"] == "emo@3"

    save_dataset(ws.store, "emo-eval", [_record(rows[7]["text"], rows[7]["label"])])
    r = run_cli("data", "decontaminate", "emo", "--against", "emo-eval", "--n", "8", "--name", "emo-clean", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["removed"] == 1

    infos = {f"{d['name']}@{d['version']}": d for d in list_datasets(ws.store)}
    assert infos["emo@2"]["parents"] == [infos["emo@1"]["id"]] and infos["emo@2"]["source"]["kind"] == "dedup"
    assert infos["emo@3"]["parents"] == [infos["emo@2"]["id"]]
    assert infos["emo-clean@1"]["parents"] == [infos["emo@3"]["id"]]
    splits = Counter(r.split for r in load_records(ws.store, "emo-clean"))
    assert set(splits) == {"train", "val", "test"}

    r = run_cli("data", "stats", "emo@3")
    assert r.returncode == 0 and "labels" in r.stdout and "length histogram" in r.stdout

    r = run_cli("data", "show", "emo", "--where", "label=joy", "--where", "split=val", "--json")
    shown = json.loads(r.stdout)
    assert shown and all(x["label"] == "joy" and x["split"] == "val" for x in shown)
    assert shown[0]["messages"][0]["content"].startswith("Tweet: ")
    assert run_cli("data", "show", "emo", "--where", "colour=red").returncode == 2
    assert run_cli("data", "split", "emo", "--val", "0.7", "--test", "0.5").returncode == 2


def test_cli_export_then_import(ws, tmp_path):
    import_file(ws.store, ROOT / "examples" / "data" / "emotion_sample.csv", name="csv-emo")
    out = tmp_path / "emo.jsonl"
    assert run_cli("data", "export", "csv-emo", "--format", "openai-chat", "--out", str(out)).returncode == 0
    r = run_cli("data", "import", str(out), "--name", "chat-emo", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["source"]["format"] == "openai-chat"
    a, b = load_records(ws.store, "csv-emo"), load_records(ws.store, "chat-emo")
    assert [(x.messages, x.label, x.metadata) for x in a] == [(x.messages, x.label, x.metadata) for x in b]
