"""Batched generation with a KV cache, the server's decode loop (constrained-choice scoring is
models/choice.py's, shared with training and teachers).

Generation is a hand-written decode loop over the Hugging Face model (prefill, then one token per
step with `past_key_values`) rather than `model.generate`, because the server needs per-row sampling
parameters (temperature, top_p, seed, stop strings, logprobs, JSON mode) in one batch, needs to
stream each token as it is made, and needs to drop rows whose client finished or went away so the
rest of the batch runs faster. Prompts are left-padded with an attention mask and explicit position
ids, so a row sees exactly the positions it would see alone.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from protege.models.prefix import shared_head_cache
from protege.serve.jsonmode import JsonPrefix

GREEDY_BELOW = 1e-5
"""Temperatures below this are greedy (argmax), as OpenAI treats temperature 0."""
JSON_CANDIDATES = 64
"""How many of a JSON row's most likely tokens are checked against the JSON prefix automaton."""


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: bool = False
    top_logprobs: int = 0
    json_mode: bool = False


@dataclass
class TokenEvent:
    index: int
    text: str
    logprobs: list[dict[str, Any]]


@dataclass
class FinishEvent:
    index: int
    finish_reason: str
    completion_tokens: int


@dataclass
class Row:
    """One sequence being generated: choice `index` of one request."""

    prompt_ids: list[int]
    params: SamplingParams
    index: int
    emit: Callable[[TokenEvent | FinishEvent], None]
    cancelled: Callable[[], bool]
    generated: list[int] = field(default_factory=list)
    sent: str = ""
    generator: torch.Generator | None = None
    json: JsonPrefix | None = None
    finished: bool = False
    last_logprobs: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.params.temperature >= GREEDY_BELOW:
            seed = self.params.seed + self.index if self.params.seed is not None else random.getrandbits(63)
            self.generator = torch.Generator().manual_seed(seed)
        if self.params.json_mode:
            self.json = JsonPrefix()


class Decoder:
    """Runs batches of rows on one model; called only from the engine's worker thread."""

    def __init__(self, model: Any, tokenizer: Any, eos_ids: set[int]):
        self.model = model
        self.tok = tokenizer
        self.eos_ids = eos_ids
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids)
        self._piece_cache: dict[int, str] = {}

    def piece(self, token_id: int) -> str:
        text = self._piece_cache.get(token_id)
        if text is None:
            text = self.tok.decode([token_id], clean_up_tokenization_spaces=False)
            self._piece_cache[token_id] = text
        return text

    # ---- generation -----------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, rows: list[Row]) -> int:
        """Run rows to completion, emitting events as tokens come; returns the tokens generated."""
        logits, mask, cache = self._prefill([r.prompt_ids for r in rows])
        active = list(rows)
        total = 0
        while active:
            tokens = self._choose(active, logits)
            total += len(active)
            keep = [i for i, (row, tok) in enumerate(zip(active, tokens, strict=True)) if not self._advance(row, tok)]
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep)
                cache.batch_select_indices(index)
                mask, tokens = mask[index], [tokens[i] for i in keep]
                active = [active[i] for i in keep]
            mask = torch.cat([mask, torch.ones((len(active), 1), dtype=torch.long)], dim=1)
            positions = mask.sum(-1, keepdim=True) - 1
            logits = self._forward(torch.tensor(tokens).unsqueeze(1), mask, positions, cache)
        return total

    def _prefill(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """Prompts into a new cache; returns the last logits, the attention mask so far and the cache.

        Chat prompts of one batch share a long head (the template's default system turn), which
        made prefill the larger half of a 32-row batch's time: that shared head runs once, its
        cache is repeated per row, and only the differing tails run as a batch. Tails are padded
        on their left, so a row's mask reads [head, pads, tail] and its positions stay those it
        would have alone."""
        from transformers import DynamicCache

        cache, head = shared_head_cache(self.model, prompts)
        cache = cache if cache is not None else DynamicCache(config=self.model.config)
        tails = [p[head:] for p in prompts]
        tail_mask = _left_pad_mask(tails)
        ids = torch.full(tail_mask.shape, self.pad_id, dtype=torch.long)
        for i, t in enumerate(tails):
            ids[i, tail_mask.shape[1] - len(t) :] = torch.tensor(t)
        mask = torch.cat([torch.ones((len(prompts), head), dtype=torch.long), tail_mask], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, head:]
        return self._forward(ids, mask, positions, cache), mask, cache

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> torch.Tensor:
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1, :].float()

    def _choose(self, rows: list[Row], logits: torch.Tensor) -> list[int]:
        """Next token per row: argmax for greedy rows, seeded top-p sampling for the others."""
        chosen = logits.argmax(-1).tolist()
        want_logprobs = any(r.params.logprobs for r in rows)
        logprobs = torch.log_softmax(logits, -1) if want_logprobs else None
        for i, row in enumerate(rows):
            if row.json is not None:
                chosen[i] = self._choose_json(row, logits[i])
            elif row.generator is not None:
                chosen[i] = _sample(logits[i], row.params, row.generator)
            row.last_logprobs = _logprob_entry(self, logprobs[i], chosen[i], row.params) if row.params.logprobs else []
        return chosen

    def _choose_json(self, row: Row, logits: torch.Tensor) -> int:
        """The best token (or a sample among the top candidates) that keeps the text a JSON-object
        prefix. Whitespace-only tokens are refused outside strings: JSON never needs them, and
        small models otherwise pad forever. When no top candidate fits, the whole vocabulary is
        scanned in order of likelihood, so even a weak model makes progress."""
        top = torch.topk(logits, JSON_CANDIDATES)
        valid = [j for j, tok in enumerate(top.indices.tolist()) if self._json_ok(row, tok)]
        if valid and row.generator is not None:
            return top.indices[valid[_sample(top.values[valid], row.params, row.generator)]].item()
        if valid:
            return top.indices[valid[0]].item()
        for tok in torch.argsort(logits, descending=True).tolist():
            if self._json_ok(row, tok):
                return tok
        return min(self.eos_ids)  # nothing can continue the object: end the row

    def _json_ok(self, row: Row, token: int) -> bool:
        if token in self.eos_ids:
            return False
        text = self.piece(token)
        if not text or (not text.strip() and row.json.mode != "string"):
            return False
        return row.json.copy().feed_text(text)

    def _advance(self, row: Row, token: int) -> bool:
        """Append a token, emit what can be shown; True when the row is finished (or its client left)."""
        if row.cancelled():
            row.finished = True
            row.emit(FinishEvent(row.index, "cancelled", len(row.generated)))
            return True
        if token in self.eos_ids:
            return self._finish(row, "stop")
        row.generated.append(token)
        if row.json is not None:
            row.json.feed_text(self.piece(token))
        text = self.tok.decode(row.generated, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        stop_at = _find_stop(text, row.params.stop, len(row.sent))
        if stop_at is not None:
            self._send(row, text[:stop_at])
            return self._finish(row, "stop")
        self._send(row, _safe_prefix(text, row.params.stop))
        if row.json is not None and row.json.done:
            return self._finish(row, "stop")
        if len(row.generated) >= row.params.max_tokens:
            return self._finish(row, "length")
        return False

    def _send(self, row: Row, shown: str) -> None:
        delta = shown[len(row.sent) :] if shown.startswith(row.sent) else ""
        if delta or row.last_logprobs:
            row.emit(TokenEvent(row.index, delta, row.last_logprobs))
        row.sent = row.sent + delta

    def _finish(self, row: Row, reason: str) -> bool:
        if row.sent != (rest := self._final_text(row)) and rest.startswith(row.sent):
            row.emit(TokenEvent(row.index, rest[len(row.sent) :], []))
            row.sent = rest
        row.finished = True
        row.emit(FinishEvent(row.index, reason, len(row.generated)))
        return True

    def _final_text(self, row: Row) -> str:
        """Held-back text (a partial stop string that never completed) is shown once the row ends."""
        text = self.tok.decode(row.generated, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        stop_at = _find_stop(text, row.params.stop, 0)
        return text[:stop_at] if stop_at is not None else text


def _left_pad_mask(prompts: list[list[int]]) -> torch.Tensor:
    width = max(len(p) for p in prompts)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        mask[i, width - len(p) :] = 1
    return mask


def _sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    probs = torch.softmax(logits / max(params.temperature, GREEDY_BELOW), -1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = sorted_probs.cumsum(-1)
        cut = cumulative - sorted_probs > params.top_p  # keep the smallest prefix reaching top_p
        sorted_probs[cut] = 0.0
        return order[torch.multinomial(sorted_probs, 1, generator=generator)].item()
    return torch.multinomial(probs, 1, generator=generator).item()


def _logprob_entry(dec: Decoder, logprobs: torch.Tensor, token: int, params: SamplingParams) -> list[dict[str, Any]]:
    """OpenAI's chat logprobs entry for one token: the model's own (untempered) log-probabilities."""

    def item(tok: int, lp: float) -> dict[str, Any]:
        text = dec.piece(tok)
        return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}

    entry = item(token, logprobs[token].item())
    top: list[dict[str, Any]] = []
    if params.top_logprobs:
        values, indices = torch.topk(logprobs, params.top_logprobs)
        top = [item(t, v) for t, v in zip(indices.tolist(), values.tolist(), strict=True)]
    entry["top_logprobs"] = top
    return [entry]


def _find_stop(text: str, stops: list[str], sent: int) -> int | None:
    """Index of the earliest stop string that may have completed since `sent` characters were shown."""
    found = None
    for stop in stops:
        at = text.find(stop, max(0, sent - len(stop) + 1))
        if at != -1 and (found is None or at < found):
            found = at
    return found


def _safe_prefix(text: str, stops: list[str]) -> str:
    """Text that can be shown now: hold back an incomplete UTF-8 character and any tail that could
    still grow into a stop string."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    for stop in stops:
        for k in range(min(len(stop) - 1, end), 0, -1):
            if text[:end].endswith(stop[:k]):
                end = min(end, len(text[:end]) - k)
                break
    return text[:end]
