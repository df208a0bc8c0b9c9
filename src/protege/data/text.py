"""How protege splits text into words, and the one ROUGE-L, shared by every stage that compares
texts: near-duplicate and contamination checks (data), self-instruct's novelty filter (teachers)
and the text score of an evaluation (evaluate).

Words are runs of letters, digits and `_` after Unicode NFKC folding and case folding: "Café",
"CAFÉ" and "café" are one word, punctuation never is. On ASCII text this is rouge-score's default
tokenisation without its stemmer; unlike rouge-score it keeps non-Latin scripts instead of
dropping them. ROUGE-L is a lean LCS implementation (no extra dependency): the scorer packages
pull in nltk and absl for one dynamic-programming loop.
"""

from __future__ import annotations

import re
import unicodedata

_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    """The words of `text`, case- and Unicode-folded."""
    return _WORD.findall(unicodedata.normalize("NFKC", text or "").casefold())


def _lcs(a: list[str], b: list[str]) -> int:
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l_tokens(ref: list[str], cand: list[str]) -> float:
    """ROUGE-L F1 of two word lists (callers comparing against a pool split each text once)."""
    lcs = _lcs(ref, cand)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(cand), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def rouge_l(reference: str, candidate: str) -> float:
    """ROUGE-L F1 (longest common subsequence of words) of two texts."""
    return rouge_l_tokens(words(reference), words(candidate))
