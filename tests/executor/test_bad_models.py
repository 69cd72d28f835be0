"""Bad input to real models: a model directory missing a file, silent or empty audio.

Each is a failed task with the reason, or an answer, never a crash; the replica's pool serves
its other models on afterwards.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from chorus.v1.messages_pb2 import TaskArgument, TaskInvocation, TaskResult, TaskStatus
from numpy.typing import NDArray

from services.executor.backends import LocalBackend
from services.executor.execute import Run, execute
from services.executor.handler import Inputs, Produced
from services.executor.handlers import HANDLERS
from services.executor.media import Audio, encode_wav
from services.executor.models import LoadOptions, ModelSpec
from services.executor.pool import ModelPool
from tests.executor import tiny_models as tiny
from tests.support import MemoryArtifacts

TASK = "text-classification"


def _text(text: str = "good movie") -> TaskInvocation:
    return TaskInvocation(
        request_id="r", task=TASK, args=[TaskArgument(name="text", text=text)], attempt=1
    )


def _runner(pool: ModelPool, task: str, model: Path) -> Run:
    """`execute`'s `run` on the pool's copy of the model, as a replica's backend is."""
    backend = LocalBackend(HANDLERS[task], ModelSpec(task, str(model)), pool, 1)

    async def run(inputs: Inputs) -> list[Produced]:
        return (await backend.infer(str(model), [inputs]))[0]

    return run


async def test_a_model_directory_missing_its_weights_fails_and_the_pool_serves_on(
    tiny_classifier: Path, tmp_path: Path
) -> None:
    broken = Path(shutil.copytree(tiny_classifier, tmp_path / "broken"))
    (broken / "model.safetensors").unlink()
    pool = ModelPool(LoadOptions())
    store = MemoryArtifacts()
    failed = await execute(_text(), _runner(pool, TASK, broken), store, "w")
    assert failed.status == TaskStatus.TASK_STATUS_FAILED
    assert failed.error.startswith(f"model unavailable: {TASK}={broken}: loading failed")
    assert failed.retryable  # another replica may hold a whole copy
    served = await execute(_text(), _runner(pool, TASK, tiny_classifier), store, "w")
    assert served.status == TaskStatus.TASK_STATUS_SUCCEEDED, served.error


async def _audio(task: str, model: Path, samples: NDArray[np.float32]) -> TaskResult:
    store = MemoryArtifacts()
    arg = TaskArgument(name="audio")
    arg.artifact.CopyFrom(await store.put(encode_wav(Audio(samples, 16000)), "clip.wav"))
    inv = TaskInvocation(request_id="r", task=task, args=[arg], attempt=1)
    return await execute(inv, _runner(ModelPool(LoadOptions()), task, model), store, "w")


async def test_silence_is_transcribed_and_an_empty_clip_is_bad_input(tmp_path: Path) -> None:
    recognizer = tiny.speech_recognizer(tmp_path / "asr")
    silent = await _audio(
        "automatic-speech-recognition", recognizer, np.zeros(16000, dtype=np.float32)
    )
    assert silent.status == TaskStatus.TASK_STATUS_SUCCEEDED, silent.error
    empty = await _audio("automatic-speech-recognition", recognizer, np.zeros(0, np.float32))
    assert empty.status == TaskStatus.TASK_STATUS_FAILED
    assert empty.error == "bad input: clip.wav holds no samples"


async def test_a_silent_clip_is_classified(tmp_path: Path) -> None:
    classifier = tiny.audio_classifier(tmp_path / "audio")
    silent = await _audio("audio-classification", classifier, np.zeros(16000, dtype=np.float32))
    assert silent.status == TaskStatus.TASK_STATUS_SUCCEEDED, silent.error
