"""A Hugging Face tokenizer as GGUF tokenizer metadata (llama.cpp's `tokenizer.ggml.*` keys).

A GGUF carries no tokenizer.json: llama.cpp and transformers (`gguf_file=`) rebuild the tokenizer
from the token list, types, scores, merges, special ids and a pre-tokenizer name. Two kinds are
written, the two the supported architectures use:

- byte-level BPE (`gpt2`: SmolLM2, Llama 3): the merges are the tokenizer; the pre-tokenizer name
  is the one whose split regex transformers' GGUF reader knows to be this tokenizer's (plain GPT-2
  byte-level splitting is `gpt-2`);
- SentencePiece-style BPE with byte fallback (`llama`: Gemma): llama.cpp merges by score, so each
  token's score is minus its id (Gemma's ids follow its merge order, which is why transformers'
  reader orders merges by position too); the merges are written as well, for readers that use them.

Anything else is refused with the kinds that are supported, before any file is written.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from protege.errors import UserError

SUPPORTED = "byte-level BPE (SmolLM2, Llama 3) or SentencePiece-style BPE with byte fallback (Gemma)"
NORMAL, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 3, 4, 5, 6
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


@dataclass
class GgufVocab:
    model: str
    """`gpt2` (byte-level BPE) or `llama` (SentencePiece-style)."""
    pre: str
    tokens: list[str]
    types: list[int]
    scores: list[float] | None
    merges: list[str]
    special_ids: dict[str, int] = field(default_factory=dict)
    """bos / eos / unk / pad / eot -> id."""
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool = False
    chat_template: str | None = None


def read_vocab(tok: Any, n_vocab: int, end_of_turn: int | None = None) -> GgufVocab:
    """The GGUF view of `tok` for a model with `n_vocab` embedding rows (extra rows become unused
    `[PAD{i}]` tokens, as llama.cpp's converter writes them: the file's vocabulary must match)."""
    spec = json.loads(tok.backend_tokenizer.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise UserError(f"tokenizer {model.get('type')!r}: GGUF export supports {SUPPORTED}")
    byte_level = (spec.get("decoder") or {}).get("type") == "ByteLevel"
    if not byte_level and not model.get("byte_fallback"):
        raise UserError(f"tokenizer (BPE, not byte-level, no byte fallback): GGUF export supports {SUPPORTED}")
    vocab = tok.get_vocab()
    if len(vocab) > n_vocab:
        raise UserError(f"tokenizer has {len(vocab)} tokens but the model only {n_vocab} embedding rows")
    by_id = {i: t for t, i in vocab.items()}
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(n_vocab)]
    added = {a["id"]: a for a in spec.get("added_tokens") or []}
    special = set(tok.all_special_ids) | {i for i, a in added.items() if a.get("special")}

    def kind(i: int) -> int:
        if i not in by_id:
            return UNUSED
        if i in special:
            return CONTROL
        if i in added:
            return USER_DEFINED
        if not byte_level and _BYTE_TOKEN.fullmatch(tokens[i]):
            return BYTE
        return NORMAL

    probe = tok("a", add_special_tokens=True)["input_ids"]
    ids = {
        "bos": tok.bos_token_id,
        "eos": tok.eos_token_id,
        "unk": tok.unk_token_id,
        "pad": tok.pad_token_id,
        "eot": end_of_turn if end_of_turn != tok.eos_token_id else None,
    }
    return GgufVocab(
        model="gpt2" if byte_level else "llama",
        pre=_pre_name(spec) if byte_level else "default",
        tokens=tokens,
        types=[kind(i) for i in range(n_vocab)],
        scores=None if byte_level else [-float(i) for i in range(n_vocab)],
        merges=[m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []],
        special_ids={k: v for k, v in ids.items() if v is not None},
        add_bos=bool(probe) and tok.bos_token_id is not None and probe[0] == tok.bos_token_id,
        add_eos=bool(probe) and tok.eos_token_id is not None and probe[-1] == tok.eos_token_id,
        add_space_prefix=_adds_space_prefix(spec),
        chat_template=tok.chat_template if isinstance(tok.chat_template, str) else None,
    )


def _pre_name(spec: dict[str, Any]) -> str:
    """llama.cpp's name for this byte-level pre-tokenizer: `gpt-2` for plain byte-level splitting,
    else the name whose split regex transformers' GGUF reader maps back to exactly this one."""
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    steps = pre.get("pretokenizers") or []
    if pre.get("type") == "Sequence" and len(steps) == 2 and steps[0].get("type") == "Split":
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

        pattern = (steps[0].get("pattern") or {}).get("Regex")
        for name, regex in GGUF_PRE_TOKENIZER_SPLITS.items():
            if regex == pattern:
                return name
    raise UserError(
        f"tokenizer pre-tokenizer {json.dumps(pre)[:120]}: not one a GGUF reader can rebuild; "
        f"GGUF export supports {SUPPORTED}"
    )


def _adds_space_prefix(spec: dict[str, Any]) -> bool:
    """SentencePiece tokenizers that prepend `▁` to the text (Llama 2 style; Gemma's does not)."""
    text = json.dumps([spec.get("normalizer"), spec.get("pre_tokenizer")])
    return '"Prepend"' in text or '"prepend_scheme": "first"' in text or '"prepend_scheme": "always"' in text


def add_vocab(writer: Any, vocab: GgufVocab) -> None:
    """Write `vocab` into a GGUFWriter."""
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    for name, token_id in vocab.special_ids.items():
        getattr(writer, f"add_{name}_token_id")(token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
