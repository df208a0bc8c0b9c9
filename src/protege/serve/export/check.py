"""Does the exported file answer like the model it came from? Checked on every export.

The candidate (a GGUF loaded back by transformers with `gguf_file=`, or the merged folder loaded
back) and the reference get the same prompts, each rendered by its *own* tokenizer and chat
template, so the file's tokenizer, template and weights are all under test. The reference answers
each prompt greedily (up to `max_new_tokens`, stopping at end of turn); then both models read the
reference's prompt + answer (teacher forcing):

- `token_agreement`: at each of the reference's answer tokens, whether the candidate's greedy pick
  (the argmax given the same preceding tokens) is the reference's. Gated.
- `free_running_agreement`: the candidate generates its own answers, compared with the reference's
  position by position. Reported, not gated: two independently generated answers part for good at
  the first near-tie (a top-2 logit gap smaller than the file's rounding), so this measures how
  chaotic a model's generation is as much as how faithful the file is. On the tiny random test
  models, F16 files whose logits differ by 0.3% of their scale scored 88-99.8% here and >= 99.7% on
  `token_agreement`; on the bundled 135M student both are 100% (bench/export.py).
- `max_abs_logit_diff` over all positions, and `relative_logit_diff`: that over the largest reference
  logit (the scale). Gated for F16 and hf.

Gates: F16 and the merged `hf` folder need `token_agreement >= 0.95` and a relative logit difference
of at most LOGIT_TOLERANCE (1% for F16, 1e-4 for hf). F16 rounds each weight to 11 significant bits
(relative error <= 2^-11): measured, 0.1% of the scale on the bundled 135M student and up to 0.4% on
the tiny test models with 10x wider random weights, while a wrong tensor layout (q/k rows in the
wrong order, a missing norm offset) moves logits by the order of the logits themselves. Q8_0 (8-bit
blocks) needs `token_agreement >= 0.90` (98% measured on the 135M student; 7% for a wrong q/k layout on
a tiny model); its logit difference is reported only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from protege.data.files import read_rows
from protege.errors import UserError

MIN_TOKEN_AGREEMENT = {"f16": 0.95, "hf": 0.95, "q8_0": 0.90}
LOGIT_TOLERANCE = {"f16": 0.01, "hf": 1e-4}
"""Largest |logit difference| / largest |reference logit| allowed, per format (Q8_0: reported only)."""

DEFAULT_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in one sentence.",
    "My order arrived broken. What should I do?",
    "Translate 'good morning' into Spanish.",
    "List three uses of a paperclip.",
    "I can't log in to my account since yesterday.",
    "What is 12 times 7?",
    "Summarise the plot of Romeo and Juliet.",
    "Give me a tip for sleeping better.",
    "Why is the sky blue?",
    "Can I get a refund for last month's invoice?",
    "Name a famous painting by Van Gogh.",
    "What does an API key do?",
    "Suggest a name for a grey cat.",
    "The app crashes when I upload a photo.",
    "How many legs does a spider have?",
    "What should I pack for a weekend hike?",
    "Is it going to rain tomorrow in London?",
    "Thank you, that fixed it!",
]


def read_prompts(path: Path | None, limit: int = 20) -> list[list[dict[str, str]]]:
    """Prompts as message lists: DEFAULT_PROMPTS, or a JSONL/CSV file of `{"messages": [...]}`,
    `{"prompt"|"text"|"input": "..."}` rows (a trailing assistant turn is dropped)."""
    if path is None:
        return [[{"role": "user", "content": p}] for p in DEFAULT_PROMPTS[:limit]]
    if not Path(path).exists():
        raise UserError(f"--prompts {path}: file not found")
    out = []
    for line, row in read_rows(Path(path)):
        if len(out) >= limit:
            break
        out.append(_as_messages(row, f"{path}:{line}"))
    if not out:
        raise UserError(f"--prompts {path}: no prompts")
    return out


def _as_messages(row: Any, where: str) -> list[dict[str, str]]:
    if isinstance(row, str):
        return [{"role": "user", "content": row}]
    if isinstance(row, dict) and isinstance(row.get("messages"), list):
        messages = [m for m in row["messages"] if isinstance(m, dict)]
        while messages and messages[-1].get("role") == "assistant":
            messages.pop()
        if messages:
            return [{"role": str(m["role"]), "content": str(m.get("content") or "")} for m in messages]
    if isinstance(row, dict):
        for key in ("prompt", "text", "input"):
            if isinstance(row.get(key), str):
                return [{"role": "user", "content": row[key]}]
    raise UserError(f"{where}: expected messages, or a prompt / text / input field")


@torch.inference_mode()
def greedy(model: Any, tok: Any, prompts: list[list[dict[str, str]]], stop: list[int], max_new: int) -> list[dict]:
    """Each prompt's ids (rendered by `tok`'s chat template) and greedy answer (up to a stop id)."""
    rendered = [tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    ids = [tok(r, add_special_tokens=False)["input_ids"] for r in rendered]
    pad = tok.pad_token_id if tok.pad_token_id is not None else stop[0]
    width = max(len(i) for i in ids)
    batch = torch.tensor([[pad] * (width - len(i)) + i for i in ids])
    mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
    out = model.generate(
        input_ids=batch,
        attention_mask=mask,
        max_new_tokens=max_new,
        do_sample=False,
        eos_token_id=stop,
        pad_token_id=pad,
    )
    answers = []
    for prompt_ids, row in zip(ids, out[:, width:].tolist(), strict=True):
        cut = next((k + 1 for k, t in enumerate(row) if t in stop), len(row))
        answers.append({"prompt": prompt_ids, "answer": row[:cut]})
    return answers


@torch.inference_mode()
def _logits(model: Any, ids: list[int]) -> torch.Tensor:
    return model(input_ids=torch.tensor([ids])).logits[0].float()


def compare(
    reference: Any,
    ref_tok: Any,
    candidate: Any,
    cand_tok: Any,
    prompts: list[list[dict[str, str]]],
    stop: list[int],
    kind: str,
    max_new: int = 32,
) -> dict[str, Any]:
    """The check's figures and verdict (see the module docstring)."""
    import time

    start = time.perf_counter()
    ref = greedy(reference, ref_tok, prompts, stop, max_new)
    cand = greedy(candidate, cand_tok, prompts, stop, max_new)
    pairs = list(zip(ref, cand, strict=True))
    free = sum(sum(a == b for a, b in zip(r["answer"], c["answer"], strict=False)) for r, c in pairs)
    total = sum(len(r["answer"]) for r in ref)
    same_prompt = sum(r["prompt"] == c["prompt"] for r, c in pairs)
    worst, scale, same, answered = 0.0, 0.0, 0, 0
    for r in ref:
        seq = r["prompt"] + r["answer"]
        a, b = _logits(reference, seq), _logits(candidate, seq)
        worst = max(worst, float((a - b).abs().max()))
        scale = max(scale, float(a.abs().max()))
        span = slice(len(r["prompt"]) - 1, len(seq) - 1)  # the positions that predict answer tokens
        same += int((a[span].argmax(-1) == b[span].argmax(-1)).sum())
        answered += len(r["answer"])
    agreement = same / max(1, answered)
    relative = worst / max(scale, 1e-12)
    tolerance = LOGIT_TOLERANCE.get(kind)
    passed = same_prompt == len(prompts) and agreement >= MIN_TOKEN_AGREEMENT[kind]
    passed = passed and (tolerance is None or relative <= tolerance)
    return {
        "prompts": len(prompts),
        "max_new_tokens": max_new,
        "prompts_tokenized_alike": same_prompt,
        "answer_tokens": total,
        "token_agreement": round(agreement, 4),
        "min_token_agreement": MIN_TOKEN_AGREEMENT[kind],
        "free_running_agreement": round(free / max(1, total), 4),
        "max_abs_logit_diff": _sig(worst),
        "logit_scale": _sig(scale),
        "relative_logit_diff": _sig(relative),
        "logit_tolerance": tolerance,
        "passed": passed,
        "seconds": round(time.perf_counter() - start, 2),
    }


def _sig(x: float) -> float:
    """Three significant digits (a difference of 1e-7 stays visible, unlike a fixed rounding)."""
    return float(f"{x:.3g}")
