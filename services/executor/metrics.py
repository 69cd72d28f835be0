"""The executor's Prometheus metrics (prefix `chorus_executor_`, base units)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

from services.executor.batching import BatchObserver
from services.executor.devices import memory_bytes

if TYPE_CHECKING:
    from services.executor.pool import ModelPool

TASKS = Counter("chorus_executor_tasks_total", "Invocations run.", ["task", "model", "outcome"])
TASK_SECONDS = Histogram(
    "chorus_executor_task_seconds", "Time per invocation: inputs, queue, model, outputs.", ["task"]
)
INFERENCE = Histogram(
    "chorus_executor_inference_seconds", "Time per backend call (one batch).", ["task", "backend"]
)
BATCH_SIZE = Histogram(
    "chorus_executor_batch_size",
    "Invocations per backend call.",
    ["task"],
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
INLINE_REFUSED = Counter(
    "chorus_executor_inline_refused_total",
    "Inputs whose inline bytes were refused (over the limit, unlike their size, bad media type).",
    ["reason"],
)
QUEUE_WAIT = Histogram(
    "chorus_executor_queue_wait_seconds", "Time an invocation waited for its batch.", ["task"]
)
LOAD_SECONDS = Gauge("chorus_executor_model_load_seconds", "Model load time.", ["task", "model"])
LOADED = Gauge("chorus_executor_loaded_models", "Models loaded now.")
LOADED_BYTES = Gauge("chorus_executor_loaded_model_bytes", "Bytes of the loaded models' weights.")
DEVICE_MEMORY = Gauge(
    "chorus_executor_device_memory_bytes",
    "Memory in use: CUDA allocated on a GPU, resident set on CPU.",
    ["device"],
)


def batch_observer(task: str, backend: str) -> BatchObserver:
    return BatchObserver(
        batch=BATCH_SIZE.labels(task).observe,
        waited=QUEUE_WAIT.labels(task).observe,
        ran=INFERENCE.labels(task, backend).observe,
    )


def report_loaded(pool: ModelPool) -> None:
    LOADED.set(len(pool.loaded))
    LOADED_BYTES.set(sum(m.size_bytes for m in pool.loaded))
    for model in pool.loaded:
        LOAD_SECONDS.labels(model.spec.task, model.spec.model).set(model.load_seconds)


def watch_device(device: str) -> None:
    DEVICE_MEMORY.labels(device).set_function(lambda: memory_bytes(device))
