"""Does the exported file answer like the model it came from? Checked on every export.

The candidate (a GGUF loaded back by transformers with `gguf_file=`, or the merged folder loaded
back) and the reference get the same prompts, each rendered by its *own* tokenizer and chat
template, so the file's tokenizer, template and weights are all under test:

- `token_agreement`: greedy answers (up to `max_new_tokens`, stopping at end of turn), compared
  position by position; the share of the reference's answer tokens the candidate matches. Once two
  greedy answers part they rarely meet again, so this is strict: one early difference costs the rest
  of that answer.
- `logits`: the candidate's logits on the reference's prompt + answer (teacher forcing), largest
  absolute difference, and that difference relative to the largest reference logit (the scale).
- `top1_agreement`: over the same positions, how often both pick the same next token.

Gates. F16 (and the merged `hf` folder): `token_agreement >= 0.95`, and the relative logit
difference at most LOGIT_TOLERANCE (1% for F16, 1e-4 for hf). F16 rounds each weight to 11
significant bits (relative error <= 2^-11); on the bundled 135M the largest logit difference is a few
tenths of a percent of the logit scale (bench/export.py records it), and on the tiny test models with
10x wider random weights 0.4%, while a wrong tensor layout (q/k rows in the wrong order, a missing norm
offset) gives differences of the order of the logits themselves. Q8_0 (8-bit blocks) is gated on
next-token agreement under teacher forcing (>= 0.9), which a wrong layout cannot meet; its greedy
answers may part from the float model's early, so its token agreement and logit difference are
reported, not gated (the issue asks for the 95% on F16).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from protege.data.files import read_rows
from protege.errors import UserError

MIN_TOKEN_AGREEMENT = 0.95
LOGIT_TOLERANCE = {"f16": 0.01, "hf": 1e-4}
"""Largest |logit difference| / largest |reference logit| allowed, per format (Q8_0: reported only)."""
MIN_TOP1_AGREEMENT_Q8 = 0.9

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
    ref = greedy(reference, ref_tok, prompts, stop, max_new)
    cand = greedy(candidate, cand_tok, prompts, stop, max_new)
    pairs = list(zip(ref, cand, strict=True))
    matched = sum(sum(a == b for a, b in zip(r["answer"], c["answer"], strict=False)) for r, c in pairs)
    total = sum(len(r["answer"]) for r in ref)
    same_prompt = sum(r["prompt"] == c["prompt"] for r, c in pairs)
    worst, scale, top1, positions = 0.0, 0.0, 0, 0
    for r in ref:
        seq = r["prompt"] + r["answer"]
        a, b = _logits(reference, seq), _logits(candidate, seq)
        worst = max(worst, float((a - b).abs().max()))
        scale = max(scale, float(a.abs().max()))
        top1 += int((a.argmax(-1) == b.argmax(-1)).sum())
        positions += a.shape[0]
    agreement = matched / max(1, total)
    relative = worst / max(scale, 1e-12)
    top1_rate = top1 / max(1, positions)
    tolerance = LOGIT_TOLERANCE.get(kind)
    gated = tolerance is not None
    passed = same_prompt == len(prompts) and (
        relative <= tolerance and agreement >= MIN_TOKEN_AGREEMENT if gated else top1_rate >= MIN_TOP1_AGREEMENT_Q8
    )
    return {
        "prompts": len(prompts),
        "max_new_tokens": max_new,
        "prompts_tokenized_alike": same_prompt,
        "answer_tokens": total,
        "token_agreement": round(agreement, 4),
        "min_token_agreement": MIN_TOKEN_AGREEMENT if gated else None,
        "top1_agreement": round(top1_rate, 4),
        "min_top1_agreement": None if gated else MIN_TOP1_AGREEMENT_Q8,
        "max_abs_logit_diff": _sig(worst),
        "logit_scale": _sig(scale),
        "relative_logit_diff": _sig(relative),
        "logit_tolerance": tolerance,
        "passed": passed,
    }


def _sig(x: float) -> float:
    """Three significant digits (a difference of 1e-7 stays visible, unlike a fixed rounding)."""
    return float(f"{x:.3g}")
