"""Constrained choice has one scorer (models/choice.py): training's label evaluation, an in-process
teacher and `protege serve` (over real HTTP) give the same scores and the same choice, equal to a
plain forward pass per choice over the tokens the chat template gives each label."""

from __future__ import annotations

import asyncio

import pytest
import torch
from openai import OpenAI

LABELS = ["negative", "not sure", "mixed feelings", "positive"]
PROMPTS = [
    [{"role": "system", "content": "Classify the sentiment of the review."}, {"role": "user", "content": "I loved it"}],
    [{"role": "user", "content": "meh, it was fine I guess"}],
    [
        {"role": "user", "content": "great service"},
        {"role": "assistant", "content": "positive"},
        {"role": "user", "content": "the soup was cold and the waiter rude"},
    ],
]


def plain_scores(model, tok, messages, labels) -> list[float]:
    """One ordinary forward per label over [prompt, label's turn up to end-of-turn]; the label's
    tokens are found by rendering the whole conversation, independently of models/choice.py."""
    head = tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), add_special_tokens=False)
    head = head["input_ids"]
    out = []
    for label in labels:
        full = tok.apply_chat_template([*messages, {"role": "assistant", "content": label}], tokenize=False)
        ids = tok(full, add_special_tokens=False)["input_ids"]
        assert ids[: len(head)] == head
        answer = ids[len(head) : ids.index(tok.eos_token_id, len(head)) + 1]
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([head + answer])).logits[0].float(), -1)
        out.append(sum(logprobs[len(head) - 1 + i, t].item() for i, t in enumerate(answer)))
    return out


def tolerance(model) -> float:
    """Summed log-probabilities of a few tokens agree to 1e-3 in float32; bfloat16 (chosen by `auto`
    on CPUs with native bf16) rounds each logit to ~3 significant digits."""
    return 1e-3 if model.dtype == torch.float32 else 0.1


@pytest.mark.slow  # over 10 s
def test_serve_train_and_teacher_score_choices_alike(tiny_model, tmp_path):
    from protege.config import TeacherConfig
    from protege.models.load import load_model, load_tokenizer
    from protege.server_process import ServerProcess
    from protege.teachers.client import LocalTeacher
    from protege.train.classify import predict_labels, score_choices

    model, tok = load_model(tiny_model, dtype="float32").eval(), load_tokenizer(tiny_model)
    expected = [plain_scores(model, tok, p, LABELS) for p in PROMPTS]
    best = [LABELS[max(range(len(LABELS)), key=row.__getitem__)] for row in expected]

    # training's label evaluation (several prompts in one pass, a shared head among them)
    trained = score_choices(model, tok, PROMPTS, LABELS).tolist()
    assert predict_labels(model, tok, PROMPTS, LABELS) == best
    assert predict_labels(model, tok, PROMPTS, LABELS[::-1]) == best  # the label, not its position, wins

    # an in-process teacher (its own model, loaded as teachers load it)
    teacher = LocalTeacher(TeacherConfig(model=str(tiny_model)))

    async def ask_teacher(labels: list[str]) -> list:
        return [await teacher.complete(p, {"extra_body": {"choices": labels}}) for p in PROMPTS]

    answers, reversed_answers = asyncio.run(ask_teacher(LABELS)), asyncio.run(ask_teacher(LABELS[::-1]))
    teacher_model = teacher._load()[0]

    # protege serve over HTTP
    with ServerProcess(tiny_model, workspace=tmp_path / "ws", extra_args=["--threads", "1"]) as srv:
        client = OpenAI(base_url=srv.base_url, api_key="none", max_retries=0, timeout=120)
        served, served_reversed = (
            [
                client.chat.completions.create(model=str(tiny_model), messages=p, extra_body={"choices": labels})
                for p in PROMPTS
            ]
            for labels in (LABELS, LABELS[::-1])
        )

    for i in range(len(PROMPTS)):
        assert trained[i] == pytest.approx(expected[i], abs=1e-3)
        scores = served[i].model_extra["choice_scores"]
        assert [scores[lab] for lab in LABELS] == pytest.approx(expected[i], abs=1e-3)
        assert served[i].choices[0].message.content == best[i]
        assert served_reversed[i].choices[0].message.content == best[i]
        local = answers[i].raw["choice_scores"]
        assert [local[lab] for lab in LABELS] == pytest.approx(expected[i], abs=tolerance(teacher_model))
        if teacher_model.dtype == torch.float32:
            assert answers[i].text == reversed_answers[i].text == best[i]


def test_label_tokens_follow_the_chat_template(tiny_model):
    """A label's tokens are those the template gives the assistant turn, end-of-turn included,
    whatever the template does to the text (here: it strips the label's surrounding spaces)."""
    from protege.models.choice import answer_tokens
    from protege.models.load import load_tokenizer

    tok = load_tokenizer(tiny_model)
    messages = [{"role": "user", "content": "hi"}]
    head, (plain,) = answer_tokens(tok, messages, ["joy"])
    assert plain == tok("joy", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    stripping = tok.chat_template.replace("message['content']", "message['content'] | trim")
    assert stripping != tok.chat_template
    _, (spaced,) = answer_tokens(tok, messages, ["  joy "], chat_template=stripping)
    assert spaced == plain
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert head == tok(prompt, add_special_tokens=False)["input_ids"]


def test_label_tokens_equal_those_of_the_whole_conversation_tokenised(tiny_model):
    """answer_tokens tokenises only what follows the prompt's last special token (fast for long
    prompts); the ids must be those of tokenising each whole conversation."""
    from protege.models.choice import answer_tokens
    from protege.models.load import load_tokenizer

    tok = load_tokenizer(tiny_model)
    labels = [f"label {i}" for i in range(12)] + [" spaced ", "", "two\nlines"]
    for messages in PROMPTS + [[{"role": "user", "content": "word " * 800}]]:
        head, got = answer_tokens(tok, messages, labels)
        for label, ids in zip(labels, got, strict=True):
            text = tok.apply_chat_template([*messages, {"role": "assistant", "content": label}], tokenize=False)
            full = tok(text, add_special_tokens=False)["input_ids"]
            assert full[: len(head) + len(ids)] == head + ids and ids[-1] == tok.eos_token_id
