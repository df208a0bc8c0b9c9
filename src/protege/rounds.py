"""`protege rounds`: predict -> review -> retrain, round after round, until the student is good enough.
It runs several stages, so it belongs to none of them; `run_rounds` reads top to bottom:

0. start     the model to beat: the untuned base (zero-shot), or a student on the      protege.rounds_model,
             teacher's labels of the pool when the pool has them and it scores better  protege.train
then, each round:
1. choose    the current model answers the unreviewed pool; the order (uncertainty:    protege.review.queue
             smallest margin between its two best labels first, near-duplicates
             pushed back) picks K records
2. review    people accept / edit / reject them on the review page (the round waits),  protege.review.app,
             or, with --simulate-from FIELD, each record's gold field answers           protege.review.actions
             (benchmarks and tests only: everything then says "simulated")
3. train     a LoRA student on everything approved so far (plus the teacher's labels   protege.train
             of the unreviewed rest, where the start showed those help), saved as a
             dataset version first
4. evaluate  the new student on --eval                                                  protege.rounds_model
5. keep      the better of the new student and the model it would replace: small data
             can make a student worse than zero-shot, and a round never hands that over

State is written after every step (artifacts/rounds/NAME/state.json), so an interrupted run started
again with the same arguments resumes in the round and step it was in.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

from protege.data.records import Record, load_records, save_dataset
from protege.errors import DataError
from protege.log import console
from protege.metrics import majority_baseline
from protege.review import actions as A
from protege.review import predictions as P
from protege.review.checks import AnswerCheck, answer_check
from protege.review.export import APPROVED, apply_review
from protege.review.queue import order
from protege.review.stats import agreement, current_states, final_answer
from protege.rounds_model import evaluate, load_student, predict
from protege.rounds_state import RoundsSettings, Run
from protege.tasks import Task, load_task
from protege.train.config import DataConfig, TrainConfig, load_train_config
from protege.workspace import Workspace

__all__ = ["RoundsSettings", "keep_better", "run_rounds"]


# ---- the loop --------------------------------------------------------------------------------------
def run_rounds(ws: Workspace, s: RoundsSettings) -> dict[str, Any]:
    """All rounds (resuming an interrupted run of the same settings); returns the JSON result."""
    task = load_task(s.task)
    run = Run.open(ws, s, task)
    if s.threads:
        import torch

        torch.set_num_threads(s.threads)
    try:
        pool = load_records(ws.store, run.state["pool"])
        check = answer_check(task, pool, run.pool_name)
        evalset = eval_records(ws, task, s)
        best = run.state.get("best") or start(ws, task, s, run, pool, evalset)  # 0
        for r in range(run.state["next_round"], s.rounds + 1):
            t0 = time.perf_counter()
            console.print(
                f"[bold]round {r}[/] of {s.rounds}: {best['model']} chooses {s.per_round} records ({s.order})"
            )
            chosen = choose(task, s, run, r, pool, best)  # 1
            review(ws, task, s, run, r, pool, chosen, check)  # 2
            data = training_set(ws, s, run, r, pool)  # 3
            scored = evaluate_candidate(ws, task, s, run, r, data, evalset)  # 4
            best = keep_better(best, scored, r, evalset is not None)  # 5
            run.finish_round(best, round_row(ws, task, run, r, pool, chosen, best, scored, data, evalset, t0))
    except BaseException as e:
        ws.store.finish_run(run.name, "interrupted" if isinstance(e, KeyboardInterrupt) else "failed", None)
        raise
    return run.finish(best)


# ---- 0. start ----------------------------------------------------------------------------------------
def eval_records(ws: Workspace, task: Task, s: RoundsSettings) -> list[Record] | None:
    if not s.eval:
        console.print("[yellow]no --eval data: models cannot be compared; each round hands over its new student[/]")
        return None
    from protege.evaluate.prompts import reference_of

    records = load_records(ws.store, s.eval)[: s.eval_limit or None]
    if not records:
        raise DataError(f"--eval {s.eval}: no records")
    if missing := [i for i, r in enumerate(records) if reference_of(task, r) is None]:
        raise DataError(f"--eval {s.eval}: record {missing[0]} has no reference answer ({len(missing)} in all)")
    return records


def start(
    ws: Workspace, task: Task, s: RoundsSettings, run: Run, pool: list[Record], evalset: list[Record] | None
) -> dict[str, Any]:
    """The model round 1 starts from: zero-shot, or the student on the teacher's labels when the pool
    has them and it scores better (which also decides `teacher_fill` in auto mode)."""
    zero = {"model": "zero-shot", "path": s.base, "score": None, "score_ci": None}
    if evalset is not None:
        zero |= evaluate(load_student("zero-shot", s.base), task, evalset)
    taught = teacher_student(ws, task, s, run, pool, evalset)
    better = taught is not None and (zero["score"] is None or taught["score"] > zero["score"])
    fill = s.teacher_fill == "yes" or (s.teacher_fill == "auto" and better)
    best = taught if better else zero
    why = start_reason(zero, taught, best, fill)
    console.print(why)
    run.state["start"] = {"model": best["model"], "score": best["score"], "score_ci": best["score_ci"],
                          "zero_shot": zero, "teacher_labelled": taught, "teacher_fill": fill, "why": why}  # fmt: skip
    run.state["best"] = best
    run.save()
    return best


def teacher_student(
    ws: Workspace, task: Task, s: RoundsSettings, run: Run, pool: list[Record], evalset: list[Record] | None
) -> dict[str, Any] | None:
    """A student on the teacher's answers in the pool (None when it has none, or with teacher_fill no)."""
    answered = [r for r in pool if r.review != "rejected" and A.stored_answer(r) is not None]
    if not answered or s.teacher_fill == "no":
        return None
    data = save_training_set(ws, run, 0, answered, approved=0, filled=len(answered))
    taught: dict[str, Any] = {"model": "teacher-labelled", "path": train_model(ws, task, s, run, 0, data),
                              "score": None, "score_ci": None, "data": data}  # fmt: skip
    if evalset is not None:
        taught |= evaluate(load_student("teacher-labelled", taught["path"]), task, evalset)
    return taught


def start_reason(zero: dict[str, Any], taught: dict[str, Any] | None, best: dict[str, Any], fill: bool) -> str:
    text = f"start: zero-shot {_score(zero)}"
    if taught is None:
        return text + "; no teacher labels in the pool (or --teacher-fill no): rounds start from zero-shot"
    return (
        f"{text}, a student on the teacher's {taught['data']['teacher_filled']} labels {_score(taught)}: round 1 "
        f"starts from {best['model']}; the teacher's labels of records not yet reviewed "
        f"{'are' if fill else 'are not'} used in training"
    )


def _score(m: dict[str, Any]) -> str:
    return "(not scored: no --eval)" if m.get("score") is None else f"{m['score']:.3f}"


# ---- 1. choose ----------------------------------------------------------------------------------------
def choose(task: Task, s: RoundsSettings, run: Run, r: int, pool: list[Record], best: dict[str, Any]) -> list[dict]:
    """The K unreviewed records the order puts first, with the current model's answer to each."""
    cur = run.current(r)
    if "chosen" in cur:
        return cur["chosen"]
    states = current_states(run.ws.store, run.pool_name, pool)
    todo = [i for i, st in enumerate(states) if not st.reviewed]
    if not todo:
        raise DataError(f"round {r}: every record of the pool {run.state['pool']} is reviewed; nothing left to choose")
    scan = todo if not s.scan or len(todo) <= s.scan else sorted(random.Random(s.seed * 7919 + r).sample(todo, s.scan))
    student = load_student(best["model"], best["path"])
    uses_model = s.order in ("uncertainty", "disagreement")
    preds = {}
    if uses_model:
        preds = dict(zip(scan, predict(student, task, [pool[i] for i in scan], "choose"), strict=True))
    answers = {i: states[i].answer for i in scan}
    picked = distinct(pool, order(pool, scan, s.order, preds, answers, seed=s.seed * 7919 + r), s.per_round)
    if not uses_model:  # the model's answers to the picked records: for the page and for kappa
        preds = dict(zip(picked, predict(student, task, [pool[i] for i in picked], "answer"), strict=True))
    path = run.folder / f"round-{r}" / "predictions.jsonl"
    P.write(path, [pool[i] for i in picked], [preds[i] for i in picked], picked)
    cur["chosen"] = [{"idx": i, "key": A.record_key(pool[i]), "answer": preds[i].answer,
                      "uncertainty": preds[i].uncertainty_key, "model": student.name} for i in picked]  # fmt: skip
    cur["predictions"] = str(path)
    run.save()
    return cur["chosen"]


def distinct(pool: list[Record], ranked: list[int], k: int) -> list[int]:
    """The first `k` of `ranked` with different inputs: one review covers all exact copies of an input."""
    seen, out = set(), []
    for i in ranked:
        key = A.record_key(pool[i])
        if key not in seen:
            seen.add(key)
            out.append(i)
        if len(out) == k:
            break
    return out


# ---- 2. review -----------------------------------------------------------------------------------------
def review(
    ws: Workspace, task: Task, s: RoundsSettings, run: Run, r: int, pool: list[Record], chosen: list[dict],
    check: AnswerCheck,
) -> None:  # fmt: skip
    cur = run.current(r)
    if cur.get("reviewed"):
        return
    if s.simulate_from:
        simulate(ws, run, pool, chosen, check, s.simulate_from)
    else:
        wait_for_people(ws, task, s, run, r, [c["idx"] for c in chosen])
    cur["reviewed"] = True
    run.save()


def gold_of(record: Record, field: str, idx: int) -> Any:
    """The simulated person's answer: an input field, a metadata key, or the record's own attribute."""
    fields = record.metadata.get("input") if isinstance(record.metadata.get("input"), dict) else {}
    for where in (fields, record.metadata):
        if field in where and where[field] is not None:
            return where[field]
    value = getattr(record, field, None) if field in ("label",) else None
    if value is None:
        raise DataError(f"--simulate-from {field}: pool record {idx} has no {field!r} (looked in its input "
                        "fields, its metadata and its label)")  # fmt: skip
    return value


def simulate(ws: Workspace, run: Run, pool: list[Record], chosen: list[dict], check: AnswerCheck, field: str) -> None:
    """Each chosen record reviewed by its gold field: accepted when the answer shown (the teacher's, else
    the model's) is the gold one, else edited to it. Stored as ordinary actions of reviewer
    `simulated:FIELD`, so stats, export and training treat them as any review."""
    reviewer = f"simulated:{field}"
    for c in chosen:
        i, record = c["idx"], pool[c["idx"]]
        state = A.current_state(ws.store, run.pool_name, record, c["key"])
        if state.reviewed:
            continue
        gold = gold_of(record, field, i)
        value, reason = check.check(gold if isinstance(gold, str) else json.dumps(gold))
        if reason:
            raise DataError(f"--simulate-from {field}: pool record {i}: {reason}")
        shown = state.answer if state.answer is not None else c["answer"]
        action = "accept" if value == shown else "edit"
        A.act(ws.store, run.pool_info, i, record, reviewer, action, value, check.kind,
              note=f"simulated: gold field {field!r} answered in place of a person")  # fmt: skip


def wait_for_people(ws: Workspace, task: Task, s: RoundsSettings, run: Run, r: int, picked: list[int]) -> None:
    """Serve the round's records on the review page and wait until each one is accepted, edited or rejected."""
    from protege.review.app import Background, check_host, create_app, page_url
    from protege.review.session import Session, Settings

    check_host(s.host, s.token)
    title = f"{run.name}: round {r}, {len(picked)} records"
    settings = Settings(dataset=run.state["pool"], task=task, predictions=run.current(r)["predictions"],
                        only=picked, reviewer="reviewer", title=title)  # fmt: skip
    session = Session(ws.store, settings)
    with Background(create_app(session, s.token), s.host, s.port):
        url = page_url(s.host, s.port, s.token)
        console.print(f"[bold]round {r}[/]: review its {len(picked)} records at {url} (the round goes on "
                      "when every one is accepted, edited or rejected)", highlight=False)  # fmt: skip
        said = None
        while left := sum(not session.states()[i].reviewed for i in picked):
            if left != said:
                console.print(f"[dim]{left} of {len(picked)} still to review[/]")
                said = left
            time.sleep(1)


# ---- 3. train -------------------------------------------------------------------------------------------
def training_set(ws: Workspace, s: RoundsSettings, run: Run, r: int, pool: list[Record]) -> dict[str, Any] | None:
    """Everything approved so far (edits applied), plus the teacher's labels of unreviewed records when
    the start showed they help, saved as a dataset version. None when there is nothing to train on."""
    cur = run.current(r)
    if "data" in cur:
        return cur["data"]
    states = current_states(ws.store, run.pool_name, pool)
    approved = [apply_review(pool[i], st, run.pool_name) for i, st in enumerate(states)
                if st.reviewed and st.status in APPROVED]  # fmt: skip
    fill = run.state["start"]["teacher_fill"]
    filled = [pool[i] for i, st in enumerate(states) if fill and not st.reviewed and st.status != "rejected"
              and A.stored_answer(pool[i]) is not None]  # fmt: skip
    cur["data"] = save_training_set(ws, run, r, approved + filled, len(approved), len(filled)) if approved else None
    run.save()
    return cur["data"]


def save_training_set(ws: Workspace, run: Run, r: int, records: list[Record], approved: int, filled: int) -> dict:
    usable = [_with_answer(x) for x in records if A.stored_answer(x) is not None]
    source = {"rounds": run.name, "round": r, "approved": approved, "teacher_filled": filled, "pool": run.state["pool"]}
    info = save_dataset(ws.store, f"{run.name}-r{r}-train", usable, source=source, parents=[run.pool_info["id"]])
    labels = Counter(A.stored_answer(x) for x in usable)
    return {"dataset": f"{info['name']}@{info['version']}", "approved": approved, "teacher_filled": filled,
            "label_counts": dict(labels)}  # fmt: skip


def _with_answer(record: Record) -> Record:
    """A pool record whose answer is only its label gets it as the final assistant turn (what training reads)."""
    if record.completion is not None:
        return record
    body = record.model_dump()
    body["messages"].append({"role": "assistant", "content": A.stored_answer(record)})
    return Record.model_validate(body)


def train_model(ws: Workspace, task: Task, s: RoundsSettings, run: Run, r: int, data: dict[str, Any]) -> str:
    """A LoRA student on `data` (reused when this round already trained one on the same dataset version)."""
    from protege.train.run import train

    name = f"{run.name}-r{r}"
    cfg = train_config(s, task, data["dataset"], name)
    done = ws.store.get_run(name)
    if done and done["status"] == "done" and (done["config"] or {}).get("data", {}).get("train") == data["dataset"]:
        console.print(f"[dim]reusing {name} (trained on {data['dataset']})[/]")
        return str(ws.resolve(done["output_dir"]))
    train(cfg, workspace=ws)
    return str(ws.resolve(cfg.output))


def train_config(s: RoundsSettings, task: Task, dataset: str, name: str) -> TrainConfig:
    """`--train CONFIG.yaml` with the round's base, task, data and output; else LoRA defaults for small
    data (2 epochs, the bare input as prompt, an empty system turn as in the demo's student)."""
    fields = {"base": s.base, "task": str(Path(s.task).resolve()), "output": f"runs/{name}", "name": name,
              "data": DataConfig(train=dataset)}  # fmt: skip
    if s.threads:
        fields["threads"] = s.threads
    if s.train:
        cfg = load_train_config(s.train)
        return cfg.model_copy(update=fields)
    return TrainConfig(method="lora", epochs=2, batch_size=8, lr=2e-4, max_length=256, system_prompt="", seed=s.seed,
                       **fields)  # fmt: skip


# ---- 4. evaluate, 5. keep the better ---------------------------------------------------------------------
def evaluate_candidate(
    ws: Workspace, task: Task, s: RoundsSettings, run: Run, r: int, data: dict | None, evalset: list[Record] | None
) -> dict[str, Any] | None:
    cur = run.current(r)
    if "scored" in cur:
        return cur["scored"]
    scored = None
    if data is not None:
        path = train_model(ws, task, s, run, r, data)
        scored = {"model": f"round {r}", "path": path, "score": None, "score_ci": None}
        if evalset is not None:
            scored |= evaluate(load_student(f"round {r}", path), task, evalset)
    cur["scored"] = scored
    run.save()
    return scored


def keep_better(best: dict[str, Any], scored: dict[str, Any] | None, r: int, compared: bool) -> dict[str, Any]:
    """The model this round hands over: the new student only when it scores higher than the one it
    would replace (ties keep the one already trusted); without eval data, the new student."""
    if scored is None:
        return {**best, "kept": f"{best['model']} (round {r} had nothing approved to train on)"}
    if not compared or scored["score"] > best["score"]:
        return {**scored, "kept": f"round {r}'s student" + ("" if compared else " (not compared: no --eval)")}
    return {**best, "kept": f"{best['model']}: round {r}'s student scored {scored['score']:.3f}, "
                            f"not above {best['score']:.3f}"}  # fmt: skip


# ---- the round's row --------------------------------------------------------------------------------------
def round_row(
    ws: Workspace, task: Task, run: Run, r: int, pool: list[Record], chosen: list[dict], best: dict[str, Any],
    scored: dict | None, data: dict | None, evalset: list[Record] | None, t0: float,
) -> dict[str, Any]:  # fmt: skip
    """One row of the per-round table (the `--json` contract's keys first)."""
    states = current_states(ws.store, run.pool_name, pool)
    mine = [(c, states[c["idx"]]) for c in chosen if states[c["idx"]].reviewed]
    labels = task.output.kind == "label"
    model_human = agreement([(c["answer"], final_answer(st)) for c, st in mine], labels)
    teacher_human = agreement([(A.stored_answer(pool[c["idx"]]), final_answer(st)) for c, st in mine], labels)
    row = {
        "round": r,
        # human decisions, not records: a review covers every exact duplicate of its input at once
        "labels_used": len({A.record_key(x) for x, st in zip(pool, states, strict=True) if st.reviewed}),
        "score": best["score"],
        "score_ci": best["score_ci"],
        "kappa_model_human": model_human["kappa"],
        "model": best["model"],
        "kept": best["kept"],
        "candidate_score": scored["score"] if scored else None,
        "candidate_score_ci": scored["score_ci"] if scored else None,
        "agreement_model_human": model_human["agreement"],
        "kappa_teacher_human": teacher_human["kappa"],
        "agreement_teacher_human": teacher_human["agreement"],
        "edit_rate": sum(st.status == "edited" for _, st in mine) / len(mine) if mine else None,
        "approved": data["approved"] if data else 0,
        "teacher_filled": data["teacher_filled"] if data else 0,
        "trained_on": data["dataset"] if data else None,
        "chosen": [c["idx"] for c in chosen],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if labels and data and evalset is not None:
        from protege.evaluate.prompts import reference_of

        counts = data["label_counts"]
        train_labels = [lab for lab, n in counts.items() for _ in range(n)]
        maj = majority_baseline(train_labels, [reference_of(task, x) for x in evalset], task.labels,
                                f"the labels trained on in round {r}")  # fmt: skip
        row["majority"] = {k: maj[k] for k in ("label", "score", "score_ci")}
    return row
