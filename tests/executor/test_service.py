"""An executor replica alone on a real NATS server, driven with `TaskInvocation`s."""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import nats
import numpy as np
import pytest
from chorus.v1.messages_pb2 import (
    CancelRequest,
    TaskArgument,
    TaskInvocation,
    TaskResult,
    TaskStatus,
)
from chorus.v1.workers_pb2 import WorkerInfo
from nats.js import JetStreamContext
from PIL import Image
from prometheus_client import REGISTRY

from services.common import bus, subjects
from services.common.artifacts import ArtifactStore
from services.common.routes import LLM_ROUTE, REMOTE_ROUTE
from services.common.tasks import LLM_TASKS
from services.executor.media import Audio, decode_wav, encode_wav
from tests.integration.stack import running_stack
from tests.support import ScriptedLLM


def _invocation(task: str, model: str, task_id: int = 0, **args: Any) -> TaskInvocation:
    inv = TaskInvocation(request_id="req1", task_id=task_id, task=task, model=model, attempt=1)
    for name, value in args.items():
        arg = TaskArgument(name=name)
        if isinstance(value, str):
            arg.text = value
        else:
            arg.artifact.CopyFrom(value)
        inv.args.append(arg)
    return inv


@asynccontextmanager
async def _bus(nats_url: str) -> AsyncIterator[tuple[JetStreamContext, Any]]:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    results = await js.pull_subscribe(subjects.RESULT, durable="test-results")
    try:
        yield js, results
    finally:
        await nc.close()


async def _results(sub: Any, n: int) -> dict[int, TaskResult]:
    found: dict[int, TaskResult] = {}
    while len(found) < n:
        for msg in await sub.fetch(1, timeout=60):
            await msg.ack()
            result = TaskResult.FromString(msg.data)
            found[result.task_id] = result
    return found


async def _workers(js: JetStreamContext) -> list[WorkerInfo]:
    kv = await js.key_value(subjects.WORKER_BUCKET)
    return [WorkerInfo.FromString((await kv.get(k)).value or b"") for k in await kv.keys()]


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_batched_text_classification_over_the_bus(
    nats_url: str, tiny_classifier: Path
) -> None:
    env = {
        "CHORUS_EXECUTOR_DEFAULTS": "0",
        "CHORUS_EXECUTOR_MODELS": f"text-classification={tiny_classifier}",
        "CHORUS_BATCH_SIZE": "8",
        "CHORUS_BATCH_WAIT_MS": "300",
    }
    count = _metric("chorus_executor_batch_size_count", task="text-classification")
    total = _metric("chorus_executor_batch_size_sum", task="text-classification")
    model = str(tiny_classifier)
    async with running_stack(nats_url, env, services=("executor",)), _bus(nats_url) as (js, sub):
        for i in range(8):
            inv = _invocation("text-classification", model, i, text=f"good movie {i}")
            await bus.publish(js, subjects.invoke("text-classification", model), inv)
        results = await _results(sub, 8)
        (worker,) = await _workers(js)
    assert all(r.status == TaskStatus.TASK_STATUS_SUCCEEDED for r in results.values())
    assert all(r.attempt == 1 and r.executor == worker.worker_id for r in results.values())
    batches = _metric("chorus_executor_batch_size_count", task="text-classification") - count
    items = _metric("chorus_executor_batch_size_sum", task="text-classification") - total
    assert items == 8 and batches < 8  # some invocations shared a forward pass
    assert _metric("chorus_executor_loaded_models") >= 1


async def test_llm_route_serves_the_text_tasks(nats_url: str, scripted_llm: ScriptedLLM) -> None:
    scripted_llm.replies = ["A short summary."]
    env = {
        "CHORUS_EXECUTOR_MODELS": "canny-control=builtin:canny",
        "CHORUS_LLM_BASE_URL": scripted_llm.base_url,
    }
    async with running_stack(nats_url, env, services=("executor",)), _bus(nats_url) as (js, sub):
        inv = _invocation("summarization", LLM_ROUTE, text="a very long story about a cat")
        await bus.publish(js, subjects.invoke("summarization", LLM_ROUTE), inv)
        (result,) = (await _results(sub, 1)).values()
        (worker,) = await _workers(js)
    assert result.status == TaskStatus.TASK_STATUS_SUCCEEDED, result.error
    assert result.outputs[0].text == "A short summary." and result.model == LLM_ROUTE
    served = {(m.task, m.model, m.backend) for m in worker.models}
    assert {(t, LLM_ROUTE, "llm") for t in LLM_TASKS} <= served
    prompt = scripted_llm.requests[-1]["messages"]
    assert prompt[0]["role"] == "system" and "Summarize" in prompt[0]["content"]
    assert prompt[1]["content"] == "a very long story about a cat"


async def test_no_llm_route_without_defaults(nats_url: str, scripted_llm: ScriptedLLM) -> None:
    env = {
        "CHORUS_EXECUTOR_DEFAULTS": "0",
        "CHORUS_EXECUTOR_MODELS": "canny-control=builtin:canny",
        "CHORUS_LLM_BASE_URL": scripted_llm.base_url,
    }
    async with running_stack(nats_url, env, services=("executor",)), _bus(nats_url) as (js, _):
        (worker,) = await _workers(js)
    assert [(m.task, m.model) for m in worker.models] == [("canny-control", "builtin:canny")]


class _InferenceStandIn:
    """An HTTP server answering as the Hugging Face inference routes do, on loopback."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.bodies: list[bytes] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                stand_in.paths.append(self.path)
                stand_in.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path.endswith("/broken"):
                    self.send_response(503)
                    self.end_headers()
                    return
                if self.path.endswith("/tts"):
                    speech = encode_wav(Audio(np.zeros(1600, dtype=np.float32), 16000))
                    self.send_response(200)
                    self.send_header("Content-Type", "audio/wav")
                    self.send_header("Content-Length", str(len(speech)))
                    self.end_headers()
                    self.wfile.write(speech)
                    return
                if self.path.endswith("/detector"):
                    body = [{"label": "cat", "score": 0.9,
                             "box": {"xmin": 4, "ymin": 4, "xmax": 20, "ymax": 20}}]  # fmt: skip
                else:
                    body = [
                        {"label": "POSITIVE", "score": 0.8},
                        {"label": "NEGATIVE", "score": 0.2},
                    ]
                raw = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"


@pytest.fixture
def inference_stand_in() -> Iterator[_InferenceStandIn]:
    stand_in = _InferenceStandIn()
    yield stand_in
    stand_in.server.shutdown()
    stand_in.server.server_close()


async def test_remote_inference_runs_hub_models_named_per_invocation(
    nats_url: str, inference_stand_in: _InferenceStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    # The tests run with HF_HUB_OFFLINE=1; the stand-in is on loopback, not the Hub.
    monkeypatch.setattr(constants, "is_offline_mode", lambda: False)
    env = {
        "CHORUS_EXECUTOR_DEFAULTS": "0",
        "CHORUS_REMOTE_INFERENCE": "1",
        "CHORUS_REMOTE_ENDPOINT": inference_stand_in.url,
        "HF_TOKEN": "hf_test",
    }
    image = Image.new("RGB", (32, 32), "white")
    png = io.BytesIO()
    image.save(png, format="PNG")
    async with running_stack(nats_url, env, services=("executor",)), _bus(nats_url) as (js, sub):
        photo = await (await ArtifactStore.open(js)).put(png.getvalue(), "photo.png")
        invocations = [
            _invocation("text-classification", "acme/sentiment", 0, text="good movie"),
            _invocation("object-detection", "acme/detector", 1, image=photo),
            _invocation("text-classification", "acme/broken", 2, text="good movie"),
            _invocation("text-classification", "../../admin", 3, text="good movie"),
            _invocation("text-to-speech", "acme/tts", 4, text="hello"),
        ]
        for inv in invocations:
            await bus.publish(js, subjects.invoke(inv.task, REMOTE_ROUTE), inv)
        results = await _results(sub, 5)
        (worker,) = await _workers(js)
        _, speech = await (await ArtifactStore.open(js)).get(results[4].outputs[0].artifact.id)
    assert results[0].status == TaskStatus.TASK_STATUS_SUCCEEDED, results[0].error
    assert results[0].outputs[0].text == "POSITIVE (0.80)" and results[0].model == "acme/sentiment"
    assert results[1].status == TaskStatus.TASK_STATUS_SUCCEEDED, results[1].error
    assert results[1].outputs[0].artifact.media_type == "image/png"  # boxes drawn
    assert "remote inference failed" in results[2].error and "503" in results[2].error
    assert "is not a Hugging Face model id" in results[3].error
    assert results[4].outputs[0].artifact.media_type == "audio/wav", results[4].error
    assert decode_wav(speech, "speech.wav").sampling_rate == 16000
    assert "/models/acme/sentiment" in inference_stand_in.paths
    assert (
        json.loads(
            inference_stand_in.bodies[inference_stand_in.paths.index("/models/acme/sentiment")]
        )["inputs"]
        == "good movie"
    )
    served = {(m.task, m.model, m.backend) for m in worker.models}
    assert ("object-detection", REMOTE_ROUTE, "remote") in served
    assert ("depth-estimation", REMOTE_ROUTE, "remote") not in served  # no remote route for it


async def test_bad_input_over_the_bus_is_answered_once_not_redelivered(
    nats_url: str, tiny_classifier: Path
) -> None:
    env = {"CHORUS_EXECUTOR_DEFAULTS": "0", "CHORUS_EXECUTOR_MODELS": "canny-control=builtin:canny"}
    async with running_stack(nats_url, env, services=("executor",)), _bus(nats_url) as (js, sub):
        broken = await (await ArtifactStore.open(js)).put(b"\x89PNG broken", "photo.png")
        inv = _invocation("canny-control", "builtin:canny", 0, image=broken)
        await bus.publish(js, subjects.invoke("canny-control", "builtin:canny"), inv)
        (result,) = (await _results(sub, 1)).values()
        durable = subjects.consumer_name("executor", "canny-control", "builtin:canny")
        for _ in range(100):  # the ack follows the result's publish
            info = await js.consumer_info(subjects.WORK_STREAM, durable)
            if info.num_ack_pending == 0:
                break
            await asyncio.sleep(0.05)
        # The replica still serves: a good invocation after the bad one succeeds.
        good_png = io.BytesIO()
        Image.new("RGB", (16, 16), "white").save(good_png, format="PNG")
        good = await (await ArtifactStore.open(js)).put(good_png.getvalue(), "ok.png")
        await bus.publish(
            js,
            subjects.invoke("canny-control", "builtin:canny"),
            _invocation("canny-control", "builtin:canny", 1, image=good),
        )
        second = (await _results(sub, 1))[1]
    assert result.status == TaskStatus.TASK_STATUS_FAILED and "not a readable image" in result.error
    assert info.num_redelivered == 0 and info.num_ack_pending == 0
    assert second.status == TaskStatus.TASK_STATUS_SUCCEEDED


async def test_models_load_on_first_use_and_the_least_recently_used_is_evicted(
    nats_url: str, tiny_classifier: Path, tmp_path: Path
) -> None:
    from tests.executor.tiny_models import token_classifier

    tagger = token_classifier(tmp_path / "tagger")
    env = {
        "CHORUS_EXECUTOR_DEFAULTS": "0",
        "CHORUS_EXECUTOR_MODELS": f"text-classification={tiny_classifier};"
        f"token-classification={tagger}",
        "CHORUS_EXECUTOR_LOAD": "first-use",
        "CHORUS_EXECUTOR_MAX_LOADED": "1",
    }
    calls = [
        ("text-classification", str(tiny_classifier)),
        ("token-classification", str(tagger)),
        ("text-classification", str(tiny_classifier)),
    ]
    async with running_stack(nats_url, env, services=("executor",)), _bus(nats_url) as (js, sub):
        assert _metric("chorus_executor_loaded_models") == 0  # nothing loaded yet
        results = []
        for i, (task, model) in enumerate(calls):
            inv = _invocation(task, model, i, text="the cat sat on a mat")
            await bus.publish(js, subjects.invoke(task, model), inv)
            results.append((await _results(sub, 1))[i])
            assert _metric("chorus_executor_loaded_models") == 1
        (worker,) = await _workers(js)
    assert all(r.status == TaskStatus.TASK_STATUS_SUCCEEDED for r in results), results
    assert {m.task for m in worker.models} == {"text-classification", "token-classification"}


async def test_a_cancelled_request_has_its_tasks_dropped(
    nats_url: str, scripted_llm: ScriptedLLM
) -> None:
    scripted_llm.replies = ["A summary that comes too late."]
    scripted_llm.delay_s = 10.0
    env = {
        "CHORUS_EXECUTOR_MODELS": "canny-control=builtin:canny",
        "CHORUS_LLM_BASE_URL": scripted_llm.base_url,
    }
    subject = subjects.invoke("summarization", LLM_ROUTE)
    before = _metric(
        "chorus_executor_tasks_total", task="summarization", model=LLM_ROUTE, outcome="cancelled"
    )
    async with running_stack(nats_url, env, services=("executor",)), _bus(nats_url) as (js, sub):
        await bus.publish(js, subject, _invocation("summarization", LLM_ROUTE, 0, text="a story"))
        for _ in range(600):  # until the task runs: the LLM has been called
            if scripted_llm.requests:
                break
            await asyncio.sleep(0.05)
        cancel = CancelRequest(request_id="req1", reason="the user pressed Stop")
        await js.publish(subjects.cancel("req1"), cancel.SerializeToString())
        # An invocation of the request that arrives after the cancel never runs.
        await bus.publish(js, subject, _invocation("summarization", LLM_ROUTE, 1, text="more"))
        results = await _results(sub, 2)
    assert {r.status for r in results.values()} == {TaskStatus.TASK_STATUS_CANCELLED}
    assert results[0].error == "cancelled: the user pressed Stop"
    assert len(scripted_llm.requests) == 1
    after = _metric(
        "chorus_executor_tasks_total", task="summarization", model=LLM_ROUTE, outcome="cancelled"
    )
    assert after == before + 2
