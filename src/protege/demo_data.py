"""The demo's task and data, written by the project itself: customer-support messages to route to a team.

Deterministic (seeded) so every machine distils, trains and scores the same records. Messages are
built from per-team request phrasings with varied greetings, details and sign-offs; the held-out
set uses a different seed and keeps its gold team, which the student never sees in training
(it learns only from the teacher's answers to the unlabelled inputs).

Only `protege demo` uses this (it was in evaluate/, but it feeds the demo's first stages: the
teacher labels these inputs, the held-out set becomes a dataset), so it sits beside `demo.py`, above
every stage; it imports only the base (records, tasks).
"""

from __future__ import annotations

import json
import random
from importlib import resources
from pathlib import Path

from protege.data.records import Record
from protege.tasks import Task

LABELS = ["payment", "delivery", "account", "technical"]

REQUESTS: dict[str, list[str]] = {
    "payment": [
        "I was charged twice for my {plan} subscription this month",
        "my invoice for {month} shows the wrong amount, it says ${amount}",
        "please refund the ${amount} you took from my card",
        "why did my credit card get billed ${amount} when I cancelled",
        "I need a copy of the receipt for my payment in {month}",
        "the price went up to ${amount} without any notice, can I get a discount",
        "my payment keeps getting declined when I try to pay the bill",
        "can you change the card you charge for the {plan} plan",
        "there is an unknown charge of ${amount} on my bank statement from you",
        "I want my money back for the {plan} upgrade I never used",
        "how do I get a VAT invoice for the ${amount} I paid",
        "you billed me for {plan} but I am on the free plan",
    ],
    "delivery": [
        "my order #{order} has not arrived yet and it is {days} days late",
        "the tracking number for order #{order} does not work",
        "the courier left my parcel at the wrong address",
        "my package arrived damaged and the box was crushed",
        "when will my order #{order} be shipped",
        "can I change the delivery address for order #{order}",
        "the parcel says delivered but nothing came to my door",
        "only half of the items in order #{order} were in the box",
        "the shipment has been stuck in customs for {days} days",
        "can you send my order by express shipping instead",
        "the delivery driver never showed up during the time slot",
        "I received someone else's package instead of order #{order}",
    ],
    "account": [
        "I forgot my password and the reset email never comes",
        "I cannot log in to my account, it says my account is locked",
        "please change the email address on my account to {email}",
        "how do I delete my account and all my data",
        "someone else logged into my account from another country",
        "I want to change my username",
        "the two-factor code is not accepted when I sign in",
        "please merge my two accounts into one",
        "how can I update my phone number on my profile",
        "my account was suspended and I do not know why",
        "I never got the verification email to activate my account",
        "can I add my colleague {name} as a second user on my account",
    ],
    "technical": [
        "the app crashes every time I open the {feature} page",
        "I get error {code} when I try to export my data",
        "the website is very slow and pages keep timing out",
        "the {feature} button does nothing when I click it",
        "the mobile app shows a blank white screen after the update",
        "sync between my phone and laptop stopped working",
        "the API returns a {code} error for every request",
        "notifications stopped working on my phone since version {version}",
        "the {feature} feature freezes my browser",
        "uploading files fails halfway with a network error",
        "the dashboard charts do not load, just a spinning wheel",
        "after installing version {version} the app will not start",
    ],
}

GREETINGS = ["", "Hi, ", "Hello, ", "Hey there, ", "Good morning, ", "Hi team, ", "Dear support, "]
CLOSINGS = ["", " Thanks.", " Please help.", " Thank you!", " This is urgent.", " Any update?", " Regards, {name}."]
SLOTS = {
    "plan": ["Pro", "Basic", "Team", "Premium", "Family"],
    "month": ["January", "March", "April", "June", "September", "November"],
    "amount": ["19.99", "49", "120", "9.50", "299", "75"],
    "order": ["10234", "55871", "90412", "33019", "77120", "48213"],
    "days": ["3", "5", "7", "10", "14"],
    "email": ["sam@example.com", "lee.k@example.org", "maria@example.net"],
    "name": ["Sam", "Lee", "Maria", "Tom", "Aisha", "Jon"],
    "feature": ["reports", "settings", "search", "calendar", "invoices"],
    "code": ["500", "403", "E1042", "502", "404"],
    "version": ["3.2", "4.0.1", "2.9", "5.1"],
}


def task_path() -> Path:
    """The shipped support-routing task (also examples/tasks/support.yaml)."""
    return Path(str(resources.files("protege") / "assets" / "demo" / "support.yaml"))


def message(rng: random.Random, label: str) -> str:
    text = rng.choice(REQUESTS[label])
    text = text[0].upper() + text[1:] if not (greeting := rng.choice(GREETINGS)) else greeting + text
    text = (text + rng.choice([".", ".", "!", ""])) + rng.choice(CLOSINGS)
    for slot, values in SLOTS.items():
        text = text.replace("{" + slot + "}", rng.choice(values))
    return text


def generate(n: int, seed: int) -> list[dict[str, str]]:
    """`n` messages with their gold team, the teams balanced (round-robin, then shuffled)."""
    rng = random.Random(seed)
    rows = [{"message": message(rng, LABELS[i % len(LABELS)]), "label": LABELS[i % len(LABELS)]} for i in range(n)]
    rng.shuffle(rows)
    return rows


INPUTS_SEED, HELDOUT_SEED = 7, 1234


def heldout_rows(n: int) -> list[dict[str, str]]:
    """The held-out messages with their gold teams (the same on every machine)."""
    return generate(n, seed=HELDOUT_SEED)


def write_demo_data(folder: str | Path, n_inputs: int = 300, n_heldout: int = 100) -> dict[str, Path]:
    """inputs.jsonl (messages only: what the teacher labels) and heldout.jsonl (messages with gold teams)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"inputs": folder / "inputs.jsonl", "heldout": folder / "heldout.jsonl"}
    inputs = [{"message": r["message"]} for r in generate(n_inputs, seed=INPUTS_SEED)]
    _write(paths["inputs"], inputs)
    _write(paths["heldout"], heldout_rows(n_heldout))
    return paths


def heldout_records(task: Task, rows: list[dict[str, str]]) -> list[Record]:
    """Gold-labelled records in the project's convention (student prompt + answer, input kept)."""
    return [
        Record(
            messages=task.student_messages({"message": r["message"]}) + [{"role": "assistant", "content": r["label"]}],
            label=r["label"],
            metadata={"input": {"message": r["message"]}},
            provenance={"source": "protege demo (generated)", "line": i + 1},
            review="accepted",
            split="test",
        )
        for i, r in enumerate(rows)
    ]


def _write(path: Path, rows: list[dict[str, str]]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if not path.exists() or path.read_text() != text:  # unchanged files keep their times (and caches)
        path.write_text(text)
