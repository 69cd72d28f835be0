"""The floor under `bench.pipeline`: the same hand-offs with no stage work at all.

A request of the 3-task chain crosses nine acked JetStream hand-offs between four processes
(request → planner → selector → executor → selector → … → responder) and one core-NATS reply
to the caller. Here four processes pass a small protobuf along the same nine hops, in the
same pattern, with Chorus's own bus code (`bus.Consumer`, `bus.publish`): a durable pull
consumer per subject in the work stream, the next hop published with `Nats-Msg-Id` and its
ack awaited, then the message acked. No run state, no events, no files, no LLM: what is left
is what the bus and the Python client cost by themselves, the least that a design with one
acked hand-off per stage pays on this machine.

    python -m bench.bus_floor [--requests 400]

Writes bench/results/bus_floor.json: p50/p99 at concurrency 1, requests/s at 8 and 32, and
CPU-ms per request of each process and of the NATS server.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from chorus.v1.messages_pb2 import TaskInvocation

from bench.pipeline import pid_cpu_s
from bench.stats import p99, throughput, write_results
from services.cli.cluster import start_nats_server
from services.common import bus, subjects
from services.common.runtime import run_loop

# Which process takes each hop: the stages of a 3-task chain, in order.
HOPS = [
    "planner",
    "selector",
    "executor",
    "selector",
    "executor",
    "selector",
    "executor",
    "selector",
    "responder",
]
PAYLOAD = "x" * 300
CONCURRENCY = (8, 32)
WARM_UP = 20  # requests before the measured ones
RESULTS = Path("bench/results/bus_floor.json")


def _hop_subject(hop: int) -> str:
    # In the work stream, where Chorus's own hand-offs go (an invocation subject of its own).
    return f"{subjects.INVOKE_PREFIX}.floor.hop{hop}"


async def _stage(url: str, name: str) -> None:
    """One process: a consumer per hop it takes, each message passed on, then acked."""
    nc = await bus.connect(url, name)
    js = nc.jetstream()

    def hop_handler(hop: int) -> Callable[[TaskInvocation], Awaitable[None]]:
        async def handle(message: TaskInvocation) -> None:
            if hop + 1 < len(HOPS):
                msg_id = f"{message.request_id}.{hop + 1}"
                await bus.publish(js, _hop_subject(hop + 1), message, msg_id=msg_id)
            else:  # the answer goes to the caller on core NATS, as Chorus's events do
                await nc.publish(f"floor.reply.{message.request_id}", message.SerializeToString())

        return handle

    async def give_up(message: TaskInvocation, error: Exception) -> None:
        raise error

    consumers = [
        bus.Consumer(
            js,
            bus.ConsumerSpec(
                stage=name,
                subject=_hop_subject(hop),
                durable=f"floor-hop-{hop}",
                message_type=TaskInvocation,
                handle=hop_handler(hop),
                give_up=give_up,
                concurrency=32,
            ),
        )
        for hop, owner in enumerate(HOPS)
        if owner == name
    ]
    await asyncio.gather(*(c.run() for c in consumers))


def _run_stage(url: str, name: str) -> None:
    run_loop(_stage(url, name))  # on uvloop, as the services run


async def _measure(url: str, requests: int) -> dict[str, Any]:
    nc = await bus.connect(url, "caller")
    js = nc.jetstream()
    await bus.ensure_streams(js)
    replies: dict[str, asyncio.Future[None]] = {}

    async def on_reply(msg: Any) -> None:
        if future := replies.pop(msg.subject.rsplit(".", 1)[1], None):
            future.set_result(None)

    await nc.subscribe("floor.reply.*", cb=on_reply)

    async def run() -> None:
        request_id = uuid.uuid4().hex
        replies[request_id] = answered = asyncio.get_running_loop().create_future()
        invocation = TaskInvocation(request_id=request_id, task="floor", model=PAYLOAD)
        await bus.publish(js, _hop_subject(0), invocation, msg_id=f"{request_id}.0")
        await asyncio.wait_for(answered, 10)

    for _ in range(WARM_UP):
        await run()
    latencies = []
    for _ in range(requests // 2):
        started = time.perf_counter()
        await run()
        latencies.append((time.perf_counter() - started) * 1000)
    ordered = sorted(latencies)
    figures: dict[str, Any] = {"p50_ms": statistics.median(ordered), "p99_ms": p99(ordered)}
    for level in CONCURRENCY:
        figures[f"rps_at_{level}"] = await throughput(run, level, requests)
    await nc.close()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="chorus-floor-") as store:
        server, url = start_nats_server(Path(store))
        stages: list[Any] = []
        try:
            for name in sorted(set(HOPS)):
                stage = context.Process(target=_run_stage, args=(url, name), daemon=True)
                stage.start()
                stages.append((name, stage))
            time.sleep(2.0)  # the stages bind their consumers
            pids = {name: stage.pid for name, stage in stages} | {"nats": server.pid}
            cpu_before = {name: pid_cpu_s(pid) for name, pid in pids.items()}
            figures = asyncio.run(_measure(url, args.requests))
            cpu_after = {name: pid_cpu_s(pid) for name, pid in pids.items()}
        finally:
            for _, stage in stages:
                stage.terminate()
            server.terminate()
            server.wait(10)
    # Every call of `run` (the warm-up, the latency requests and each throughput level).
    calls = WARM_UP + args.requests // 2 + args.requests * len(CONCURRENCY)
    cpu = {n: (cpu_after[n] - cpu_before[n]) * 1000 / calls for n in pids}
    figures |= {
        "hops": len(HOPS),
        "requests_per_level": args.requests,
        "cpu_ms_per_request": cpu,
        "cpu_ms_per_request_total": sum(cpu.values()),
    }
    write_results(RESULTS, figures)
    print(
        f"{len(HOPS)} acked hops: p50 {figures['p50_ms']:.1f} ms, p99 {figures['p99_ms']:.1f} ms,"
        f" {figures['rps_at_8']:.0f} req/s at 8, {figures['rps_at_32']:.0f} at 32;"
        f" CPU {figures['cpu_ms_per_request_total']:.2f} ms/req "
        + ", ".join(f"{n} {v:.2f}" for n, v in cpu.items())
    )
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
