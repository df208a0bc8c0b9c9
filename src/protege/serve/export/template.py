"""A chat template (Jinja) taken apart into what other runtimes need: the text around each turn.

Ollama templates are Go templates, generation configs want end-of-turn token ids, Ollama wants
stop strings. None of them can run the Jinja template, so it is rendered with sentinel contents
and cut at the sentinels: the text before the first turn (with and without a system message, so a
student's baked-in system prompt survives), and each role's prefix and suffix. The cut is checked
by rebuilding several conversations from the parts and comparing them with the template's own
rendering; a template that is not a sequence of per-message turns is refused by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protege.errors import UserError

_SYS, _U1, _A1, _U2 = "\ue000SYSTEM\ue000", "\ue000USER1\ue000", "\ue000ASSISTANT\ue000", "\ue000USER2\ue000"


@dataclass(frozen=True)
class Turns:
    head: str
    """Text before the first turn when the conversation brings no system message (the template's
    default system turn, e.g. a student's baked-in system prompt, and any BOS text)."""
    system_pre: str
    """Text before a system message's content (includes what precedes the first turn)."""
    system_post: str
    user_pre: str
    user_post: str
    assistant_pre: str
    assistant_post: str
    generation: str
    """What `add_generation_prompt` appends."""

    def render(self, messages: list[dict[str, str]], generation: bool = True) -> str:
        """What the Jinja template renders, rebuilt from the parts (what the Go template does)."""
        out = []
        if messages and messages[0]["role"] == "system":
            out.append(self.system_pre + messages[0]["content"] + self.system_post)
            messages = messages[1:]
        else:
            out.append(self.head)
        for m in messages:
            if m["role"] == "user":
                out.append(self.user_pre + m["content"] + self.user_post)
            else:
                out.append(self.assistant_pre + m["content"] + self.assistant_post)
        return "".join(out) + (self.generation if generation else "")


def _render(tok: Any, messages: list[dict[str, str]], generation: bool) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)


def _cut(text: str, suffix: str, what: str) -> str:
    if not text.endswith(suffix):
        raise UserError(f"chat template: {what} is not a turn of its own; supported: templates of per-message turns")
    return text[: len(text) - len(suffix)]


def split_turns(tok: Any) -> Turns:
    """The template's parts, checked by rebuilding conversations from them."""
    sys_, u1, a1, u2 = (
        {"role": "system", "content": _SYS},
        {"role": "user", "content": _U1},
        {"role": "assistant", "content": _A1},
        {"role": "user", "content": _U2},
    )
    with_sys = _render(tok, [sys_, u1], False)
    answered = _render(tok, [sys_, u1, a1], False)
    followed = _render(tok, [sys_, u1, a1, u2], False)
    if not (answered.startswith(with_sys) and followed.startswith(answered)):
        raise UserError("chat template: earlier turns change when a turn is added; supported: per-message turns")
    user_pre, _, user_post = followed[len(answered) :].partition(_U2)
    assistant_pre, _, assistant_post = answered[len(with_sys) :].partition(_A1)
    user = user_pre + _U1 + user_post
    system_pre, _, system_post = _cut(with_sys, user, "the first user message").partition(_SYS)
    head = _cut(_render(tok, [u1], False), user, "the first user message")
    turns = Turns(
        head=head,
        system_pre=system_pre,
        system_post=system_post,
        user_pre=user_pre,
        user_post=user_post,
        assistant_pre=assistant_pre,
        assistant_post=assistant_post,
        generation=_render(tok, [u1], True)[len(_render(tok, [u1], False)) :],
    )
    _check(tok, turns)
    return turns


def _check(tok: Any, turns: Turns) -> None:
    convos = [
        [{"role": "user", "content": "hi"}],
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
        [
            {"role": "system", "content": ""},
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
        ],
    ]
    for convo in convos:
        if turns.render(convo) != _render(tok, convo, True):
            roles = ",".join(m["role"] for m in convo)
            raise UserError(
                f"chat template: a conversation ({roles}) does not render as its turns; "
                "supported: templates of per-message turns"
            )


def end_of_turn_ids(tok: Any, turns: Turns) -> list[int]:
    """Token ids that end an answer: the EOS token, and the special token closing an assistant
    turn where that is another one (<|im_end|>, <end_of_turn>)."""
    ids = [tok.eos_token_id] if tok.eos_token_id is not None else []
    for token in special_tokens_in(tok, turns.assistant_post):
        token_id = tok.convert_tokens_to_ids(token)
        if token_id not in ids:
            ids.append(token_id)
        break
    return ids


def answer_stop_ids(tok: Any) -> list[int]:
    """end_of_turn_ids where the template splits into turns, else just the EOS id (a template that is
    not per-message only matters to Ollama's TEMPLATE, which refuses it)."""
    try:
        return end_of_turn_ids(tok, split_turns(tok))
    except UserError:
        return [tok.eos_token_id]


def special_tokens_in(tok: Any, text: str) -> list[str]:
    """The tokenizer's special tokens occurring in `text`, in order of appearance."""
    found = [(text.find(t), t) for t in tok.all_special_tokens if t and t in text]
    return [t for _, t in sorted(found)]


def stop_strings(tok: Any, turns: Turns) -> list[str]:
    """Where a runtime should stop generating: end-of-turn tokens, and the start of a next user turn."""
    stops = [tok.convert_ids_to_tokens(i) for i in end_of_turn_ids(tok, turns)]
    starts = special_tokens_in(tok, turns.user_pre) or ([turns.user_pre.strip()] if turns.user_pre.strip() else [])
    for s in starts:
        if s not in stops:
            stops.append(s)
    return stops


def go_template(turns: Turns) -> str:
    """The turns as an Ollama (Go text/template) TEMPLATE over `.Messages`: a leading system
    message takes the system parts, otherwise the head (the student's default system turn) opens
    the prompt, exactly as the Jinja template does. No `{{-` trimming: the parts' own whitespace
    (newlines after a turn) is part of the prompt the student was trained on."""

    def lit(text: str) -> str:
        return text.replace("{{", '{{ "{{" }}')

    return (
        '{{ if and .Messages (eq (index .Messages 0).Role "system") }}'
        f"{lit(turns.system_pre)}{{{{ (index .Messages 0).Content }}}}{lit(turns.system_post)}"
        f"{{{{ else }}}}{lit(turns.head)}{{{{ end }}}}"
        "{{ range .Messages }}"
        f'{{{{ if eq .Role "user" }}}}{lit(turns.user_pre)}{{{{ .Content }}}}{lit(turns.user_post)}'
        f'{{{{ else if eq .Role "assistant" }}}}{lit(turns.assistant_pre)}{{{{ .Content }}}}{lit(turns.assistant_post)}'
        "{{ end }}{{ end }}"
        f"{lit(turns.generation)}"
    )
