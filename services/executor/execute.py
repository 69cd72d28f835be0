"""Stage 3, task execution: `TaskInvocation` in, `TaskResult` out. No NATS here.

Bad inputs, a model that raises and a missed deadline become a failed result with the reason:
running the same invocation again would fail the same way, so it is answered, not redelivered.
Errors of the artifact store itself propagate, so that the invocation is retried.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Protocol

from chorus.v1.messages_pb2 import (
    ArtifactRef,
    TaskInvocation,
    TaskOutput,
    TaskResult,
    TaskStatus,
)

from services.common.artifacts import ArtifactNotFound
from services.common.tasks import AUDIO, IMAGE, KIND_NAMES, TEXT, task_type
from services.executor.handlers import Produced
from services.executor.media import MediaError, decode_image, decode_wav, encode_png, encode_wav
from services.executor.models import LoadedModel

log = logging.getLogger(__name__)


class Artifacts(Protocol):
    async def get(self, artifact_id: str) -> tuple[ArtifactRef, bytes]: ...

    async def put(self, data: bytes, name: str, media_type: str | None = None) -> ArtifactRef: ...


class TaskInputError(ValueError):
    """An argument is missing, of the wrong kind, or unreadable."""


async def execute(
    invocation: TaskInvocation, loaded: LoadedModel, artifacts: Artifacts, worker_id: str
) -> TaskResult:
    started = time.perf_counter()
    result = TaskResult(
        request_id=invocation.request_id,
        task_id=invocation.task_id,
        task=invocation.task,
        model=invocation.model,
        executor=worker_id,
        attempt=invocation.attempt,
    )
    produced, error = await _run(invocation, loaded, artifacts)
    if error:
        result.status, result.error = TaskStatus.TASK_STATUS_FAILED, error
    else:
        for item in produced:
            result.outputs.append(await _encode_output(item, invocation, artifacts))
        result.status = TaskStatus.TASK_STATUS_SUCCEEDED
    result.seconds = time.perf_counter() - started
    return result


async def _run(
    invocation: TaskInvocation, loaded: LoadedModel, artifacts: Artifacts
) -> tuple[list[Produced], str]:
    """The handler's outputs, or why there are none."""
    remaining = _remaining(invocation)
    if remaining == 0:
        return [], "the deadline passed before the task could start"
    try:
        inputs = await _decode_inputs(invocation, artifacts)
    except TaskInputError as e:
        return [], f"bad input: {e}"
    try:
        work = asyncio.to_thread(loaded.handler.run, loaded.model, inputs)
        return await asyncio.wait_for(work, remaining), ""
    except TimeoutError:
        return [], "the task ran past its deadline"
    except Exception as e:  # the model raised: report it, keep serving
        log.warning("model %s raised: %r", invocation.model, e)
        return [], f"model error: {type(e).__name__}: {e}"


def _remaining(invocation: TaskInvocation) -> float | None:
    if not invocation.HasField("deadline"):
        return None
    return max(0.0, invocation.deadline.ToNanoseconds() / 1e9 - time.time())


async def _decode_inputs(invocation: TaskInvocation, artifacts: Artifacts) -> dict[str, Any]:
    declared = task_type(invocation.task)
    if declared is None:
        raise TaskInputError(f"unknown task type {invocation.task!r}")
    given = {arg.name: arg for arg in invocation.args}
    inputs: dict[str, Any] = {}
    for slot in declared.slots:
        arg = given.get(slot.name)
        if arg is None:
            if slot.required:
                raise TaskInputError(f"argument {slot.name!r} is missing")
            continue
        if arg.WhichOneof("value") == "text":
            if slot.kind != TEXT:
                raise TaskInputError(
                    f"argument {slot.name!r} needs an uploaded {KIND_NAMES[slot.kind]} file, "
                    f"not the text {arg.text[:80]!r}"
                )
            inputs[slot.name] = arg.text
            continue
        try:
            ref, data = await artifacts.get(arg.artifact.id)
        except ArtifactNotFound as e:
            raise TaskInputError(str(e)) from e
        if ref.kind != slot.kind:
            raise TaskInputError(
                f"argument {slot.name!r} needs {KIND_NAMES.get(slot.kind)}, "
                f"but {ref.name} is {KIND_NAMES.get(ref.kind, 'of unknown kind')}"
            )
        inputs[slot.name] = _decode(slot.kind, data, ref.name)
    return inputs


def _decode(kind: int, data: bytes, name: str) -> Any:
    try:
        if kind == IMAGE:
            return decode_image(data, name)
        if kind == AUDIO:
            return decode_wav(data, name)
        return data.decode("utf-8")
    except (MediaError, UnicodeDecodeError) as e:
        raise TaskInputError(str(e)) from e


async def _encode_output(
    item: Produced, invocation: TaskInvocation, artifacts: Artifacts
) -> TaskOutput:
    stem = f"{invocation.task}-{invocation.task_id}"
    if item.image is not None:
        ref = await artifacts.put(encode_png(item.image), f"{stem}.png", "image/png")
        return TaskOutput(name=item.name, artifact=ref)
    if item.audio is not None:
        ref = await artifacts.put(encode_wav(item.audio), f"{stem}.wav", "audio/wav")
        return TaskOutput(name=item.name, artifact=ref)
    if item.text is not None:
        return TaskOutput(name=item.name, text=item.text)
    return TaskOutput(name=item.name, json=json.dumps(item.data))
