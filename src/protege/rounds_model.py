"""The student's part of a round of `protege rounds`, in this process: answer records with a measure of
confidence, and score a model on the eval set.

Label tasks score every label by log-likelihood after the student prompt (models.choice.score_choices, the one scorer:
the rule `protege serve`'s constrained choice follows, so `choice_scores` here and from the server
agree); text tasks answer greedily and keep the answer's mean token log-probability. Rounds run the
model in-process rather than through a `protege serve` child: a round asks it a few thousand
questions and a server start per model would cost more than the questions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from protege.data.records import Record
from protege.evaluate.prompts import reference_of, student_messages
from protege.evaluate.scoring import score
from protege.log import progress
from protege.review.predictions import Prediction
from protege.tasks import Task

CHUNK = 32
"""Prompts per progress step (scoring itself runs one prompt per forward: its labels share it)."""


@dataclass
class Student:
    name: str
    """How rounds name it: zero-shot, teacher-labelled, round 3."""
    path: str
    """What was loaded: a registry name, a model folder or an adapter folder."""
    model: Any
    tok: Any


def load_student(name: str, path: str) -> Student:
    """The model ready to answer; an adapter is folded into its base (PEFT's separate LoRA matmuls
    would slow every forward, as in `protege serve --merge`)."""
    from protege.models.load import load_model, load_tokenizer

    model = load_model(path)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return Student(name, path, model.eval(), load_tokenizer(path))


def predict(
    student: Student, task: Task, records: list[Record], what: str = "predict", max_tokens: int = 256
) -> list[Prediction]:
    """The student's answer to each record, with choice scores (labels) or mean logprob (text, greedy,
    at most `max_tokens` new tokens)."""
    prompts = [student_messages(task, r) for r in records]
    out: list[Prediction] = []
    with progress() as bar:
        job = bar.add_task(f"{what}: {student.name}", total=len(prompts))
        for start in range(0, len(prompts), CHUNK):
            chunk = prompts[start : start + CHUNK]
            out += _labels(student, task, chunk) if task.output.kind == "label" else _texts(student, chunk, max_tokens)
            bar.advance(job, len(chunk))
    return out


def _labels(student: Student, task: Task, prompts: list[list[dict[str, str]]]) -> list[Prediction]:
    from protege.models.choice import score_choices

    scores = score_choices(student.model, student.tok, prompts, task.labels)
    preds = []
    for row in scores.tolist():
        by_label = dict(zip(task.labels, row, strict=True))
        preds.append(Prediction(max(by_label, key=by_label.get), student.name, by_label))
    return preds


def _texts(student: Student, prompts: list[list[dict[str, str]]], max_new_tokens: int = 256) -> list[Prediction]:
    import torch

    tok, model = student.tok, student.model
    preds = []
    for messages in prompts:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True, pad_token_id=tok.pad_token_id)  # fmt: skip
            logprobs = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)[0]
        new = out.sequences[0, ids.shape[1] :]
        finite = [float(x) for x in logprobs.tolist() if math.isfinite(x)]
        answer = tok.decode(new, skip_special_tokens=True).strip()
        preds.append(Prediction(answer, student.name, None, sum(finite) / len(finite) if finite else None))
    return preds


def evaluate(student: Student, task: Task, records: list[Record]) -> dict[str, Any]:
    """The task's score on `records` (accuracy for labels, ROUGE-L or field accuracy otherwise) with
    its 95% bootstrap interval, by the same scoring `protege eval` uses."""
    preds = predict(student, task, records, "eval")
    refs = [reference_of(task, r) for r in records]
    scores = score(task, refs, [{"output": p.answer} for p in preds])
    keep = ("score_name", "score", "score_ci", "macro_f1", "macro_f1_ci", "exact_match")
    return {k: scores[k] for k in keep if k in scores} | {"model": student.name, "path": student.path, "n": len(refs)}
