"""Data quality as pure functions over records (the style of TRL's data_utils): duplicates,
near duplicates, contamination of training data by evaluation data, token lengths, splits.

None of these touch the database: the CLI loads records, calls one of these, and saves the result
as a new dataset version whose lineage points at the parent.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter, defaultdict
from typing import Any, Literal

from protege.data.records import Record
from protege.data.text import words

Part = Literal["all", "prompt", "completion"]


def record_text(record: Record, part: Part = "all") -> str:
    """The text a check looks at: the whole conversation, only what is asked, or only the answer."""
    if part == "prompt":
        return "\n".join(m["content"] for m in record.prompt)
    if part == "completion":
        return record.completion or ""
    return "\n".join(m.content for m in record.messages)


def normalise(text: str) -> str:
    """Case, Unicode form, punctuation and spacing do not make two texts different."""
    return " ".join(words(text))


def text_hash(text: str) -> str:
    return hashlib.sha256(normalise(text).encode()).hexdigest()


# ---- duplicates ---------------------------------------------------------------------------------


def exact_duplicates(records: list[Record], part: Part = "all") -> list[list[int]]:
    """Groups (of 2+ indices, first occurrence first) whose normalised text is identical."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[text_hash(record_text(r, part))].append(i)
    return [g for g in groups.values() if len(g) > 1]


def _shingles(text: str, k: int) -> set[str]:
    """Character k-grams of the normalised text: robust for short texts (tweets, instructions),
    where one changed word would break most word n-grams."""
    norm = normalise(text)
    if len(norm) <= k:
        return {norm}
    return {norm[i : i + k] for i in range(len(norm) - k + 1)}


def near_duplicates(
    records: list[Record],
    threshold: float = 0.8,
    part: Part = "all",
    num_perm: int = 128,
    shingle: int = 5,
    seed: int = 1,
) -> list[dict[str, Any]]:
    """Clusters of records whose estimated Jaccard similarity is >= threshold (MinHash LSH).

    LSH proposes candidates; each candidate pair is confirmed with the MinHash estimate, and
    confirmed pairs are joined into clusters (union-find). Each cluster: `indices` (first one is
    the one dedup keeps) and `similarity` (the lowest confirmed pair estimate inside it)."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    # MinHash.bulk draws the permutations once for all records (per-record MinHash objects would redraw them).
    shingles = [[s.encode() for s in _shingles(record_text(r, part), shingle)] for r in records]
    hashes = MinHash.bulk(shingles, num_perm=num_perm, seed=seed)
    for i, m in enumerate(hashes):
        lsh.insert(str(i), m)
    parent = list(range(len(records)))
    lowest: dict[int, float] = {}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    pairs = []
    for i, m in enumerate(hashes):
        for key in lsh.query(m):
            j = int(key)
            if j > i and (sim := m.jaccard(hashes[j])) >= threshold:
                pairs.append((i, j, sim))
                a, b = find(i), find(j)
                parent[max(a, b)] = min(a, b)
    for i, _j, sim in pairs:
        root = find(i)
        lowest[root] = min(lowest.get(root, 1.0), sim)
    clusters: dict[int, list[int]] = defaultdict(list)
    for i in range(len(records)):
        clusters[find(i)].append(i)
    return [
        {"indices": members, "similarity": round(lowest[root], 3)}
        for root, members in sorted(clusters.items())
        if len(members) > 1
    ]


def dedup(
    records: list[Record], near: bool = False, threshold: float = 0.8, part: Part = "all"
) -> tuple[list[Record], dict[str, Any]]:
    """Keep the first record of every exact (and, with `near`, near) duplicate cluster."""
    exact = exact_duplicates(records, part)
    drop = {i for g in exact for i in g[1:]}
    clusters: list[dict[str, Any]] = []
    if near:
        clusters = near_duplicates(records, threshold=threshold, part=part)
        drop |= {i for c in clusters for i in c["indices"][1:]}
    kept = [r for i, r in enumerate(records) if i not in drop]
    report = {
        "records": len(records),
        "kept": len(kept),
        "removed": len(drop),
        "exact_clusters": exact,
        "near_clusters": clusters,
    }
    return kept, report


# ---- contamination ------------------------------------------------------------------------------


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Word n-grams of the normalised text; a text shorter than n words is one gram of itself,
    so short evaluation items still count when copied whole."""
    words = normalise(text).split()
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def decontaminate(
    train: list[Record], evaluation: list[Record], n: int = 13, part: Part = "prompt"
) -> tuple[list[Record], dict[str, Any]]:
    """Drop training records sharing any word n-gram with an evaluation record (GPT-3 style, n=13)."""
    index: dict[tuple[str, ...], int] = {}
    for j, r in enumerate(evaluation):
        for g in ngrams(record_text(r, part), n):
            index.setdefault(g, j)
    kept, removed = [], []
    for i, r in enumerate(train):
        grams = ngrams(record_text(r, part), n)
        hit = next((g for g in grams if g in index), None)
        if hit is None:
            kept.append(r)
        else:
            removed.append({"index": i, "eval_index": index[hit], "ngram": " ".join(hit)})
    report = {"records": len(train), "kept": len(kept), "removed": len(removed), "n": n, "matches": removed}
    return kept, report


# ---- lengths ------------------------------------------------------------------------------------


def token_lengths(records: list[Record], tokenizer: Any, batch_size: int = 256) -> list[int]:
    """Tokens per record as the model sees it: its chat template applied to the whole conversation."""
    lengths: list[int] = []
    for start in range(0, len(records), batch_size):
        convs = [[m.model_dump() for m in r.messages] for r in records[start : start + batch_size]]
        texts = tokenizer.apply_chat_template(convs, tokenize=False)
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        lengths += [len(x) for x in ids]
    return lengths


def char_lengths(records: list[Record]) -> list[int]:
    return [len(record_text(r)) for r in records]


def length_stats(lengths: list[int], max_length: int | None = None, bins: int = 10) -> dict[str, Any]:
    """Summary figures, a histogram and the records over `max_length` (the context window)."""
    if not lengths:
        return {"count": 0}
    ordered = sorted(lengths)

    def pct(p: float) -> int:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    lo, hi = ordered[0], ordered[-1]
    width = max(1, -(-(hi - lo + 1) // bins))
    counts = Counter((x - lo) // width for x in lengths)
    histogram = [
        {"from": lo + b * width, "to": lo + (b + 1) * width - 1, "count": counts.get(b, 0)} for b in range(bins)
    ]
    stats: dict[str, Any] = {
        "count": len(lengths),
        "mean": round(sum(lengths) / len(lengths), 1),
        "min": lo,
        "p50": pct(0.5),
        "p90": pct(0.9),
        "p99": pct(0.99),
        "max": hi,
        "histogram": [h for h in histogram if h["from"] <= hi],
    }
    if max_length is not None:
        stats["max_length"] = max_length
        stats["over_max_length"] = [i for i, x in enumerate(lengths) if x > max_length]
    return stats


def context_window(tokenizer: Any, model_path: Any = None) -> int | None:
    """The model's context window: its config's max_position_embeddings, else the tokenizer's limit."""
    if model_path is not None:
        try:
            from transformers import AutoConfig

            value = getattr(AutoConfig.from_pretrained(str(model_path)), "max_position_embeddings", None)
            if value:
                return int(value)
        except (OSError, ValueError):
            pass
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if limit and limit < 10**7 else None


# ---- summaries and splits -----------------------------------------------------------------------


def label_distribution(records: list[Record]) -> dict[str, int]:
    counts = Counter(r.label if r.label is not None else "(none)" for r in records)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def stratified_split(records: list[Record], val: float = 0.1, test: float = 0.1, seed: int = 0) -> list[Record]:
    """Copies of `records` with `split` set to train/val/test, in the same proportions per label.

    Each label's records are shuffled with the seed (labels in sorted order, so the result is the
    same on every run) and cut by rounding; unlabelled records form one group of their own."""
    if val < 0 or test < 0 or val + test >= 1:
        raise ValueError("val and test must be >= 0 and sum to less than 1")
    rng = random.Random(seed)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[r.label if r.label is not None else "\0none"].append(i)
    assignment: dict[int, str] = {}
    for key in sorted(groups):
        members = groups[key][:]
        rng.shuffle(members)
        n_test, n_val = round(len(members) * test), round(len(members) * val)
        for k, i in enumerate(members):
            assignment[i] = "test" if k < n_test else "val" if k < n_test + n_val else "train"
    return [r.model_copy(update={"split": assignment[i]}) for i, r in enumerate(records)]


def where(records: list[Record], conditions: dict[str, str]) -> list[int]:
    """Indices of records matching every `key=value` (label, split, review, role text, metadata.x)."""
    out = []
    for i, r in enumerate(records):
        if all(_matches(r, k, v) for k, v in conditions.items()):
            out.append(i)
    return out


def _matches(record: Record, key: str, value: str) -> bool:
    if key in ("label", "split", "review"):
        return str(getattr(record, key)) == value
    if key in ("text", "contains"):
        return value.casefold() in record_text(record).casefold()
    if key.startswith("metadata."):
        node: Any = record.metadata
        for part in key.split(".")[1:]:
            node = node.get(part) if isinstance(node, dict) else None
        return str(node) == value
    if key.startswith("provenance."):
        return str(record.provenance.get(key.split(".", 1)[1])) == value
    raise ValueError(f"cannot filter on {key!r}: use label, split, review, text, metadata.KEY or provenance.KEY")
