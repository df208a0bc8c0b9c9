"""Self-instruct from the shared Alpaca seeds against a deterministic fake teacher (real HTTP)."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from conftest import run_cli, shared_data
from fake_openai import FakeOpenAI, last_user
from protege.data.records import load_records
from protege.errors import DataError
from protege.teachers.selfinstruct import (
    instruction_problem,
    load_seeds,
    parse_instance,
    parse_numbered,
    rouge_l,
    rouge_tokens,
)
from protege.workspace import open_workspace

NEW = [
    "Classify the sentiment of the given movie review as positive or negative.",
    "Summarise the following paragraph in one sentence for a busy executive.",
    "Translate the given English proverb into plain modern Spanish.",
    "Suggest three names for a bakery that sells only sourdough bread.",
    "Classify whether the given sentence contains sarcasm.",
    "Explain why the sky appears blue to a ten year old child.",
    "List five questions a journalist should ask a new city mayor.",
    "Rewrite the given recipe step so it uses metric units.",
    "Is the following number prime? Answer yes or no.",
    "Compose a haiku about commuting by train in winter.",
    "Give a counterargument to the claim that homework is useless.",
    "Identify the logical fallacy in the given argument.",
    "Estimate how many tennis balls fit inside a school bus and explain your reasoning.",
    "Convert the given date from American to ISO format.",
    "Recommend a board game for four players who dislike luck.",
    "Write a polite reply declining a wedding invitation.",
]


def fake_teacher(body: dict) -> str:
    """Plausible, deterministic answers for each prompt of the pipeline."""
    prompt = last_user(body)
    if prompt.startswith("Come up with a series"):
        shown = re.findall(r"^\d+\. (.+)$", prompt, re.M)
        start = len(shown) + 1
        h = int(hashlib.sha256(prompt.encode()).hexdigest(), 16)
        picks = [NEW[(h + 3 * i) % len(NEW)] for i in range(4)]
        lines = [
            shown[0].rstrip(".?") + " please.",  # a near-copy of a seed: ROUGE-L drops it
            *picks,
            picks[0].replace("the given", "this"),  # a near-copy of a new one
            "Describe the picture below in detail.",  # needs an image
            "Say hi.",  # too short
        ]
        return "\n".join(f"{start + i}. {t}" for i, t in enumerate(lines))
    if prompt.startswith("Can the following task"):
        task = prompt.rsplit("Task: ", 1)[1]
        return "Yes" if task.startswith(("Classify", "Is ")) else "No"
    if prompt.startswith("Given the classification task"):
        return "Positive\nInput: I loved every minute of it."
    if prompt.startswith("Come up with an example"):
        return "This is an example input.\nOutput: This is the example output."
    raise AssertionError(f"unexpected prompt: {prompt[:80]}")


def test_rouge_l_and_filters():
    assert rouge_l(rouge_tokens("The cat sat."), rouge_tokens("the CAT sat")) == 1.0
    assert rouge_l(rouge_tokens("police killed the gunman"), rouge_tokens("the gunman kill police")) == 0.5
    assert rouge_l([], ["a"]) == 0.0
    assert instruction_problem("Describe the graph below.") is not None
    assert instruction_problem("Summarise the mapping of genes.") is None  # "map" as a word only
    assert instruction_problem("Hi there") == "too short"
    assert instruction_problem("Write a program that sorts a list.") is not None
    assert parse_numbered("9. First task\n10) Second task\nnoise\nTask 11: Third one") == [
        "First task",
        "Second task",
        "Third one",
    ]
    assert parse_instance("<noinput>\nOutput: 4", False) == {"input": "", "output": "4"}
    assert parse_instance("Negative\nInput: awful film\n\nTask: x", True) == {
        "input": "awful film",
        "output": "Negative",
    }


def test_load_seeds_names_bad_lines(tmp_path):
    bad = tmp_path / "seeds.jsonl"
    bad.write_text('{"instruction": "a b c d", "instances": []}\n{"instances": []}\n')
    with pytest.raises(DataError, match=r"seeds\.jsonl:2: instruction"):
        load_seeds(bad)


def test_self_instruct_from_shared_seeds_is_deduplicated_and_cached(ws):
    seeds_path = shared_data() / "alpaca-seed-tasks.jsonl"
    seeds = load_seeds(seeds_path)
    assert len(seeds) == 175 and any(s.is_classification for s in seeds)
    args = [
        "-w",
        str(ws.root),
        "synth",
        "self-instruct",
        "--seeds",
        str(seeds_path),
        "--num",
        "10",
        "--teacher",
        "t",
        "--json",
    ]
    with FakeOpenAI(fake_teacher) as fake:
        (ws.root / "protege.yaml").write_text(
            json.dumps({"teachers": {"t": {"base_url": fake.base_url, "model": "m"}}})
        )
        out = run_cli(*args)
        assert out.returncode == 0, out.stderr
        n_requests = len(fake.requests)
        again = run_cli(*args)
        assert again.returncode == 0 and len(fake.requests) == n_requests  # the same seed re-runs from the cache
    summary = json.loads(out.stdout)
    assert summary["tasks"] == 10 and json.loads(again.stdout)["cache_hits"] == n_requests
    dropped = summary["dropped"]
    assert dropped["ROUGE-L > 0.7 against the pool"] > 0 and dropped["too short"] > 0
    assert dropped["needs an image, file or other non-text input"] > 0

    records = load_records(open_workspace(ws.root).store, "self-instruct")
    instructions = [r.metadata["input"]["instruction"] for r in records]
    assert len(records) == 10 and set(instructions) <= set(NEW)  # every near-copy and bad one was dropped
    pool = [rouge_tokens(s.instruction) for s in seeds]
    for i, inst in enumerate(instructions):
        toks = rouge_tokens(inst)
        assert all(rouge_l(toks, other) <= 0.7 for other in pool + [rouge_tokens(x) for x in instructions[:i]])
    for r in records:
        if r.metadata["is_classification"]:  # output-first: the label came first, then an input for it
            assert r.completion == "Positive" and r.messages[0].content.endswith("I loved every minute of it.")
        else:
            assert r.completion == "This is the example output."
        assert r.provenance["teacher"] == "t" and r.provenance["model"] == "m"
    assert any(r.metadata["is_classification"] for r in records)
    assert any(not r.metadata["is_classification"] for r in records)
