"""`make bench`: one executor replica's throughput with and without dynamic batching, the
latency the bus path adds to a model call, and throughput with 1, 2 and 3 replica processes.

The model is a small random-weight BERT text classifier built in a temp dir (hidden size 128,
4 layers), served by real `python -m services.executor` processes on a real NATS server.
Figures go to bench/results/executor.json; every comparison is measured in the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import nats
from chorus.v1.messages_pb2 import TaskArgument, TaskInvocation, TaskResult, TaskStatus
from chorus.v1.workers_pb2 import WorkerInfo
from nats.js import JetStreamContext

from bench.stats import p99, write_results
from services.cli.cluster import start_nats_server
from services.common import bus, subjects
from tests.support import build_tiny_text_classifier

TASK = "text-classification"
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "32"))
INVOCATIONS = int(os.environ.get("BENCH_INVOCATIONS", "480"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
LATENCY_CALLS = int(os.environ.get("BENCH_LATENCY_CALLS", "200"))
BATCH_SIZE = int(os.environ.get("BENCH_BATCH_SIZE", "32"))
BATCH_WAIT_MS = int(os.environ.get("BENCH_BATCH_WAIT_MS", "5"))
RESULTS = Path("bench/results/executor.json")
WORDS = [
    *("good", "bad", "movie", "great", "awful", "i", "the", "cat", "sat", "on", "a", "mat"),
    *("who", "where", "is", "film", "plot", "actor"),
]


def build_model(target: Path) -> Path:
    """A small random-weight BERT classifier: big enough that the forward pass counts."""
    return build_tiny_text_classifier(
        target, words=WORDS, hidden_size=128, layers=4, heads=4, max_positions=128
    )


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 24)))


class Replicas:
    """`python -m services.executor` processes serving the model, started and stopped together."""

    def __init__(
        self, nats_url: str, model: Path, count: int, batch_size: int, threads: int = 0
    ) -> None:
        env = {
            **os.environ,
            **({"OMP_NUM_THREADS": str(threads)} if threads else {}),
            "CHORUS_NATS_URL": nats_url,
            "CHORUS_EXECUTOR_DEFAULTS": "0",
            "CHORUS_EXECUTOR_MODELS": f"{TASK}={model}",
            "CHORUS_EXECUTOR_CAPACITY": str(CONCURRENCY),
            "CHORUS_BATCH_SIZE": str(batch_size),
            "CHORUS_BATCH_WAIT_MS": str(BATCH_WAIT_MS if batch_size > 1 else 0),
            "CHORUS_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
            "HF_HUB_OFFLINE": "1",
        }
        self.procs = [
            subprocess.Popen([sys.executable, "-m", "services.executor"], env=env)
            for _ in range(count)
        ]

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(30)


async def _wait_for_workers(js: JetStreamContext, count: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            kv = await js.key_value(subjects.WORKER_BUCKET)
            keys = await kv.keys()
        except Exception:
            keys = []
        live = 0
        for key in keys:
            entry = await kv.get(key)
            info = WorkerInfo.FromString(entry.value or b"")
            live += time.time() - info.heartbeat_unix < 5
        if live >= count:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{count} executor replica(s) did not come up")


class Client:
    """Publishes invocations and collects their results, `concurrency` outstanding at a time."""

    def __init__(self, js: JetStreamContext, model: str) -> None:
        self._js = js
        self._model = model
        self._subject = subjects.invoke(TASK, model)
        self._waiting: dict[int, asyncio.Future[TaskResult]] = {}
        self._next_id = 0
        self._rng = random.Random(7)
        self._request_id = uuid.uuid4().hex

    async def start(self) -> None:
        self._sub = await self._js.pull_subscribe(subjects.RESULT, durable="bench-results")
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            try:
                msgs = await self._sub.fetch(64, timeout=0.05)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            for msg in msgs:
                await msg.ack()
                result = TaskResult.FromString(msg.data)
                future = self._waiting.pop(result.task_id, None)
                if future is not None and not future.done():
                    future.set_result(result)

    async def call(self) -> TaskResult:
        self._next_id += 1
        task_id = self._next_id
        invocation = TaskInvocation(
            request_id=self._request_id,  # results are deduplicated by request, task, attempt
            task_id=task_id,
            task=TASK,
            model=self._model,
            attempt=1,
            args=[TaskArgument(name="text", text=_sentence(self._rng))],
        )
        future: asyncio.Future[TaskResult] = asyncio.get_running_loop().create_future()
        self._waiting[task_id] = future
        await bus.publish(self._js, self._subject, invocation)
        result = await future
        if result.status != TaskStatus.TASK_STATUS_SUCCEEDED:
            raise RuntimeError(result.error)
        return result

    async def throughput(self, count: int, concurrency: int) -> float:
        remaining = count

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await self.call()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return count / (time.perf_counter() - started)

    async def latencies_ms(self, count: int) -> list[float]:
        out = []
        for _ in range(count):
            started = time.perf_counter()
            await self.call()
            out.append((time.perf_counter() - started) * 1000)
        return out

    async def stop(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._sub.unsubscribe()


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median_ms": statistics.median(ordered),
        "p99_ms": p99(ordered),
    }


def _direct_latencies_ms(model: Path, count: int) -> list[float]:
    """The same model through the same pipeline, called in this process: no bus, no executor."""
    from transformers import pipeline

    pipe = pipeline(TASK, model=str(model), device="cpu")  # type: ignore[call-overload]
    rng = random.Random(7)
    pipe([_sentence(rng)])  # warm-up
    out = []
    for _ in range(count):
        text = _sentence(rng)
        started = time.perf_counter()
        pipe([text], batch_size=1, truncation=True, max_length=128)
        out.append((time.perf_counter() - started) * 1000)
    return out


async def _with_replicas(
    nats_url: str, model: Path, count: int, batch_size: int, measure: Any, threads: int = 0
) -> Any:
    replicas = Replicas(nats_url, model, count, batch_size, threads)
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await _wait_for_workers(js, count)
        client = Client(js, str(model))
        await client.start()
        await client.throughput(CONCURRENCY, CONCURRENCY)  # warm-up: every replica loaded and hot
        try:
            return await measure(client)
        finally:
            await client.stop()
    finally:
        await nc.close()
        replicas.stop()


async def _run(nats_url: str, model: Path) -> dict[str, Any]:
    async def repeated(client: Client) -> list[float]:
        return [await client.throughput(INVOCATIONS, CONCURRENCY) for _ in range(REPEATS)]

    figures: dict[str, Any] = {}
    # (a) and (b): one replica, batching off then on, the same client and load.
    print("one replica, batching off ...", flush=True)

    async def unbatched(client: Client) -> dict[str, Any]:
        return {"rps": await repeated(client), "latency": await client.latencies_ms(LATENCY_CALLS)}

    off = await _with_replicas(nats_url, model, 1, 1, unbatched)
    print("one replica, batching on ...", flush=True)
    on = await _with_replicas(nats_url, model, 1, BATCH_SIZE, repeated)
    figures["batching"] = {
        "without_rps": off["rps"],
        "with_rps": on,
        "without_median_rps": statistics.median(off["rps"]),
        "with_median_rps": statistics.median(on),
        "ratio": statistics.median(on) / statistics.median(off["rps"]),
    }
    direct = _direct_latencies_ms(model, LATENCY_CALLS)
    figures["bus_latency"] = {
        "over_bus": _percentiles(off["latency"]),
        "pipeline_direct": _percentiles(direct),
        "added_median_ms": statistics.median(off["latency"]) - statistics.median(direct),
    }
    # (c) scale-out with batching on: torch's default threads (one per core) in each replica,
    # then one thread per replica, so that N replicas ask for N threads, not 2N.
    for threads, key in ((0, "scale_out"), (1, "scale_out_one_thread_each")):
        figures[key] = {}
        for count in (1, 2, 3):
            print(
                f"{count} replica(s), batching on, threads {threads or 'default'} ...", flush=True
            )
            rps = await _with_replicas(nats_url, model, count, BATCH_SIZE, repeated, threads)
            figures[key][str(count)] = {"rps": rps, "median_rps": statistics.median(rps)}
    return figures


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp) / "bert-h128-l4")
        nats_proc, url = start_nats_server(Path(tmp) / "jetstream")
        try:
            figures = asyncio.run(_run(url, model))
        finally:
            nats_proc.terminate()
            nats_proc.wait(10)
    figures["config"] = {
        "model": "random BERT, hidden 128, 4 layers, 4 heads, 8-24 word inputs",
        "concurrency": CONCURRENCY,
        "invocations_per_repeat": INVOCATIONS,
        "repeats": REPEATS,
        "batch_size": BATCH_SIZE,
        "batch_wait_ms": BATCH_WAIT_MS,
        "latency_calls": LATENCY_CALLS,
        "cpus": os.cpu_count(),
        "device": "cpu",
    }
    figures["notes"] = [
        "All processes (nats-server, this client, every replica) share the machine's "
        f"{os.cpu_count()} CPUs; a replica is CPU-bound in the forward pass, so replicas beyond "
        "the core count add contention, not capacity.",
        "With torch's default threads each replica uses every core, so N replicas ask for "
        "N x cores threads; one thread per replica (OMP_NUM_THREADS=1) is the fair scale-out.",
        "The bus path is one JetStream publish, a pull, a result publish with dedup id, and an "
        "ack per invocation, in Python on the same cores: at high rates it competes with the "
        "model for CPU. On more cores or a GPU per replica, replicas scale until NATS or the "
        "client saturates.",
        "Latency (b) uses the replica without batching (no batch window); with batching a lone "
        f"invocation also waits up to CHORUS_BATCH_WAIT_MS ({BATCH_WAIT_MS} ms here).",
    ]
    _print(figures)
    write_results(RESULTS, figures)
    print(f"wrote {RESULTS}")
    return 0


def _print(figures: dict[str, Any]) -> None:
    b, lat, scale = figures["batching"], figures["bus_latency"], figures["scale_out"]
    one = figures["scale_out_one_thread_each"]
    print(f"one replica at concurrency {CONCURRENCY} (median of {REPEATS} runs):")
    print(f"  without batching {b['without_median_rps']:8.1f} invocations/s")
    print(f"  with batching    {b['with_median_rps']:8.1f} invocations/s  ({b['ratio']:.2f}x)")
    print("one invocation at a time:      median ms    p99 ms")
    for name, row in (
        ("over the bus", lat["over_bus"]),
        ("pipeline called directly", lat["pipeline_direct"]),
    ):
        print(f"  {name:26}{row['median_ms']:10.2f}{row['p99_ms']:10.2f}")
    print(f"  added by the bus path: {lat['added_median_ms']:.2f} ms median")
    for name, rows in (("default torch threads", scale), ("one torch thread each", one)):
        line = "  ".join(f"{n}: {r['median_rps']:.1f}/s" for n, r in rows.items())
        print(f"replicas, batching on, {name}:  {line}")


if __name__ == "__main__":
    sys.exit(main())
