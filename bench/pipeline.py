"""`make bench`: the pipeline over the bus against the same stage functions in one process.

A scripted LLM answers at once with a 3-task chain of built-in canny operations (a trivial
model), so what is measured is Chorus itself: planning, selection, dispatch, execution and
response, with every hand-off through NATS JetStream. Both sides run in one go, side by side.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
from chorus.v1 import chorus_pb2_grpc
from chorus.v1.chorus_pb2 import ArtifactChunk
from chorus.v1.messages_pb2 import (
    ArtifactRef,
    ChatMessage,
    ChatRequest,
    ExecutionReport,
    RunState,
    TaskInvocation,
    TaskStatus,
)
from chorus.v1.workers_pb2 import ServedModel, WorkerInfo

from services.cli.cluster import LocalCluster, free_port
from services.common.llm import OpenAILLM
from services.common.settings import LLMSettings
from services.executor.execute import execute
from services.planner.plan import plan
from services.responder.respond import respond
from services.selector.catalog import Catalog
from services.selector.dag import ready_tasks, resolve_args
from services.selector.rank import RequestFacts, rank
from services.selector.select import decide
from tests.support import MemoryArtifacts, ScriptedLLM, local_run, square_png

CHAIN = json.dumps(
    [
        {"task": "canny-control", "id": 0, "dep": [], "args": {"image": "photo.png"}},
        {"task": "canny-control", "id": 1, "dep": [0], "args": {"image": "<GENERATED>-0"}},
        {"task": "canny-control", "id": 2, "dep": [1], "args": {"image": "<GENERATED>-1"}},
    ]
)
LATENCY_REQUESTS = int(os.environ.get("BENCH_REQUESTS", "40"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "8"))
THROUGHPUT_REQUESTS = int(os.environ.get("BENCH_THROUGHPUT_REQUESTS", "80"))
RESULTS = Path("bench/results/pipeline.json")

Run = Callable[[], Awaitable[None]]


def _request(photo: ArtifactRef) -> ChatRequest:
    message = ChatMessage(role="user", content="Edges of photo.png, three times", artifacts=[photo])
    request = ChatRequest(messages=[message])
    request.created_at.GetCurrentTime()
    return request


async def _measure(run: Run) -> dict[str, float]:
    """Median and p99 latency of sequential runs, then throughput at fixed concurrency."""
    await run()  # warm-up
    latencies = []
    for _ in range(LATENCY_REQUESTS):
        started = time.perf_counter()
        await run()
        latencies.append(time.perf_counter() - started)
    slots = asyncio.Semaphore(CONCURRENCY)

    async def limited() -> None:
        async with slots:
            await run()

    started = time.perf_counter()
    await asyncio.gather(*(limited() for _ in range(THROUGHPUT_REQUESTS)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "median_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "throughput_rps": THROUGHPUT_REQUESTS / elapsed,
    }


async def _bus_side(addr: str, photo_bytes: bytes) -> dict[str, float]:
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = chorus_pb2_grpc.ChorusStub(channel)

        async def chunks() -> AsyncIterator[ArtifactChunk]:
            yield ArtifactChunk(name="photo.png", media_type="image/png", data=photo_bytes)

        photo = await stub.UploadArtifact(chunks())

        async def run() -> None:
            response = await stub.Chat(_request(photo))
            assert all(r.status == TaskStatus.TASK_STATUS_SUCCEEDED for r in response.results)
            assert len(response.results) == 3

        return await _measure(run)


async def _in_process_side(llm_url: str, photo_bytes: bytes) -> dict[str, float]:
    """The same stage functions called directly: no NATS, no gRPC, no processes."""
    llm = OpenAILLM(LLMSettings(llm_url, "x", "bench", 30.0, 0))
    store = MemoryArtifacts()
    photo = await store.put(photo_bytes, "photo.png")
    loaded = local_run("canny-control", "builtin:canny")
    worker = WorkerInfo(
        worker_id="w", capacity=4, models=[ServedModel(task="canny-control", model="builtin:canny")]
    )

    async def run() -> None:
        task_plan = await plan(_request(photo), llm)
        state = RunState()
        state.plan.CopyFrom(task_plan)
        while ready := ready_tasks(state):
            for task in ready:
                candidates = rank(task.task, RequestFacts.of(""), [worker], Catalog())
                choice = decide(task.task, candidates, None)
                invocation = TaskInvocation(
                    request_id="r",
                    task_id=task.id,
                    task=task.task,
                    model=choice.model,
                    args=resolve_args(task, state),
                )
                state.results[task.id].CopyFrom(await execute(invocation, loaded, store, "w"))
        report = ExecutionReport(
            request_id="r",
            plan=task_plan,
            results=[state.results[t.id] for t in task_plan.tasks if t.id in state.results],
        )

        async def ignore(_: str) -> None:
            return None

        await respond(report, llm, ignore)

    return await _measure(run)


def main() -> int:
    llm = ScriptedLLM(
        replies=[lambda m: CHAIN if "Task planning" in m[0]["content"] else "The edges are ready."]
    ).start()
    photo_bytes = square_png(128)
    addr = f"127.0.0.1:{free_port()}"
    cluster = LocalCluster(
        grpc_addr=addr,
        executor_models=["canny-control=builtin:canny"],
        env={
            "CHORUS_LLM_BASE_URL": llm.base_url,
            "CHORUS_EXECUTOR_DEFAULTS": "0",
            "CHORUS_EXECUTOR_CAPACITY": "4",
            "CHORUS_LOG_LEVEL": "WARNING",
        },
    )
    print(
        f"3-task chain, {LATENCY_REQUESTS} sequential requests, then {THROUGHPUT_REQUESTS} "
        f"at concurrency {CONCURRENCY}",
        flush=True,
    )
    try:
        cluster.start()
        try:
            bus = asyncio.run(_bus_side(addr, photo_bytes))
        finally:
            cluster.stop()
        direct = asyncio.run(_in_process_side(llm.base_url, photo_bytes))
    finally:
        llm.stop()
    figures = {
        "chorus_over_bus": bus,
        "stage_functions_in_one_process": direct,
        "overhead_median_ms": bus["median_ms"] - direct["median_ms"],
        "latency_ratio_median": bus["median_ms"] / direct["median_ms"],
        "throughput_ratio": bus["throughput_rps"] / direct["throughput_rps"],
        "config": {
            "requests": LATENCY_REQUESTS,
            "throughput_requests": THROUGHPUT_REQUESTS,
            "concurrency": CONCURRENCY,
            "cpus": os.cpu_count(),
        },
    }
    print(f"{'':34}{'median ms':>10}{'p99 ms':>10}{'req/s':>10}")
    for name, row in (
        ("chorus (4 services over NATS)", bus),
        ("same stages in one process", direct),
    ):
        print(
            f"{name:34}{row['median_ms']:10.1f}{row['p99_ms']:10.1f}{row['throughput_rps']:10.1f}"
        )
    print(
        f"overhead of the bus path: {figures['overhead_median_ms']:.1f} ms median "
        f"({figures['latency_ratio_median']:.1f}x); throughput ratio {figures['throughput_ratio']:.2f}"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
