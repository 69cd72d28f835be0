"""`make bench`: the gateway as a user meets it.

- In a real browser (Debian's chromium through Playwright), the time from pressing Send to the
  plan appearing in the page and to the first answer token, median of 20.
- After a cancel, the time until no task of the request runs: from the `Cancel` call to the
  executor dropping the task it was running (its CANCELLED result), median of 10.
- Requests/s of the OpenAI-compatible HTTP endpoint against the gRPC door, at the same
  concurrency, side by side in one run.

The LLM is scripted and answers at once (a summary the executor runs is the one slow task), so
what is measured is Chorus: four services over NATS, started as `chorus up` starts them.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import nats
from chorus.v1 import chorus_pb2_grpc
from chorus.v1.chorus_pb2 import ListModelsRequest
from chorus.v1.messages_pb2 import (
    CancelRequest,
    ChatMessage,
    ChatRequest,
    TaskResult,
    TaskStatus,
)
from openai import AsyncOpenAI

from bench.stats import throughput, write_results
from services.cli.cluster import LocalCluster, free_port, start_nats_server
from services.common import subjects
from tests.gateway.browser import CHROMIUM, chromium
from tests.support import ScriptedLLM, square_png

BROWSER_RUNS = int(os.environ.get("BENCH_BROWSER_RUNS", "20"))
CANCEL_RUNS = int(os.environ.get("BENCH_CANCEL_RUNS", "10"))
DOOR_REQUESTS = int(os.environ.get("BENCH_DOOR_REQUESTS", "200"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "8"))
SLOW_TASK_S = 5.0
RESULTS = Path("bench/results/gateway.json")
EDGES_PLAN = json.dumps([{"task": "canny-control", "id": 0, "dep": [], "args": {"image": "x"}}])
SLOW_PLAN = json.dumps([{"task": "summarization", "id": 0, "dep": [], "args": {"text": "story"}}])


def _reply(messages: list[dict[str, Any]]) -> str:
    """The planner gets a plan, the executor's summary is slow, the responder answers."""
    system, last = messages[0]["content"], messages[-1]["content"]
    if "Task planning" in system:
        return SLOW_PLAN if "Summarize" in last else EDGES_PLAN if "edges" in last else "[]"
    if "Summarize" in system:
        time.sleep(SLOW_TASK_S)
        return "A summary."
    return "The edges are ready, drawn white on black."


async def _browser(url: str, picture: Path) -> dict[str, float]:
    to_plan, to_token = [], []
    async with chromium() as browser:
        page = await browser.new_page()
        page.set_default_timeout(60_000)
        for _ in range(BROWSER_RUNS + 1):  # the first warms up
            await page.goto(url)
            await page.set_input_files("#files", str(picture))
            await page.fill("#prompt", "Find the edges in this picture")
            started = time.perf_counter()
            await page.click("#send")
            await page.wait_for_selector(".turn.assistant .task")
            planned = time.perf_counter()
            await page.wait_for_selector(".turn.assistant .answer:not(:empty)")
            answered = time.perf_counter()
            to_plan.append(planned - started)
            to_token.append(answered - started)
    return {
        "send_to_plan_ms_median": statistics.median(to_plan[1:]) * 1000,
        "send_to_first_token_ms_median": statistics.median(to_token[1:]) * 1000,
        "runs": BROWSER_RUNS,
    }


async def _cancel(grpc_addr: str, nats_url: str) -> dict[str, float]:
    nc = await nats.connect(nats_url)
    results = await nc.subscribe(subjects.RESULT)  # a plain subscription sees every result
    took = []
    async with grpc.aio.insecure_channel(grpc_addr) as channel:
        stub = chorus_pb2_grpc.ChorusStub(channel)
        for _ in range(CANCEL_RUNS):
            call = stub.StreamChat(
                ChatRequest(messages=[ChatMessage(role="user", content="Summarize it")])
            )
            async for event in call:
                if event.WhichOneof("event") == "task_started":
                    await asyncio.sleep(0.5)  # the task is running on the executor
                    cancelled_at = time.perf_counter()
                    await stub.Cancel(CancelRequest(request_id=event.request_id))
                    took.append(await _dropped(results, event.request_id) - cancelled_at)
            call.cancel()
    await nc.close()
    return {
        "cancel_to_no_task_running_ms_median": statistics.median(took) * 1000,
        "runs": CANCEL_RUNS,
    }


async def _dropped(results: Any, request_id: str) -> float:
    while True:
        msg = await results.next_msg(timeout=SLOW_TASK_S * 4)
        result = TaskResult.FromString(msg.data)
        if result.request_id == request_id:
            assert result.status == TaskStatus.TASK_STATUS_CANCELLED, result
            return time.perf_counter()


async def _rate(run: Callable[[], Awaitable[None]]) -> float:
    await run()  # warm: channels and connections open
    return await throughput(run, CONCURRENCY, DOOR_REQUESTS)


async def _doors(grpc_addr: str, http_addr: str) -> dict[str, float]:
    """The same request (no task: planned, then answered) through each door."""
    async with (
        grpc.aio.insecure_channel(grpc_addr) as channel,
        AsyncOpenAI(base_url=f"http://{http_addr}/v1", api_key="-", max_retries=0) as client,
    ):
        stub = chorus_pb2_grpc.ChorusStub(channel)

        async def over_grpc() -> None:
            await stub.Chat(ChatRequest(messages=[ChatMessage(role="user", content="Hello")]))

        async def over_http() -> None:
            await client.chat.completions.create(
                model="chorus", messages=[{"role": "user", "content": "Hello"}]
            )

        figures = {"grpc_rps": await _rate(over_grpc), "http_rps": await _rate(over_http)}
    figures["http_over_grpc"] = figures["http_rps"] / figures["grpc_rps"]
    return figures


async def _ready(grpc_addr: str) -> None:
    async with grpc.aio.insecure_channel(grpc_addr) as channel:
        stub = chorus_pb2_grpc.ChorusStub(channel)
        for _ in range(300):
            served = await stub.ListModels(ListModelsRequest())
            tasks = {m.task for w in served.workers for m in w.models}
            if {"canny-control", "summarization"} <= tasks:
                return
            await asyncio.sleep(0.1)
    raise RuntimeError("the executor never announced canny-control and summarization")


async def _measure(cluster: LocalCluster, grpc_addr: str, http_addr: str) -> dict[str, Any]:
    await _ready(grpc_addr)
    figures: dict[str, Any] = {"doors": await _doors(grpc_addr, http_addr)}
    figures["cancel"] = await _cancel(grpc_addr, str(cluster.nats_url))
    if CHROMIUM.exists():
        with tempfile.TemporaryDirectory() as tmp:
            picture = Path(tmp) / "square.png"
            picture.write_bytes(square_png(128))
            figures["browser"] = await _browser(f"http://{http_addr}/", picture)
    else:
        print("no /usr/bin/chromium: the browser figures are left out", flush=True)
    return figures


def main() -> int:
    llm = ScriptedLLM(replies=[_reply]).start()
    grpc_addr, http_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    # A NATS of the bench's own, without users: the cancel figure watches every task result,
    # which no role of a locked bus may read.
    store = tempfile.TemporaryDirectory(prefix="chorus-bench-nats-")
    nats_proc, nats_url = start_nats_server(Path(store.name))
    cluster = LocalCluster(
        nats_url=nats_url,
        grpc_addr=grpc_addr,
        openai_addr=http_addr,
        executor_models=["canny-control=builtin:canny"],
        env={
            "CHORUS_LLM_BASE_URL": llm.base_url,
            "CHORUS_EXECUTOR_CAPACITY": "4",
            "CHORUS_LOG_LEVEL": "WARNING",
        },
    )
    try:
        cluster.start()
        figures = asyncio.run(_measure(cluster, grpc_addr, http_addr))
    finally:
        cluster.stop()
        llm.stop()
        nats_proc.terminate()
        nats_proc.wait()
        store.cleanup()
    figures["config"] = {
        "concurrency": CONCURRENCY,
        "door_requests": DOOR_REQUESTS,
        "cpus": os.cpu_count(),
    }
    doors = figures["doors"]
    print(
        f"at concurrency {CONCURRENCY}: gRPC {doors['grpc_rps']:.1f} req/s, "
        f"HTTP {doors['http_rps']:.1f} req/s ({doors['http_over_grpc']:.2f}x)"
    )
    cancel = figures["cancel"]
    print(
        f"cancel to no task running: {cancel['cancel_to_no_task_running_ms_median']:.0f} ms median"
    )
    if "browser" in figures:
        b = figures["browser"]
        print(
            f"browser, Send to plan shown: {b['send_to_plan_ms_median']:.0f} ms median; "
            f"to first answer token: {b['send_to_first_token_ms_median']:.0f} ms median"
        )
    write_results(RESULTS, figures)
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
