"""Bad inputs and misbehaving models end in a failed result with a reason; serving goes on."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import pytest
import torch
from chorus.v1.messages_pb2 import TaskArgument, TaskInvocation, TaskStatus

from services.executor import devices
from services.executor.backends import LocalBackend
from services.executor.batching import Batcher
from services.executor.execute import execute
from services.executor.handler import Handler, Inputs, Loader, Local, Produced
from services.executor.handlers import HANDLERS
from services.executor.models import LoadedModel, LoadOptions, ModelSpec
from services.executor.pool import ModelPool
from tests.support import MemoryArtifacts, local_run


def _text_invocation() -> TaskInvocation:
    text = TaskArgument(name="text", text="hi")
    return TaskInvocation(request_id="r", task="text-classification", model="m", args=[text])


def _backend_raising(error: BaseException) -> LocalBackend:
    def call(model: Any, batch: Sequence[Inputs]) -> list[Any]:
        raise error

    handler = Handler(
        "text-classification",
        HANDLERS["text-classification"].outputs,
        HANDLERS["text-classification"].post,
        Local(Loader.PIPELINE, call, "text-classification"),
    )
    spec = ModelSpec("text-classification", "m")

    def loader(spec: ModelSpec, options: LoadOptions) -> LoadedModel:
        return LoadedModel(spec, handler, object(), 0.0)

    return LocalBackend(handler, spec, ModelPool(LoadOptions(), loader=loader), 1)


@pytest.mark.parametrize(
    "error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), MemoryError()]
)
async def test_out_of_memory_fails_the_task_and_frees_the_caches(
    error: BaseException, monkeypatch: pytest.MonkeyPatch
) -> None:
    freed: list[str] = []
    monkeypatch.setattr("services.executor.backends.free_memory", freed.append)
    backend = _backend_raising(error)

    async def run(inputs: Inputs) -> list[Produced]:
        return (await backend.infer("m", [inputs]))[0]

    result = await execute(_text_invocation(), run, MemoryArtifacts(), "w")
    assert result.status == TaskStatus.TASK_STATUS_FAILED
    assert result.error.startswith("out of memory: ") and freed == ["cpu"]
    assert result.retryable  # another replica may have the memory
    assert devices.is_out_of_memory(error)


async def test_a_model_error_names_the_exception() -> None:
    backend = _backend_raising(ValueError("shape mismatch"))

    async def run(inputs: Inputs) -> list[Produced]:
        return (await backend.infer("m", [inputs]))[0]

    result = await execute(_text_invocation(), run, MemoryArtifacts(), "w")
    assert result.error == "model error: ValueError: shape mismatch"
    assert not result.retryable  # it would fail the same way anywhere


async def test_a_hung_model_fails_at_the_deadline_and_the_model_serves_again_after() -> None:
    release = threading.Event()

    class Hanging:
        kind, max_batch, parallel = "local", 1, 1

        async def infer(self, model: str, batch: Sequence[Inputs]) -> list[list[Produced]]:
            if batch[0]["text"] == "hang":
                await asyncio.to_thread(release.wait, 30)
            return [[Produced("text", text="ok")] for _ in batch]

    batcher = Batcher(Hanging(), "m", 0.0)
    hang = _text_invocation()
    hang.args[0].text = "hang"
    hang.deadline.GetCurrentTime()
    hang.deadline.FromNanoseconds(hang.deadline.ToNanoseconds() + 200_000_000)  # 0.2 s
    result = await execute(hang, batcher.submit, MemoryArtifacts(), "w")
    assert result.status == TaskStatus.TASK_STATUS_FAILED
    assert result.error == "the task ran past its deadline"
    release.set()  # the stuck call returns; the next invocation is served
    after = await execute(_text_invocation(), batcher.submit, MemoryArtifacts(), "w")
    await batcher.close()
    assert after.status == TaskStatus.TASK_STATUS_SUCCEEDED, after.error


async def test_a_deadline_already_passed_is_not_run() -> None:
    calls: list[Inputs] = []

    async def run(inputs: Inputs) -> list[Produced]:
        calls.append(inputs)
        return []

    inv = _text_invocation()
    inv.deadline.FromSeconds(1)  # 1970
    result = await execute(inv, run, MemoryArtifacts(), "w")
    assert result.error == "the deadline passed before the task could start" and not calls


@pytest.mark.parametrize(
    ("data", "name", "task", "slot", "reason"),
    [
        (b"RIFF\x00\x00\x00\x00WAVEjunk", "voice.wav", "audio-classification", "audio",
         "voice.wav is not a readable WAV file"),
        (b"not an image", "photo.png", "canny-control", "image", "photo.png is not a readable image"),
        (b"\x89PNG\r\n", "photo.png", "audio-classification", "audio",
         "needs audio, but photo.png is image"),
    ],
)  # fmt: skip
async def test_corrupt_or_wrong_kind_files_are_bad_input(
    data: bytes, name: str, task: str, slot: str, reason: str
) -> None:
    store = MemoryArtifacts()
    ref = await store.put(data, name)
    arg = TaskArgument(name=slot)
    arg.artifact.CopyFrom(ref)
    called: list[Inputs] = []

    async def run(inputs: Inputs) -> list[Produced]:
        called.append(inputs)
        return []

    result = await execute(TaskInvocation(request_id="r", task=task, args=[arg]), run, store, "w")
    assert result.status == TaskStatus.TASK_STATUS_FAILED and not called
    assert result.error.startswith("bad input: ") and reason in result.error


async def test_a_missing_argument_is_bad_input() -> None:
    run = local_run("canny-control", "builtin:canny")
    no_image = TaskInvocation(request_id="r", task="canny-control")
    result = await execute(no_image, run, MemoryArtifacts(), "w")
    assert result.error == "bad input: argument 'image' is missing"


async def test_an_invocation_without_a_deadline_still_has_a_bound() -> None:
    async def hang(inputs: Inputs) -> list[Produced]:
        await asyncio.sleep(30)
        return []

    result = await execute(_text_invocation(), hang, MemoryArtifacts(), "w", max_seconds=0.1)
    assert result.error == "the task ran past its deadline"
