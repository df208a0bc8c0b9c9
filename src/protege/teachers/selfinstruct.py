"""Self-instruct (Wang et al. 2022; Stanford Alpaca): grow a set of instruction-following tasks
from a few human-written seeds.

1. Show the teacher 6 sampled seed tasks and 2 already generated ones as a numbered list and
   ask it to continue; parse the numbered lines.
2. Keep a new instruction only if it is 4-150 words, names no image/file/graph-like input the
   student could never see, and has ROUGE-L <= 0.7 against every task in the pool.
3. Ask whether it is a classification task; then generate an instance. Classification tasks
   are generated output-first (label, then an input for it), so labels do not all collapse
   onto the one the teacher finds easiest; others input-first.

Every teacher call goes through the workspace cache, so a re-run with the same seed is free.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from protege.data.files import read_rows
from protege.data.records import Record, save_dataset
from protege.data.text import rouge_l_tokens
from protege.data.text import words as rouge_tokens
from protege.errors import DataError, UserError
from protege.log import console, progress
from protege.names import check_name
from protege.teachers.cache import CallResult, TeacherSession, prompt_hash
from protege.teachers.client import get_teacher_config, make_teacher
from protege.workspace import Workspace

ROUGE_THRESHOLD = 0.7
MIN_WORDS, MAX_WORDS = 4, 150
# Alpaca's list: tasks a text-only model cannot do (or that need a file it will never see).
BLACKLIST = [
    "image",
    "images",
    "graph",
    "graphs",
    "picture",
    "pictures",
    "file",
    "files",
    "map",
    "maps",
    "draw",
    "plot",
    "go to",
    "video",
    "audio",
    "music",
    "flowchart",
    "diagram",
    "photo",
    "photos",
]
_BLACKLIST_RE = re.compile(r"\b(" + "|".join(re.escape(w) for w in BLACKLIST) + r")\b", re.I)
_NUMBERED_RE = re.compile(r"^\s*(?:task\s*)?(\d{1,3})\s*[.):]\s*(?:instruction:\s*)?(.+?)\s*$", re.I)


@dataclass
class SeedTask:
    instruction: str
    instances: list[dict[str, str]]
    is_classification: bool = False


@dataclass
class NewTask:
    instruction: str
    call: CallResult
    rouge_max: float
    most_similar: str
    is_classification: bool = False
    instance: dict[str, str] = field(default_factory=dict)
    instance_call: CallResult | None = None
    instance_messages: list[dict[str, str]] = field(default_factory=list)


def load_seeds(path: str | Path) -> list[SeedTask]:
    """The Alpaca/self-instruct seed format: {instruction, instances: [{input, output}], is_classification}."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: seed file not found")
    seeds = []
    for n, obj in read_rows(path):
        if not isinstance(obj, dict) or not isinstance(obj.get("instruction"), str):
            raise DataError(f"{path}:{n}: instruction: missing or not a string")
        instances = obj.get("instances") or []
        if not isinstance(instances, list) or not all(isinstance(i, dict) for i in instances):
            raise DataError(f"{path}:{n}: instances: expected a list of {{input, output}} objects")
        seeds.append(SeedTask(obj["instruction"].strip(), instances, bool(obj.get("is_classification"))))
    if len(seeds) < 2:
        raise DataError(f"{path}: need at least 2 seed tasks, found {len(seeds)}")
    return seeds


# ---- ROUGE-L --------------------------------------------------------------------------------
# Words and ROUGE-L are protege.data.text's, the same as the evaluation's text score.
rouge_l = rouge_l_tokens


class Pool:
    """Instructions kept so far (seeds included), tokenised once."""

    def __init__(self, instructions: list[str]):
        self.items = [(i, rouge_tokens(i)) for i in instructions]

    def most_similar(self, text: str) -> tuple[float, str]:
        toks = rouge_tokens(text)
        best = (0.0, "")
        for inst, other in self.items:
            score = rouge_l(toks, other)
            if score > best[0]:
                best = (score, inst)
        return best

    def add(self, text: str) -> None:
        self.items.append((text, rouge_tokens(text)))


def instruction_problem(text: str) -> str | None:
    """Why a generated instruction is unusable, or None."""
    words = text.split()
    if len(words) < MIN_WORDS:
        return "too short"
    if len(words) > MAX_WORDS:
        return "too long"
    if _BLACKLIST_RE.search(text):
        return "needs an image, file or other non-text input"
    if text.lower().startswith("write a program"):
        return "asks for a program"  # Alpaca: these are mostly unanswerable without a runtime
    if not text[0].isascii() or not text[0].isalnum():
        return "starts with punctuation or a non-ASCII character"
    return None


def parse_numbered(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        m = _NUMBERED_RE.match(line)
        if m:
            out.append(m.group(2).strip().strip('"'))
    return out


# ---- prompts --------------------------------------------------------------------------------
def instruction_prompt(shown: list[str], n_new: int) -> list[dict[str, str]]:
    lines = "\n".join(f"{i}. {t}" for i, t in enumerate(shown, 1))
    start = len(shown) + 1
    return [
        {
            "role": "user",
            "content": "Come up with a series of diverse tasks for a language model. Vary the verbs and the kind "
            "of task (open-ended generation, classification, editing, question answering, ...). Each task is one "
            "self-contained instruction in English that a text-only model can do.\n\n"
            f"{lines}\n\nContinue the list with {n_new} new tasks, numbered from {start}, one per line.",
        }
    ]


def classification_prompt(instruction: str, examples: list[SeedTask]) -> list[dict[str, str]]:
    shots = "\n\n".join(
        f"Task: {s.instruction}\nIs it classification? {'Yes' if s.is_classification else 'No'}" for s in examples
    )
    return [
        {
            "role": "user",
            "content": "Can the following task be regarded as a classification task with finite output labels? "
            f"Answer Yes or No.\n\n{shots}\n\nTask: {instruction}\nIs it classification?",
        }
    ]


def instance_prompt(instruction: str, examples: list[SeedTask], output_first: bool) -> list[dict[str, str]]:
    def inst(s: SeedTask) -> dict[str, str]:
        return s.instances[0] if s.instances else {"input": "", "output": ""}

    if output_first:
        head = (
            "Given the classification task definition and a class label, generate an input that corresponds "
            "to the class label. If the task needs no input, leave the input empty."
        )
        shots = [
            f"Task: {s.instruction}\nClass label: {inst(s)['output']}\nInput: {inst(s)['input']}" for s in examples
        ]
        tail = f"Task: {instruction}\nClass label:"
    else:
        head = "Come up with an example for the following task. If the task needs no input, leave the input empty."
        shots = [f"Task: {s.instruction}\nInput: {inst(s)['input']}\nOutput: {inst(s)['output']}" for s in examples]
        tail = f"Task: {instruction}\nInput:"
    return [{"role": "user", "content": head + "\n\n" + "\n\n".join(shots) + "\n\n" + tail}]


def parse_instance(text: str, output_first: bool) -> dict[str, str] | None:
    """{input, output} from the teacher's continuation of the instance prompt, or None."""
    text = text.strip()
    if output_first:
        m = re.match(
            r"^(?:class label:\s*)?(.+?)\s*\n\s*input:\s*(.*?)\s*(?:\n\s*(?:task|class label):|$)", text, re.I | re.S
        )
        if not m:
            return None
        return {"input": _empty_if_none(m.group(2)), "output": m.group(1).strip()}
    m = re.match(r"^(?:input:\s*)?(.*?)\s*output:\s*(.+?)\s*(?:\n\s*task:|$)", text, re.I | re.S)
    if not m:
        return {"input": "", "output": text} if text else None
    return {"input": _empty_if_none(m.group(1)), "output": m.group(2).strip()}


def _empty_if_none(text: str) -> str:
    text = text.strip()
    return "" if text.lower() in ("", "none", "<noinput>", "n/a", "(empty)", "empty") else text


# ---- the pipeline ---------------------------------------------------------------------------
@dataclass
class SelfInstructResult:
    dataset: dict[str, Any]
    kept: int
    dropped: dict[str, int]
    stats: dict[str, Any]
    seconds: float

    def summary(self) -> dict[str, Any]:
        return {
            "dataset": f"{self.dataset['name']}@{self.dataset['version']}",
            "tasks": self.kept,
            "dropped": self.dropped,
            "seconds": round(self.seconds, 2),
            **self.stats,
        }


class SelfInstruct:
    def __init__(self, session: TeacherSession, seeds: list[SeedTask], seed: int = 0, per_request: int = 8):
        self.session = session
        self.seeds = seeds
        self.rng = random.Random(seed)
        self.per_request = per_request
        self.pool = Pool([s.instruction for s in seeds])
        self.kept: list[NewTask] = []
        self.dropped: dict[str, int] = {}
        cfg = session.config
        self.gen_params = {"temperature": max(cfg.temperature, 0.7), "max_tokens": max(cfg.max_tokens, 1024)}
        self.params = {"temperature": cfg.temperature, "max_tokens": cfg.max_tokens}

    def _drop(self, why: str) -> None:
        self.dropped[why] = self.dropped.get(why, 0) + 1

    async def instructions(self, num: int, concurrency: int, bar: Any = None) -> None:
        """Rounds of `concurrency` list requests until `num` instructions are kept (or the teacher
        stops producing new ones: a round bound keeps a repetitive teacher from looping forever)."""
        max_requests = max(8, 4 * num)
        sent = 0
        while len(self.kept) < num and sent < max_requests:
            prompts = [self._list_prompt() for _ in range(min(concurrency, max_requests - sent))]
            sent += len(prompts)
            results = await asyncio.gather(*(self.session.chat(p, self.gen_params) for p in prompts))
            for result in results:  # in prompt order, so a run is reproducible whatever finished first
                for text in parse_numbered(result.text):
                    if len(self.kept) < num:
                        self._consider(text, result)
            if bar is not None:
                bar.update(bar.tasks[0].id, completed=len(self.kept))

    def _list_prompt(self) -> list[dict[str, str]]:
        shown = [s.instruction for s in self.rng.sample(self.seeds, min(6, len(self.seeds)))]
        if self.kept:
            shown += [t.instruction for t in self.rng.sample(self.kept, min(2, len(self.kept)))]
        return instruction_prompt(shown, self.per_request)

    def _consider(self, text: str, call: CallResult) -> None:
        problem = instruction_problem(text)
        if problem:
            return self._drop(problem)
        score, similar = self.pool.most_similar(text)
        if score > ROUGE_THRESHOLD:
            return self._drop("ROUGE-L > 0.7 against the pool")
        self.pool.add(text)
        self.kept.append(NewTask(text, call, round(score, 3), similar))

    async def instances(self, task: NewTask) -> None:
        rng = random.Random(task.instruction)  # per-task, so prompts do not depend on completion order
        examples = rng.sample(self.seeds, min(6, len(self.seeds)))
        answer = await self.session.chat(classification_prompt(task.instruction, examples), self.params)
        task.is_classification = answer.text.strip().lower().startswith("yes")
        pool = [s for s in self.seeds if s.is_classification == task.is_classification and s.instances] or self.seeds
        shots = rng.sample(pool, min(3, len(pool)))
        task.instance_messages = instance_prompt(task.instruction, shots, task.is_classification)
        call = await self.session.chat(task.instance_messages, self.params)
        task.instance_call = call
        task.instance = parse_instance(call.text, task.is_classification) or {}

    def record(self, task: NewTask) -> Record | None:
        inst = task.instance
        if not inst or not inst.get("output"):
            self._drop("no usable instance")
            return None
        prompt = task.instruction + (f"\n\n{inst['input']}" if inst.get("input") else "")
        call = task.instance_call
        cfg = self.session.config
        prov = {
            "source": "self-instruct",
            "teacher": self.session.name,
            "model": cfg.model,
            "terms": cfg.terms,
            "instruction_call_id": task.call.call_id,
            "call_id": call.call_id,
            "prompt_hash": prompt_hash(task.instance_messages),
            "params": self.params,
            "prompt_tokens": call.prompt_tokens,
            "completion_tokens": call.completion_tokens,
            "cost": round(call.cost, 8),
            "latency_ms": round(call.latency_ms, 1),
            "time": datetime.fromtimestamp(call.created_at, UTC).isoformat(timespec="seconds"),
        }
        return Record(
            messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": inst["output"]}],
            metadata={
                "input": {"instruction": task.instruction, "input": inst.get("input", "")},
                "is_classification": task.is_classification,
                "rouge_max": task.rouge_max,
                "most_similar": task.most_similar,
            },
            provenance=prov,
        )


def self_instruct(
    ws: Workspace,
    seeds_path: str | Path,
    num: int,
    teacher: str,
    name: str = "self-instruct",
    concurrency: int = 4,
    seed: int = 0,
) -> SelfInstructResult:
    """Generate `num` new tasks with one instance each and save them as dataset `name`."""
    check_name(name, "dataset name")  # before any call is paid for
    config = get_teacher_config(ws.config.teachers, teacher)
    seeds = load_seeds(seeds_path)
    if config.terms:
        console.print(f"[yellow]warning:[/] teacher {teacher!r} has terms on using its outputs: {config.terms}")
    start = time.perf_counter()
    client = make_teacher(config, teacher)
    session = TeacherSession(ws.store, client, config, teacher, concurrency, ws.config.local_compute_per_hour)
    pipeline = SelfInstruct(session, seeds, seed=seed)

    async def main() -> None:
        try:
            with progress() as bar:
                bar.add_task("instructions", total=num)
                await pipeline.instructions(num, concurrency, bar)
                inst_id = bar.add_task("instances", total=len(pipeline.kept))

                async def one(task: NewTask) -> None:
                    await pipeline.instances(task)
                    bar.update(inst_id, advance=1)

                await asyncio.gather(*(one(t) for t in pipeline.kept))
        finally:
            await client.aclose()

    asyncio.run(main())
    records = [r for r in (pipeline.record(t) for t in pipeline.kept) if r is not None]
    if len(pipeline.kept) < num:
        console.print(f"[yellow]warning:[/] the teacher gave only {len(pipeline.kept)} new usable tasks of {num}")
    source = {
        "kind": "self-instruct",
        "seeds": str(seeds_path),
        "teacher": teacher,
        "model": config.model,
        "terms": config.terms,
        "seed": seed,
        "dropped": pipeline.dropped,
    }
    info = save_dataset(ws.store, name, records, source=source)
    return SelfInstructResult(
        info, len(records), pipeline.dropped, session.stats.as_dict(), time.perf_counter() - start
    )
