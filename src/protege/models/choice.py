"""Constrained choice: which of a fixed set of answers (a task's labels) a model finds most likely.

The one implementation every stage uses: training's label evaluation (train/classify.py), a teacher
run in-process (teachers/client.py) and `protege serve`'s `extra_body.choices`, so a label gets the
same tokens and the same score wherever it is scored.

The rule. A choice's tokens are the tokens the chat template gives an assistant turn holding exactly
that text, up to and including the end-of-turn token (`answer_tokens`): the very tokens training
teaches a student to emit (train/data.py's `tokenize_chat` calls `answer_tokens` too). Tokenising the
label alone would differ wherever the template trims the answer or the tokenizer merges across the
turn's start (SentencePiece's leading space). A choice's score is the summed log-probability of its
tokens after the prompt (the template's generation prompt); the best score wins.

The pass. Every choice of a prompt is scored in ONE forward pass (`score_token_groups`): each row is
[left pads, prompt, every choice's tokens side by side], and a 4-D attention mask lets a choice's
tokens see the prompt and their own earlier tokens only, with position ids restarting at the prompt's
end, so each choice is scored exactly as if it followed the prompt alone (a tree of continuations, as
in speculative decoding's tree attention). Scoring the choices in a second pass over a cache repeated
per choice cost the 135M student ~190 ms a request, a third of its latency; here the choices add a
few tokens to one pass. A batch's common head (system turn, few-shot examples) runs once first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from protege.errors import DataError
from protege.models.prefix import model_device, shared_head_cache

Group = tuple[list[int], list[list[int]]]
"""(prompt ids, each choice's ids ending with the end-of-turn token)."""


def end_of_turn_id(tok: Any) -> int:
    """The token that closes an assistant turn (what generation must learn to emit to stop)."""
    return int(tok.eos_token_id)


def _render(tok: Any, messages: list[dict[str, str]], template: str | None, generation_prompt: bool) -> str:
    return tok.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
    )


def answer_tokens(
    tok: Any, messages: list[dict[str, str]], answers: list[str], chat_template: str | None = None
) -> tuple[list[int], list[list[int]]]:
    """(prompt ids, each answer's ids): the prompt is `messages` with the generation prompt; an
    answer's ids are what the template puts after it for an assistant turn holding that answer, cut
    after the end-of-turn token (what follows it, such as a newline, is not worth learning) or with
    one added where the template has none. `chat_template` overrides the tokenizer's own (an
    adapter's saved template). DataError when the template is not prefix-stable (the prompt's tokens
    are not the first tokens of the prompt plus an answer): there is then no answer to score."""
    head_text = _render(tok, messages, chat_template, True)
    head = _ids(tok, head_text)
    texts = [_render(tok, [*messages, {"role": "assistant", "content": a}], chat_template, False) for a in answers]
    eot = end_of_turn_id(tok)
    out = []
    for answer, full in zip(answers, _full_ids(tok, head_text, head, texts), strict=True):
        if full[: len(head)] != head:
            raise DataError(
                f"the chat template is not prefix-stable for the answer {answer[:40]!r}: the prompt's tokens "
                "are not the first tokens of the prompt plus that answer, so its tokens cannot be located"
            )
        ids = full[len(head) :]
        out.append(ids[: ids.index(eot) + 1] if eot in ids else [*ids, eot])
    return head, out


def _ids(tok: Any, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def _full_ids(tok: Any, head_text: str, head: list[int], texts: list[str]) -> list[list[int]]:
    """Token ids of each text (the prompt plus one answer), exactly as `_ids` would give them, but
    tokenising only what follows the prompt's last added token (`<|im_start|>`): tokenizers split
    text at added tokens before anything else, so the part before it cannot change. A long few-shot
    prompt with 28 labels took 128 ms to tokenise whole, 28 times, on the server's event loop. The
    first text is also tokenised whole as a check; any tokenizer where that differs gets the slow way."""
    cut = max((head_text.rfind(t) for t in tok.get_added_vocab()), default=-1)
    if cut <= 0 or not texts or not all(t.startswith(head_text[:cut]) for t in texts):
        return _batch_ids(tok, texts)
    tail = _ids(tok, head_text[cut:])
    kept = head[: len(head) - len(tail)]
    fulls = [kept + ids for ids in _batch_ids(tok, [t[cut:] for t in texts])]
    if head[len(kept) :] != tail or fulls[0] != _ids(tok, texts[0]):
        return _batch_ids(tok, texts)
    return fulls


def _batch_ids(tok: Any, texts: list[str]) -> list[list[int]]:
    return [list(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]] if texts else []


def truncate_prompt(group: Group, max_length: int | None) -> Group:
    """Drop the prompt's oldest tokens so prompt + longest choice fit in `max_length` (training's
    rule for over-long examples), keeping at least one prompt token."""
    prompt, choices = group
    if max_length is None:
        return group
    room = max(1, max_length - max(len(c) for c in choices))
    return (prompt[-room:] if len(prompt) > room else prompt), choices


@torch.inference_mode()
def score_choices(
    model: Any,
    tok: Any,
    prompts: list[list[dict[str, str]]],
    choices: list[str],
    *,
    chat_template: str | None = None,
    max_length: int | None = None,
    batch: int = 8,
) -> torch.Tensor:
    """[len(prompts), len(choices)] summed log-probabilities of each choice after each chat prompt,
    `batch` prompts to a forward pass."""
    groups = [truncate_prompt(answer_tokens(tok, p, choices, chat_template), max_length) for p in prompts]
    pad = tok.pad_token_id if tok.pad_token_id is not None else end_of_turn_id(tok)
    rows = []
    for start in range(0, len(groups), batch):
        rows += score_token_groups(model, groups[start : start + batch], pad)
    return torch.tensor(rows, dtype=torch.float32).reshape(len(prompts), len(choices))


def best_choice(choices: list[str], scores: list[float]) -> str:
    """The highest-scoring choice (the first of equals)."""
    return choices[max(range(len(choices)), key=lambda i: scores[i])]


@torch.inference_mode()
def score_token_groups(model: Any, groups: list[Group], pad_id: int) -> list[list[float]]:
    """Scores for several (prompt, choices) groups in ONE forward pass over the model (module
    docstring). The prompt's last logits score every choice's first token, a choice's own tokens'
    logits score the rest; a choice's last token (end of turn) is a target only, never an input."""
    cache, head = shared_head_cache(model, [p for p, _ in groups])
    rows = [_ChoiceRow(prompt[head:], choices) for prompt, choices in groups]
    tail = max(len(r.tail) for r in rows)
    width = max(r.width for r in rows)
    ids = torch.full((len(rows), tail + width), pad_id, dtype=torch.long)
    positions = torch.zeros_like(ids)
    allowed = torch.zeros((len(rows), tail + width, head + tail + width), dtype=torch.bool)
    allowed[:, :, :head] = True
    for i, row in enumerate(rows):
        row.fill(ids[i], positions[i], allowed[i, :, head:], tail, head)
    device = model_device(model)
    out = model(
        input_ids=ids.to(device),
        attention_mask=_attention_mask(model, allowed).to(device),
        position_ids=positions.to(device),
        past_key_values=cache,
        use_cache=cache is not None,
        logits_to_keep=width + 1,
    )
    logprobs = torch.log_softmax(out.logits.float(), -1).cpu()
    return [row.scores(logprobs[i]) for i, row in enumerate(rows)]


def _attention_mask(model: Any, allowed: torch.Tensor) -> torch.Tensor:
    """The 4-D mask as the attention kernel takes it: boolean for SDPA and friends (exact under any
    autocast), additive (0 / most negative) for the eager kernel, which adds it to the scores."""
    allowed = allowed.unsqueeze(1)
    if getattr(model.config, "_attn_implementation", "sdpa") != "eager":
        return allowed
    dtype = model.dtype
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)


@dataclass
class _ChoiceRow:
    """One group's prompt tail and choices, laid out as one row of the tree-scoring pass."""

    tail: list[int]
    choices: list[list[int]]

    @property
    def width(self) -> int:
        return max(1, sum(len(c) - 1 for c in self.choices))

    def fill(self, ids: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor, tail: int, head: int) -> None:
        """Write this row's tokens, positions and who-sees-whom (`allowed`: query x key, keys after
        the shared head); the tail ends at column `tail`, the choices' input tokens follow it."""
        n, start = len(self.tail), tail - len(self.tail)
        ids[start:tail] = torch.tensor(self.tail, dtype=torch.long)
        positions[start:tail] = head + torch.arange(n)
        allowed[start:tail, start:tail] = torch.ones((n, n), dtype=torch.bool).tril()
        col = tail
        for choice in self.choices:
            k = len(choice) - 1
            if k <= 0:
                continue
            ids[col : col + k] = torch.tensor(choice[:-1], dtype=torch.long)
            positions[col : col + k] = head + n + torch.arange(k)
            allowed[col : col + k, start:tail] = True
            allowed[col : col + k, col : col + k] = torch.ones((k, k), dtype=torch.bool).tril()
            col += k
        allowed.diagonal().fill_(True)  # pads see themselves: a row of the mask with no key gives NaN

    def scores(self, logprobs: torch.Tensor) -> list[float]:
        """logprobs[0] follows the prompt, logprobs[1 + j] follows the j-th input token of the row."""
        out, col = [], 0
        for choice in self.choices:
            total = logprobs[0, choice[0]].item()
            for j, token in enumerate(choice[1:]):
                total += logprobs[1 + col + j, token].item()
            out.append(total)
            col += len(choice) - 1
        return out
