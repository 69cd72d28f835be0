"""Stage 3, task execution: `TaskInvocation` in, `TaskResult` out. No NATS here.

Bad inputs, a model that raises or runs out of memory, and a missed deadline become a failed
result with the reason, answered rather than redelivered; the result says whether another
replica might do better (`retryable`), for the selector to decide. Errors of the artifact
store itself propagate, so that the invocation is redelivered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from chorus.v1.messages_pb2 import (
    ArtifactRef,
    Kind,
    TaskArgument,
    TaskInvocation,
    TaskOutput,
    TaskResult,
    TaskStatus,
)

from services.common.artifact_refs import (
    ArtifactNotFound,
    BadInline,
    inline_file,
    inlined,
    kind_for_name,
)
from services.common.llm import LLMError
from services.common.offload import run_small_on_loop
from services.common.settings import INLINE_MAX_BYTES_LIMIT
from services.common.tasks import AUDIO, IMAGE, KIND_NAMES, TEXT, Slot, task_type
from services.executor import metrics
from services.executor.backends import RemoteInferenceError
from services.executor.devices import is_out_of_memory
from services.executor.fetch import FetchPolicy, FetchRefused
from services.executor.handler import Inputs, Produced
from services.executor.handlers import HANDLERS
from services.executor.media import MediaError, decode_image, decode_wav, encode_png, encode_wav
from services.executor.models import ModelUnavailable

log = logging.getLogger(__name__)
Run = Callable[[Inputs], Awaitable[list[Produced]]]
# Decoding or encoding a small file costs less CPU than handing it to a thread and back (about
# 0.1 ms, more on a busy machine): such work stays on the loop. The bounds keep it to about a
# millisecond there: an output by its raw size, an input by its file size, bounded tighter
# because a small PNG may unpack to a thousand times its bytes.
ON_LOOP_RAW_BYTES = 64 * 1024
ON_LOOP_FILE_BYTES = 4 * 1024


class Artifacts(Protocol):
    async def get(self, artifact_id: str) -> tuple[ArtifactRef, bytes]: ...

    async def put(
        self, data: bytes, name: str, media_type: str | None = None, *, request_id: str = ""
    ) -> ArtifactRef: ...


class TaskInputError(ValueError):
    """An argument is missing, of the wrong kind, or unreadable."""


class TaskFailed(Exception):
    """Why a task has no outputs; `retryable` when another replica might succeed (it ran out
    of memory, could not load the model or start in time here, or a remote service failed),
    not when the input or the model is at fault."""

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


async def execute(
    invocation: TaskInvocation,
    run: Run,
    artifacts: Artifacts,
    worker_id: str,
    fetch: FetchPolicy | None = None,
    max_seconds: float | None = None,
    inline_max_bytes: int = 0,
) -> TaskResult:
    """Decodes the inputs, runs them (`run`: the model's backend, batched or not), stores outputs.

    An invocation without a deadline is given `max_seconds`, so that no task holds its message
    (kept alive by `in_progress`) for ever. Inputs carried inline are read from the message;
    outputs up to `inline_max_bytes` are stored and carried inline in the result too.
    """
    started = time.perf_counter()
    result = TaskResult(
        request_id=invocation.request_id,
        task_id=invocation.task_id,
        task=invocation.task,
        model=invocation.model,
        executor=worker_id,
        attempt=invocation.attempt,
        selection_reason=invocation.selection_reason,
    )
    try:
        produced = await _run(invocation, run, artifacts, fetch or FetchPolicy(), max_seconds)
    except TaskFailed as e:
        result.status, result.error, result.retryable = (
            TaskStatus.TASK_STATUS_FAILED,
            str(e),
            e.retryable,
        )
    else:
        for item in produced:
            output = await _encode_output(item, invocation, artifacts, inline_max_bytes)
            result.outputs.append(output)
        result.status = TaskStatus.TASK_STATUS_SUCCEEDED
    result.seconds = time.perf_counter() - started
    return result


async def _run(
    invocation: TaskInvocation,
    run: Run,
    artifacts: Artifacts,
    fetch: FetchPolicy,
    max_seconds: float | None,
) -> list[Produced]:
    """The handler's outputs; `TaskFailed` says why there are none."""
    remaining = _remaining(invocation)
    if remaining is None:
        remaining = max_seconds
    if remaining == 0:
        # Queued too long here; a less busy replica may still make it with a fresh deadline.
        raise TaskFailed("the deadline passed before the task could start", retryable=True)
    try:
        inputs = await _decode_inputs(invocation, artifacts, fetch)
    except TaskInputError as e:
        raise TaskFailed(f"bad input: {e}") from e
    try:
        produced = await asyncio.wait_for(run(inputs), remaining)
    except TimeoutError as e:
        raise TaskFailed("the task ran past its deadline") from e
    except Exception as e:  # the model failed: report it, keep serving
        log.warning("%s on %s failed: %r", invocation.task, invocation.model, e)
        raise _failure(e) from e
    undeclared = _undeclared(invocation.task, produced)
    if undeclared:
        raise TaskFailed(undeclared)
    return produced


def _failure(error: Exception) -> TaskFailed:
    if is_out_of_memory(error):
        return TaskFailed(f"out of memory: {type(error).__name__}: {error}", retryable=True)
    if isinstance(error, ModelUnavailable):
        return TaskFailed(f"model unavailable: {error}", retryable=True)
    if isinstance(error, RemoteInferenceError):
        return TaskFailed(f"remote inference failed: {error}", retryable=True)
    if isinstance(error, LLMError):
        return TaskFailed(f"LLM failed: {error}", retryable=True)
    return TaskFailed(f"model error: {type(error).__name__}: {error}")


def _undeclared(task: str, produced: list[Produced]) -> str:
    """Why the outputs break the handler's declaration, or "" when they keep to it."""
    declared = {o.name: o.kind for o in HANDLERS[task].outputs}
    for item in produced:
        if declared.get(item.name) != item.kind:
            return f"handler error: {task} produced an undeclared output {item.name!r}"
    return ""


def _remaining(invocation: TaskInvocation) -> float | None:
    if not invocation.HasField("deadline"):
        return None
    return max(0.0, invocation.deadline.ToNanoseconds() / 1e9 - time.time())


async def _decode_inputs(
    invocation: TaskInvocation, artifacts: Artifacts, fetch: FetchPolicy
) -> dict[str, Any]:
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
        if arg.WhichOneof("value") == "text" and slot.kind == TEXT:
            inputs[slot.name] = arg.text
            continue
        name, kind, data = await _file(slot, arg, artifacts, fetch)
        if kind != slot.kind:
            raise TaskInputError(
                f"argument {slot.name!r} needs {KIND_NAMES.get(slot.kind)}, "
                f"but {name} is {KIND_NAMES.get(kind, 'of unknown kind')}"
            )
        small = len(data) <= ON_LOOP_FILE_BYTES
        inputs[slot.name] = await run_small_on_loop(small, _decode, slot.kind, data, name)
    return inputs


async def _file(
    slot: Slot, arg: TaskArgument, artifacts: Artifacts, fetch: FetchPolicy
) -> tuple[str, Kind.ValueType, bytes]:
    """A file argument's name, kind and bytes: carried inline, from the artifact store, or a
    URL or path."""
    if arg.WhichOneof("value") == "artifact" and arg.artifact.inline:
        try:
            # Up to the cap any replica may send (settings differ between replicas in a rollout).
            return inline_file(arg.artifact, INLINE_MAX_BYTES_LIMIT)
        except BadInline as e:
            metrics.INLINE_REFUSED.labels(e.reason).inc()
            log.warning("%s refused: %s", slot.name, e)
            raise TaskInputError(f"argument {slot.name!r}: {e}") from e
    if arg.WhichOneof("value") == "artifact":
        try:
            ref, data = await artifacts.get(arg.artifact.id)
        except ArtifactNotFound as e:
            raise TaskInputError(str(e)) from e
        return ref.name, ref.kind, data
    if arg.WhichOneof("value") != "text" or not arg.text.strip():
        raise TaskInputError(
            f"argument {slot.name!r} needs an uploaded {KIND_NAMES[slot.kind]} file"
        )
    try:
        name, data = await asyncio.to_thread(fetch.fetch, arg.text.strip())
    except FetchRefused as e:
        raise TaskInputError(
            f"argument {slot.name!r} needs an uploaded {KIND_NAMES[slot.kind]} file; "
            f"{arg.text[:80]!r} cannot be read: {e}"
        ) from e
    return name, kind_for_name(name) or slot.kind, data


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
    item: Produced, invocation: TaskInvocation, artifacts: Artifacts, inline_max_bytes: int
) -> TaskOutput:
    stem = f"{invocation.task}-{invocation.task_id}"
    if item.image is not None:
        image = item.image
        small = image.width * image.height * len(image.getbands()) <= ON_LOOP_RAW_BYTES
        png = await run_small_on_loop(small, encode_png, image)
        file = (png, f"{stem}.png", "image/png")
    elif item.audio is not None:
        small = item.audio.samples.size * 2 <= ON_LOOP_RAW_BYTES  # 16-bit samples
        wav = await run_small_on_loop(small, encode_wav, item.audio)
        file = (wav, f"{stem}.wav", "audio/wav")
    elif item.file is not None:
        extension = mimetypes.guess_extension(item.media_type) or ".bin"
        file = (item.file, f"{stem}{extension}", item.media_type)
    elif item.text is not None:
        return TaskOutput(name=item.name, text=item.text)
    else:
        return TaskOutput(name=item.name, json=json.dumps(item.data))
    data, name, media_type = file
    # Stored before the result goes out, small or not: every file a result names can be
    # downloaded (by the request's owner) and read by the next task, even when a redelivered
    # invocation's second result is dropped as a duplicate of the first.
    ref = await artifacts.put(data, name, media_type, request_id=invocation.request_id)
    return TaskOutput(name=item.name, artifact=inlined(ref, data, inline_max_bytes))
