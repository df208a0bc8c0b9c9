"""`protege serve` end to end: real servers on 127.0.0.1, the official openai client, real HTTP."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from conftest import EMOTION_LABELS as LABELS
from conftest import EMOTION_ROWS as ROWS
from conftest import run_cli
from protege.errors import ProtegeError, UserError
from protege.server_process import ServerProcess

KEY = "test-key-123"
ADMIN = "admin-key-456"
HELLO = [{"role": "user", "content": "Say something."}]


def make_adapter(base: Path, dest: Path, seed: int) -> Path:
    """A LoRA adapter with random (nonzero) A and B, so its outputs differ from the base's."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base))
    config = LoraConfig(r=4, lora_alpha=64, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(str(dest))
    return dest


@pytest.fixture(scope="module")
def adapters(tiny_model, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {"a": make_adapter(tiny_model, root / "lora-a", 1), "b": make_adapter(tiny_model, root / "lora-b", 2)}


@pytest.fixture(scope="module")
def server(tiny_model, adapters, tmp_path_factory):
    """The base and adapter `lora-a`, behind an API key; admin endpoints behind their own key,
    loading from the adapters' folder only."""
    allowed = str(adapters["a"].parent)
    with ServerProcess(
        tiny_model,
        adapters={"lora-a": adapters["a"]},
        api_key=KEY,
        admin_key=ADMIN,
        extra_args=["--threads", "1", "--adapter-dir", allowed],
        workspace=tmp_path_factory.mktemp("ws"),
    ) as s:
        yield s


@pytest.fixture
def client(server) -> OpenAI:
    return OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=120)


def greedy(client: OpenAI, content: str, model: str, max_tokens: int = 12) -> str:
    resp = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], max_tokens=max_tokens, temperature=0
    )
    return resp.choices[0].message.content


def test_health_and_models(server, client, tiny_model):
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["dtype"] == "float32"  # auto is float32 on any CPU
    ids = {m.id for m in client.models.list().data}
    assert {str(tiny_model), "lora-a"} <= ids


def test_chat_greedy_is_repeatable_and_counts_usage(client, tiny_model):
    resp = client.chat.completions.create(model=str(tiny_model), messages=HELLO, max_tokens=7, temperature=0)
    again = client.chat.completions.create(model=str(tiny_model), messages=HELLO, max_tokens=7, temperature=0)
    assert resp.choices[0].message.content == again.choices[0].message.content
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.completion_tokens == 7 and resp.usage.prompt_tokens > 5
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 7


def test_sampling_seed_n_and_stop(client, tiny_model):
    kwargs = dict(model=str(tiny_model), messages=HELLO, max_tokens=8, temperature=1.0, seed=7, n=3)
    first, second = client.chat.completions.create(**kwargs), client.chat.completions.create(**kwargs)
    texts = [c.message.content for c in first.choices]
    assert texts == [c.message.content for c in second.choices]
    assert len(set(texts)) > 1, "n choices with one seed must still differ from each other"
    full = greedy(client, "stop test", str(tiny_model), max_tokens=12)
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    cut = client.chat.completions.create(
        model=str(tiny_model),
        messages=[{"role": "user", "content": "stop test"}],
        max_tokens=12,
        temperature=0,
        stop=stop,
    )
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == full[: full.index(stop)]


def test_completion_endpoint(client, tiny_model):
    resp = client.completions.create(
        model=str(tiny_model), prompt="Once upon a time", max_tokens=5, temperature=0, logprobs=2
    )
    choice = resp.choices[0]
    assert choice.text and resp.usage.completion_tokens == 5
    assert len(choice.logprobs.tokens) == 5 and all(len(t) == 2 for t in choice.logprobs.top_logprobs)
    assert "".join(choice.logprobs.tokens) == choice.text


def test_streaming_matches_non_streaming(server, client, tiny_model):
    expected = greedy(client, "stream me", str(tiny_model), max_tokens=10)
    stream = client.chat.completions.create(
        model=str(tiny_model),
        messages=[{"role": "user", "content": "stream me"}],
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 10
    body = {"model": str(tiny_model), "messages": HELLO, "max_tokens": 3, "stream": True}
    raw = httpx.post(f"{server.base_url}/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    events = [line for line in raw.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and raw.headers["content-type"].startswith("text/event-stream")


def test_logprobs(client, tiny_model):
    resp = client.chat.completions.create(
        model=str(tiny_model), messages=HELLO, max_tokens=4, temperature=0, logprobs=True, top_logprobs=3
    )
    content = resp.choices[0].logprobs.content
    assert len(content) == 4
    for entry in content:
        assert len(entry.top_logprobs) == 3
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)  # greedy picks the most likely
        assert entry.logprob < 0


def test_constrained_choice_matches_an_independent_computation(client, tiny_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    choices = ["positive", "negative", "not sure"]
    messages = [{"role": "user", "content": "Is this good?"}]
    resp = client.chat.completions.create(model=str(tiny_model), messages=messages, extra_body={"choices": choices})
    scores = resp.model_extra["choice_scores"]
    assert set(scores) == set(choices)
    assert resp.choices[0].message.content == max(scores, key=scores.get)
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32).eval()
    prompt = tok(
        tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), add_special_tokens=False
    )
    for choice in choices:
        target = tok(choice, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([prompt["input_ids"] + target])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids).logits[0].float(), -1)
        start = len(prompt["input_ids"]) - 1
        expected = sum(logprobs[start + i, t].item() for i, t in enumerate(target))
        assert scores[choice] == pytest.approx(expected, abs=1e-3)


def test_concurrent_choice_requests_score_as_when_alone(client, tiny_model):
    """Choice requests that arrive together share one batch (each prompt run once, choices over
    its cache); prompts of different lengths must still get their solo scores."""
    choices = ["yes", "no", "maybe not", ""]
    questions = [[{"role": "user", "content": "Is it? " * (1 + i)}] for i in range(6)]

    def ask(messages):
        resp = client.chat.completions.create(model=str(tiny_model), messages=messages, extra_body={"choices": choices})
        return resp.model_extra["choice_scores"]

    solo = [ask(m) for m in questions]
    with ThreadPoolExecutor(len(questions)) as pool:
        together = list(pool.map(ask, questions))
    for alone, batched in zip(solo, together, strict=True):
        assert batched == pytest.approx(alone, abs=1e-3)


def test_json_mode(client, tiny_model):
    resp = client.chat.completions.create(
        model=str(tiny_model), messages=HELLO, max_tokens=20, temperature=0, response_format={"type": "json_object"}
    )
    text = resp.choices[0].message.content
    assert text.lstrip().startswith("{")
    if resp.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize(
    ("text", "ok", "done"),
    [
        ('{"a": [1, -2.5e3, true, null], "b": {"c": "x\\"y\\u00e9"}}', True, True),
        (' {"a": 1', True, False),
        ("[1]", False, False),
        ('{"a" 1}', False, False),
        ('{"a": 01}', False, False),
        ('{"a": tru}', False, False),
        ('{"a": 1}}', False, True),
    ],
)
def test_json_prefix_automaton(text, ok, done):
    from protege.serve.jsonmode import JsonPrefix

    state = JsonPrefix()
    assert state.feed_text(text) is ok
    if ok:
        assert state.done is done
        if done:
            json.loads(text)


def test_adapters_route_load_and_unload(server, client, tiny_model, adapters):
    base = greedy(client, "adapter check", str(tiny_model))
    lora_a = greedy(client, "adapter check", "lora-a")
    assert lora_a != base
    headers = {"Authorization": f"Bearer {ADMIN}"}
    loaded = httpx.post(f"{server.base_url}/adapters", json={"name": "lora-b", "path": "lora-b"}, headers=headers)
    assert loaded.status_code == 200, loaded.text
    assert "lora-b" in {m.id for m in client.models.list().data}
    lora_b = greedy(client, "adapter check", "lora-b")
    assert lora_b not in (base, lora_a)
    assert greedy(client, "adapter check", "lora-a") == lora_a  # loading b changed nothing else
    assert greedy(client, "adapter check", str(tiny_model)) == base
    same = httpx.post(
        f"{server.base_url}/adapters", json={"name": "lora-b", "path": str(adapters["b"])}, headers=headers
    )
    assert same.status_code == 400
    assert httpx.delete(f"{server.base_url}/adapters/lora-b", headers=headers).status_code == 200
    with pytest.raises(openai.NotFoundError):
        greedy(client, "adapter check", "lora-b")
    assert httpx.delete(f"{server.base_url}/adapters/lora-b", headers=headers).status_code == 404
    assert greedy(client, "adapter check", "lora-a") == lora_a
    assert greedy(client, "adapter check", str(tiny_model)) == base


def _error(resp: httpx.Response) -> dict:
    body = resp.json()
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    return body["error"]


def test_errors_are_openai_shaped_and_harmless(server, client, tiny_model):
    url, headers = f"{server.base_url}/chat/completions", {"Authorization": f"Bearer {KEY}"}
    bad_json = httpx.post(url, content=b"{not json", headers={**headers, "Content-Type": "application/json"})
    assert bad_json.status_code == 400 and _error(bad_json)["type"] == "invalid_request_error"
    role = httpx.post(
        url, json={"model": str(tiny_model), "messages": [{"role": "wizard", "content": "x"}]}, headers=headers
    )
    assert role.status_code == 400 and _error(role)["param"].startswith("messages.0.role")
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=str(tiny_model), messages=HELLO, max_tokens=0)
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=str(tiny_model), messages=[{"role": "user", "content": "word " * 1500}])
    assert e.value.body["param"] == "messages" and e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    assert e.value.body["param"] == "model"
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0).models.list()
    assert httpx.get(f"{server.base_url}/models").status_code == 401
    assert greedy(client, "still alive?", str(tiny_model))  # the server survived all of it


def test_32_concurrent_clients_get_their_solo_answers(server, client, tiny_model):
    prompts = [f"Client {i} asks about topic {i * 7} " + "padding " * (i % 9) for i in range(32)]
    solo = [greedy(client, p, str(tiny_model), max_tokens=10) for p in prompts]
    with ThreadPoolExecutor(32) as pool:
        together = list(pool.map(lambda p: greedy(client, p, str(tiny_model), max_tokens=10), prompts))
    assert together == solo
    metrics = httpx.get(f"{server.url}/metrics").text
    batches = [line for line in metrics.splitlines() if line.startswith('protege_batch_size_bucket{le="1.0"}')]
    total = [line for line in metrics.splitlines() if line.startswith("protege_batch_size_count")]
    assert float(batches[0].split()[-1]) < float(total[0].split()[-1]), "some batch must hold more than one row"


def _active(server) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith("protege_requests_active "):
            return float(line.split()[-1])
    raise AssertionError("protege_requests_active missing from /metrics")


@pytest.mark.slow  # over 10 s
def test_queue_full_and_disconnect_frees_the_slot(tiny_model):
    with ServerProcess(tiny_model, extra_args=["--max-queue", "1", "--threads", "1"]) as srv:
        client = OpenAI(base_url=srv.base_url, api_key="none", max_retries=0, timeout=60)
        stream = client.chat.completions.create(
            model=str(tiny_model), messages=HELLO, max_tokens=900, temperature=0, stream=True
        )
        next(iter(stream))
        with pytest.raises(openai.InternalServerError) as e:
            client.chat.completions.create(model=str(tiny_model), messages=HELLO, max_tokens=2)
        assert e.value.status_code == 503
        stream.close()  # the client goes away mid-stream
        deadline = time.monotonic() + 60
        while _active(srv) > 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _active(srv) == 0
        assert client.chat.completions.create(model=str(tiny_model), messages=HELLO, max_tokens=2).choices


def test_adapter_folder_and_run_name_as_model(ws, tiny_model, adapters, tmp_path):
    from protege.serve.app import build_engine

    engine = build_engine(str(adapters["a"]), threads=1)
    try:
        assert engine.route(str(adapters["a"])) == str(adapters["a"])  # the adapter answers under MODEL
        assert engine.route(None) == str(adapters["a"])  # and is the default
        assert engine.route(str(tiny_model)) is None  # the base answers to its own name
    finally:
        engine.close()
    run_dir = tmp_path / "ws" / "runs" / "my-run"
    shutil.copytree(adapters["a"], run_dir)
    ws.store.start_run("my-run", "train", {}, str(run_dir))
    engine = build_engine("my-run", threads=1, workspace=ws)  # the workspace is passed in, not read from the CLI
    try:
        assert engine.route("my-run") == "my-run" and engine.adapters["my-run"] == str(run_dir)
    finally:
        engine.close()


def test_merged_adapter_answers_as_the_adapter_and_hides_the_base(tiny_model, adapters):
    from protege.models.choice import score_token_groups
    from protege.serve.app import build_engine
    from protege.serve.engine import UnknownModel

    name = str(adapters["a"])
    prompt_and_choices = ([1, 2, 3, 4, 5], [[6, 0], [7, 8, 0], [9, 0]])
    scores = {}
    for merge in (False, True):
        engine = build_engine(name, threads=1, merge=merge)
        try:
            assert engine.route(None) == name
            with engine.registry.using(name):
                scores[merge] = score_token_groups(engine.model, [prompt_and_choices], engine.decoder.pad_id)[0]
        finally:
            engine.close()
    assert scores[True] == pytest.approx(scores[False], abs=1e-3)
    engine = build_engine(name, threads=1, merge=True)
    try:
        with pytest.raises(UnknownModel):
            engine.route(str(tiny_model))
        assert [c["id"] for c in engine.model_cards()] == [name]
    finally:
        engine.close()
    with pytest.raises(UserError, match="--merge"):
        build_engine(str(tiny_model), threads=1, merge=True)


@pytest.mark.slow  # over 10 s
def test_an_adapter_in_a_dotted_folder_trains_serves_and_evaluates(ws, tiny_model, tmp_path):
    """Paths with a dot (`mktemp -d`, `~/.cache`, `./runs/x`) used to become PEFT adapter names,
    which torch refuses: `protege eval --models student=FOLDER` died at start-up."""
    from protege.data.records import Record, save_dataset
    from protege.train.config import TrainConfig
    from protege.train.run import train

    task = tmp_path / "emotion.yaml"
    task.write_text(f"name: emotion\ninput: 'Tweet: {{{{ text }}}}'\noutput:\n  kind: label\n  labels: {LABELS}\n")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS * 2))
    folder = Path(tempfile.mkdtemp(prefix="tmp.", dir=tmp_path))  # named as `mktemp -d` names them
    cfg = {"base": str(tiny_model), "task": str(task), "data": {"train": str(data)}, "method": "lora",
           "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "batch_size": 4, "max_steps": 2,
           "output": str(folder)}  # fmt: skip
    train(TrainConfig.model_validate(cfg), ws)
    assert "." in folder.name and (folder / "adapter_config.json").exists()
    turns = [
        [{"role": "user", "content": f"Tweet: {r['text']}"}, {"role": "assistant", "content": r["label"]}] for r in ROWS
    ]
    records = [
        Record(messages=t, label=r["label"], metadata={"input": {"text": r["text"]}})
        for t, r in zip(turns, ROWS, strict=True)
    ]
    save_dataset(ws.store, "emotion-test", records)
    ws.store.close()

    # the real path: `protege eval` starts `protege serve FOLDER --merge` as a child
    proc = run_cli("--workspace", str(ws.root), "eval", str(task), "--data", "emotion-test",
                   "--models", f"student={folder}", "--json", "--name", "dotted")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    student = json.loads(proc.stdout)["models"]["student"]
    assert student["errors"] == 0 and sum(map(sum, student["confusion"]["matrix"])) == len(ROWS)
    assert list((ws.root / "artifacts" / "logs").glob("serve-*.log")), "the child server's log is kept"

    # unmerged, as MODEL and loaded at run time from a dotted folder under --adapter-dir
    with ServerProcess(folder, admin_key=ADMIN, workspace=ws.root, extra_args=["--adapter-dir", str(tmp_path)]) as srv:
        client = OpenAI(base_url=srv.base_url, api_key="none", max_retries=0, timeout=120)
        first = client.chat.completions.create(model=str(folder), messages=HELLO, extra_body={"choices": LABELS})
        assert first.choices[0].message.content in LABELS
        loaded = httpx.post(f"{srv.base_url}/adapters", json={"name": "again.v2", "path": folder.name},
                            headers={"Authorization": f"Bearer {ADMIN}"})  # fmt: skip
        assert loaded.status_code == 200, loaded.text
        again = client.chat.completions.create(model="again.v2", messages=HELLO, extra_body={"choices": LABELS})
        assert again.model_extra["choice_scores"] == pytest.approx(first.model_extra["choice_scores"], abs=1e-4)


def test_a_child_server_that_dies_at_start_up_shows_its_log(tmp_path):
    root = tmp_path / "ws"
    with pytest.raises(ProtegeError) as e:
        ServerProcess("no-such-model-anywhere", workspace=root, startup_timeout=120).start()
    logs = list((root / "artifacts" / "logs").glob("serve-*.log"))
    assert len(logs) == 1 and "unknown model 'no-such-model-anywhere'" in logs[0].read_text()
    message = str(e.value)
    assert "exited with code 2 at start-up" in message and str(logs[0]) in message
    assert "unknown model 'no-such-model-anywhere'" in message  # the child's own words, not just its exit code


@pytest.mark.slow
def test_real_model_answers_and_batches_exactly(smollm_path):
    questions = ["What is the capital of France?", "Name three colours.", "What is 2 + 2?", "Who wrote Hamlet?"]
    with ServerProcess("smollm2-135m-instruct") as srv:
        client = OpenAI(base_url=srv.base_url, api_key="none", max_retries=0, timeout=300)
        answer = greedy(client, questions[0], "smollm2-135m-instruct", max_tokens=20)
        assert "Paris" in answer
        solo = [greedy(client, q, "smollm2-135m-instruct", max_tokens=20) for q in questions]
        with ThreadPoolExecutor(len(questions)) as pool:
            together = list(pool.map(lambda q: greedy(client, q, "smollm2-135m-instruct", max_tokens=20), questions))
        assert together == solo
        resp = client.chat.completions.create(
            model="smollm2-135m-instruct",
            messages=[{"role": "user", "content": "Is the sky blue? Answer yes or no."}],
            extra_body={"choices": ["yes", "no"]},
        )
        assert resp.choices[0].message.content == "yes"
