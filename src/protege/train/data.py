"""Training examples as token ids: chat template, loss on assistant tokens only, truncation counted,
and packing into padding-free rows whose examples cannot see each other.

Pure functions (no model, no workspace) except `load_conversations`, so each step is testable alone.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from protege.data.files import read_rows
from protege.errors import DataError, UserError
from protege.models.choice import answer_tokens


@dataclass
class Example:
    input_ids: list[int]
    trained: list[bool]
    """trained[t]: token t is a target (predicted from position t-1)."""
    truncated: bool = False

    @property
    def n_targets(self) -> int:
        return sum(self.trained)


@dataclass
class Conversations:
    """What a data source yields: chats plus what the model card and classifier need."""

    chats: list[list[dict[str, str]]]
    labels: list[str | None]
    source: dict[str, Any] = field(default_factory=dict)
    """name/path, version, hash, n, provenance summary (teachers, terms)."""


# ---- loading ------------------------------------------------------------------------------------
def load_conversations(
    spec: str,
    task: Any | None,
    store: Any | None,
    split: str | None = None,
    limit: int | None = None,
    review: list[str] | None = None,
) -> Conversations:
    """A workspace dataset (`name`, `name@3`; review == rejected left out) or a JSONL file of
    `{"text","label"}` (rendered through `task.student_messages`) or `{"messages"}` rows.
    With `review`, a dataset's records as their reviews left them, only those with one of these
    current statuses (protege.review.export.reviewed_records)."""
    path = Path(spec).expanduser()
    if path.suffix in (".jsonl", ".json") or path.is_file():
        if not path.is_file():
            raise UserError(f"{spec}: data file not found")
        return _from_jsonl(path, task, limit)
    if store is None:
        raise UserError(f"{spec}: not a file, and no workspace to look the dataset up in")
    from protege.data.records import get_dataset, load_records

    info = get_dataset(store, spec)
    if review:
        from protege.review.export import reviewed_records

        records = reviewed_records(store, f"{info['name']}@{info['version']}", review)
        records = [r for r in records if split is None or r.split == split][:limit]
    else:
        records = load_records(store, f"{info['name']}@{info['version']}", split=split)
        records = [r for r in records if r.review != "rejected"][:limit]
    chats, labels = [], []
    for r in records:
        msgs = [m.model_dump() for m in r.messages]
        chats.append(msgs)
        labels.append(r.label if r.label is not None else r.completion)
    teachers = sorted({str(r.provenance.get("teacher")) for r in records if r.provenance.get("teacher")})
    terms = sorted({str(r.provenance["terms"]) for r in records if r.provenance.get("terms")})
    source = {
        "dataset": info["name"],
        "version": info["version"],
        "hash": info["hash"],
        "n": len(chats),
        **({"review": list(review), "review_upto": _last_action(store, info["name"])} if review else {}),
        "teachers": teachers,
        "terms": terms,
        "source": info.get("source"),
    }
    return Conversations(chats, labels, source)


def _last_action(store: Any, dataset: str) -> int | None:
    """The id of the latest review action on `dataset`: with the version, what the examples were."""
    return store.query("SELECT MAX(id) FROM review_actions WHERE dataset=?", (dataset,))[0][0]


def _from_jsonl(path: Path, task: Any | None, limit: int | None) -> Conversations:
    chats: list[list[dict[str, str]]] = []
    labels: list[str | None] = []
    for lineno, row in islice(read_rows(path), limit):
        chat, label = _row_to_chat(row, task, path, lineno)
        chats.append(chat)
        labels.append(label)
    digest = hashlib.sha256(path.read_bytes())
    if not chats:
        raise DataError(f"{path}: no examples")
    return Conversations(chats, labels, {"path": str(path), "sha256": digest.hexdigest(), "n": len(chats)})


def _row_to_chat(row: dict[str, Any], task: Any | None, path: Path, lineno: int) -> tuple[list[dict], str | None]:
    if "messages" in row:
        msgs = row["messages"]
        if not msgs or msgs[-1].get("role") != "assistant":
            raise DataError(f"{path}:{lineno}: messages: the last turn must be the assistant's answer")
        return msgs, row.get("label", msgs[-1]["content"])
    answer = row.get("label", row.get("output", row.get("completion")))
    if answer is None:
        raise DataError(f"{path}:{lineno}: needs `messages`, or input fields plus `label`/`output`")
    if task is None:
        raise UserError(f"{path}: rows without `messages` need a `task` in the config to render the prompt")
    fields = {k: v for k, v in row.items() if k not in ("label", "output", "completion")}
    answer = answer if isinstance(answer, str) else json.dumps(answer)
    return task.student_messages(fields) + [{"role": "assistant", "content": answer}], answer


# ---- tokenisation -------------------------------------------------------------------------------
def tokenize_chat(tok: Any, messages: list[dict[str, str]], max_length: int) -> Example:
    """Template the chat; train on every assistant turn's tokens up to and including its
    end-of-turn token, located by the one answer-token rule (models/choice.py's `answer_tokens`,
    which constrained-choice scoring uses too, so a label is scored as it was trained). Too long:
    the prompt loses its oldest tokens first, so the answer and its end-of-turn token survive;
    `truncated` records it."""
    ids: list[int] = []
    trained: list[bool] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        head, (answer,) = answer_tokens(tok, messages[:i], [m["content"]])
        if head[: len(ids)] != ids:
            raise DataError("the chat template is not prefix-stable; cannot locate assistant tokens")
        trained += [False] * (len(head) - len(ids)) + [True] * len(answer)
        ids = head + answer
    if not ids:
        raise DataError("a chat without an assistant turn has nothing to train on")
    return _truncate(Example(ids, trained), max_length)


def _truncate(ex: Example, max_length: int) -> Example:
    n = len(ex.input_ids)
    if n <= max_length:
        return ex
    first = ex.trained.index(True)
    cut = n - max_length
    if cut <= first - 1:  # drop oldest prompt tokens, keep at least one before the first target
        return Example(ex.input_ids[cut:], ex.trained[cut:], truncated=True)
    return Example(ex.input_ids[:max_length], ex.trained[:max_length], truncated=True)


def tokenize_all(tok: Any, chats: list[list[dict[str, str]]], max_length: int) -> tuple[list[Example], int]:
    """(examples, how many were truncated)."""
    examples = [tokenize_chat(tok, c, max_length) for c in chats]
    return examples, sum(e.truncated for e in examples)


# ---- batching -----------------------------------------------------------------------------------
def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """A reproducible shuffle: resume replays the very same order."""
    order = list(range(n))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return order


def shared_prefix(examples: list[Example]) -> int:
    """Tokens every example of the batch starts with (the system prompt and the user-turn header, often
    a third of a short classification example), stopping before any example's first target."""
    if len(examples) < 2:
        return 0
    limit = min(ex.trained.index(True) for ex in examples) - 1
    first = examples[0].input_ids
    p = 0
    while p < limit and all(ex.input_ids[p] == first[p] for ex in examples):
        p += 1
    return p


def collate(
    examples: list[Example], packing: bool = True, pad_id: int = 0, share_prefix: bool = True
) -> dict[str, Any]:
    """Tensors for one micro-batch.

    packing: one row, examples back to back, position_ids restarting at 0 for each. transformers
    turns restarting positions into a block-diagonal causal mask (masking_utils.
    find_packed_sequence_indices), so no example attends to another and no token is padding.
    share_prefix (with packing): the tokens all examples start with are computed once; each example's
    own tokens attend to that prefix and to themselves only (an explicit 4-D mask) with the positions
    they would have alone, so the logits are those of separate forwards, for less compute.
    Otherwise: rows padded to the longest.
    `pred_idx` (flat index of the position that predicts each target), `targets` and `example`
    (which example each target belongs to) let the loss skip the vocabulary head everywhere else.
    """
    import torch

    n_tokens = sum(len(e.input_ids) for e in examples)
    if packing:
        shared = shared_prefix(examples) if share_prefix else 0
        ids, pos, seg = list(examples[0].input_ids[:shared]), list(range(shared)), [-1] * shared
        pred, tgt, owner = [], [], []
        for k, ex in enumerate(examples):
            off = len(ids) - shared  # row index of this example's token `shared`, minus `shared`
            ids += ex.input_ids[shared:]
            pos += list(range(shared, len(ex.input_ids)))
            seg += [k] * (len(ex.input_ids) - shared)
            for t, on in enumerate(ex.trained):
                if on:
                    pred.append(off + t - 1)
                    tgt.append(ex.input_ids[t])
                    owner.append(k)
        batch = {"input_ids": torch.tensor([ids]), "position_ids": torch.tensor([pos]), "attention_mask": None}
        if shared:
            s = torch.tensor(seg)
            n = len(ids)
            causal = torch.ones(n, n, dtype=torch.bool).tril()
            visible = (s[None, :] == -1) | (s[None, :] == s[:, None])
            batch["attention_mask"] = (causal & visible)[None, None]
    else:
        width = max(len(e.input_ids) for e in examples)
        rows, masks, pred, tgt, owner = [], [], [], [], []
        for k, ex in enumerate(examples):
            n = len(ex.input_ids)
            rows.append(ex.input_ids + [pad_id] * (width - n))
            masks.append([1] * n + [0] * (width - n))
            for t, on in enumerate(ex.trained):
                if on:
                    pred.append(k * width + t - 1)
                    tgt.append(ex.input_ids[t])
                    owner.append(k)
        batch = {"input_ids": torch.tensor(rows), "attention_mask": torch.tensor(masks), "position_ids": None}
    batch["pred_idx"] = torch.tensor(pred, dtype=torch.long)
    batch["targets"] = torch.tensor(tgt, dtype=torch.long)
    batch["example"] = torch.tensor(owner, dtype=torch.long)
    batch["n_tokens"] = n_tokens  # tokens trained on, as if each example ran alone
    batch["computed_tokens"] = int(batch["input_ids"].numel())
    return batch
