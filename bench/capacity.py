"""The capacity model's figures, measured here: per-request CPU of each service and of the
NATS server, and messages per stream, then replicas and NATS sizing at 1,000 and 10,000
requests/s for TaskBench's task mix (bench/capacity_model.py does the arithmetic).

Two clusters run side by side, measured in alternating rounds (bench/pipeline.py's `BusSide`,
each with its own NATS server and monitoring): `single`, one process per service, and
`double`, with 2 planners and 2 selectors; both run the gateway as a process of its own, so
that its cost is its own. Each asks for no-op chains (an 8-px image, an instant scripted LLM:
orchestration alone) of 1 and 3 tasks, so each cost splits into a fixed part and a part per
task. Every request is counted: answered well, failed, lost, answered twice.

The model's task mix is the task types of the plans a real LLM (Llama-3.3-70B) wrote for
TaskBench's multimedia requests; GPU seconds per task type are stated assumptions
(`capacity_model.TASKBENCH_PROFILES`).

    python -m bench.capacity [--rounds 3] [--requests 200]   # data: $CHORUS_SHARED_DATA or
                                                             # <repo>/../shared/data
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import nats
from chorus.v1 import chorus_pb2_grpc
from chorus.v1.chorus_pb2 import ArtifactChunk
from chorus.v1.messages_pb2 import ArtifactRef, ChatMessage, ChatRequest, TaskStatus

from bench.capacity_model import (
    SERVICES,
    TASKBENCH_PROFILES,
    Assumptions,
    Capacity,
    Cost,
    Measured,
    TaskProfile,
    plan_capacity,
    predicted_rps,
    task_mix,
)
from bench.pipeline import BusSide, get_json, pid_cpu_s, scripted_llm
from bench.stats import throughput, write_results
from services.cli.cluster import start_nats_server
from services.common import subjects
from tests.fault.harness import Tally
from tests.support import CANNY_CHAIN_ANSWER, ScriptedLLM, square_png

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "capacity.json"
CONFIGS = {"single": {"gateway": 1}, "double": {"gateway": 1, "planner": 2, "selector": 2}}
CHAINS = (1, 3)  # tasks per request: two points give each cost's fixed and per-task parts
CONCURRENCY = 32
TARGETS = (1_000, 10_000)
PROBE_IN_FLIGHT = 256
PROBE_MESSAGE_BYTES = 512  # about a run state or an invocation
IMAGE_SIDE = 8  # next to no stage work: what is measured is orchestration
PREDICTIONS = Path("taskbench") / "multimedia" / "predictions_llama-3.3-70b.jsonl"
# Refreshed by the executors' heartbeats, not by requests.
NOT_PER_REQUEST = {f"KV_{subjects.WORKER_BUCKET}"}


def _chain(tasks: int) -> str:
    steps = [
        {"task": "canny-control", "id": i, "dep": [i - 1] if i else [], "args": {"image": image}}
        for i, image in enumerate(["photo.png"] + [f"<GENERATED>-{j}" for j in range(tasks - 1)])
    ]
    return json.dumps(steps)


def chains_llm() -> ScriptedLLM:
    """Plans `capacity-chain-N` as a chain of N canny tasks; answers CANNY_CHAIN_ANSWER."""

    def reply(messages: list[dict[str, Any]]) -> str:
        if "Task planning" not in messages[0]["content"]:
            return CANNY_CHAIN_ANSWER
        asked = re.findall(r"capacity-chain-(\d+)", " ".join(str(m["content"]) for m in messages))
        return _chain(int(asked[-1]))

    return ScriptedLLM(replies=[reply]).start()


# --- one cluster: its counters and its client ------------------------------------------------


def stream_sequences(monitor: str) -> dict[str, float]:
    """Messages ever stored per stream (its last sequence), from the server's `/jsz`."""
    jsz = get_json(f"{monitor}/jsz?accounts=true&streams=true")
    return {
        s["name"]: float(s["state"]["last_seq"])
        for account in jsz.get("account_details", [])
        for s in account.get("stream_detail", [])
    }


def machine_cpu_s() -> float:
    """CPU seconds every process on this machine has used (`/proc/stat`): with our own, what
    other work on a shared machine took."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _snapshot(side: BusSide, llm_pid: int) -> dict[str, float]:
    counters = side.counters()
    counters |= {f"stream_{k}": v for k, v in stream_sequences(side.monitor).items()}
    counters["cpu_client"] = time.process_time()
    counters["cpu_llm"] = pid_cpu_s(llm_pid)
    counters["machine_cpu"] = machine_cpu_s()
    return counters


Ask = Callable[[int], Awaitable[None]]


@contextlib.asynccontextmanager
async def _client(side: BusSide, tally: Tally) -> AsyncIterator[Ask]:
    async with grpc.aio.insecure_channel(side.addr) as channel:
        stub = chorus_pb2_grpc.ChorusStub(channel)

        async def chunks() -> AsyncIterator[ArtifactChunk]:
            yield ArtifactChunk(
                name="photo.png", media_type="image/png", data=square_png(IMAGE_SIDE)
            )

        photo: ArtifactRef = await stub.UploadArtifact(chunks())

        async def ask(tasks: int) -> None:
            text = f"Edges of photo.png, capacity-chain-{tasks}"
            request = ChatRequest(messages=[ChatMessage(role="user", content=text)])
            request.messages[0].artifacts.append(photo)
            started = time.monotonic()
            try:
                response = await stub.Chat(request, timeout=120)
            except grpc.aio.AioRpcError as e:
                tally.lost += 1
                tally.errors.append(f"{e.code()}: {e.details()}")
                return
            tally.latencies.append(time.monotonic() - started)
            statuses = [r.status for r in response.results]
            if statuses == [TaskStatus.TASK_STATUS_SUCCEEDED] * tasks and (
                response.answer == CANNY_CHAIN_ANSWER
            ):
                tally.well += 1
            else:
                tally.failed += 1
                tally.errors.append(response.error.message or str(statuses))

        yield ask


async def _count_responses(side: BusSide, tally: Tally) -> None:
    """Responses per request id, from the events stream that keeps them all."""
    nc = await nats.connect(side.nats_url)
    try:
        info = await nc.jetstream().stream_info(
            subjects.EVENTS_STREAM, subjects_filter="chorus.response.>"
        )
        counts = info.state.subjects or {}
        tally.twice = sum(1 for n in counts.values() if n > 1)
    finally:
        await nc.close()


# --- what one stream leader takes ----------------------------------------------------------


async def _probe(url: str, server_pid: int, writes: int, size: int) -> dict[str, float]:
    """Server CPU-us per message stored, on a server of its own: publishes with dedup ids to
    one R1 file stream, and KV writes (a create and two revision-checked updates a key, as the
    selector writes a run), `PROBE_IN_FLIGHT` at a time. A stream takes its writes one at a
    time (under its lock), so one core / this cost is what one stream leader takes."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    payload = os.urandom(size)
    await js.add_stream(name="PROBE", subjects=["probe.>"])
    kv = await js.create_key_value(bucket="probe_runs", history=1)
    slots = asyncio.Semaphore(PROBE_IN_FLIGHT)

    async def publish(i: int) -> None:
        async with slots:
            await js.publish(f"probe.{i % 64}", payload, headers={"Nats-Msg-Id": str(i)})

    async def run_state(i: int) -> None:
        async with slots:
            revision = await kv.create(f"r{i}", payload)
            for _ in range(2):
                revision = await kv.update(f"r{i}", payload, last=revision)

    costs = {}
    try:
        for name, writes_of, jobs in (
            ("stream_publish", publish, writes),
            ("kv_write", run_state, writes // 3),
        ):
            before = pid_cpu_s(server_pid)
            await asyncio.gather(*(writes_of(i) for i in range(jobs)))
            stored = jobs * (3 if name == "kv_write" else 1)
            costs[name] = (pid_cpu_s(server_pid) - before) / stored * 1e6
    finally:
        await nc.close()
    return costs


def probe_stream_costs(writes: int, size: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="chorus-probe-") as store:
        server, url = start_nats_server(Path(store))
        try:
            return asyncio.run(_probe(url, server.pid, writes, size))
        finally:
            server.terminate()
            server.wait(10)


# --- the run ---------------------------------------------------------------------------------


async def _measure(
    sides: dict[str, BusSide], llm_pid: int, rounds: int, requests: int
) -> tuple[dict[str, dict[int, dict[str, float]]], dict[str, Tally]]:
    """Per config and chain length: the medians over rounds of each per-request figure."""
    tallies = {name: Tally() for name in sides}
    rows: dict[str, dict[int, dict[str, list[float]]]] = {n: {} for n in sides}
    async with contextlib.AsyncExitStack() as stack:
        asks = {
            n: await stack.enter_async_context(_client(s, tallies[n])) for n, s in sides.items()
        }
        for ask in asks.values():
            for tasks in CHAINS:
                await ask(tasks)  # warm-up
        for r in range(rounds):
            order = list(sides) if r % 2 == 0 else list(sides)[::-1]
            for name in order:
                for tasks in CHAINS if name == "single" else CHAINS[-1:]:
                    before = await asyncio.to_thread(_snapshot, sides[name], llm_pid)
                    rate = await throughput(partial(asks[name], tasks), CONCURRENCY, requests)
                    after = await asyncio.to_thread(_snapshot, sides[name], llm_pid)
                    row = rows[name].setdefault(tasks, {})
                    row.setdefault("rps", []).append(rate)
                    for key in after.keys() & before.keys():
                        per_request = (after[key] - before[key]) / requests
                        cpu = key.startswith("cpu_") or key == "machine_cpu"
                        scale = 1000.0 if cpu else 1.0  # CPU in ms
                        row.setdefault(key, []).append(per_request * scale)
                    print(
                        f"  round {r + 1} {name:6} {tasks}-task chain: {rate:6.1f} req/s",
                        flush=True,
                    )
    for name, side in sides.items():
        await _count_responses(side, tallies[name])
    medians = {
        name: {t: {k: statistics.median(v) for k, v in row.items()} for t, row in by_chain.items()}
        for name, by_chain in rows.items()
    }
    return medians, tallies


def measured_model(single: dict[int, dict[str, float]], probe: dict[str, float]) -> Measured:
    """The model's inputs, fitted from the single cluster's two chain lengths."""
    a, b = CHAINS

    def fit(key: str) -> Cost:
        return Cost.fit(a, single[a].get(key, 0.0), b, single[b].get(key, 0.0))

    streams = {
        k.removeprefix("stream_")
        for k in single[b]
        if k.startswith("stream_") and k.removeprefix("stream_") not in NOT_PER_REQUEST
    }
    return Measured(
        cpu_ms={s: fit(f"cpu_{s}") for s in (*SERVICES, "nats")},
        stream_messages={s: fit(f"stream_{s}") for s in sorted(streams)},
        server_bytes=fit("bytes_in") + fit("bytes_out"),
        stream_write_us=probe["stream_publish"],
        kv_write_us=probe["kv_write"],
    )


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def data_dir() -> Path:
    return Path(os.environ.get("CHORUS_SHARED_DATA") or ROOT.parent / "shared" / "data")


def load_mix() -> tuple[dict[str, float], dict[str, TaskProfile], str]:
    """TaskBench's task mix from the real LLM's plans, or without the data, the bench's own
    3-task canny chain (12.5 ms of one core per task: `bench.annotators` at 1024x768)."""
    path = data_dir() / PREDICTIONS
    if not path.exists():
        return {"canny-control": 3.0}, {"canny-control": TaskProfile("cpu", 0.0125)}, "canny chain"
    plans, unknown, total = [], 0, 0
    for line in path.read_text().splitlines():
        tasks = [str(n.get("task")) for n in json.loads(line)["result"].get("task_nodes", [])]
        total += len(tasks)
        unknown += sum(t not in TASKBENCH_PROFILES for t in tasks)
        plans.append([t for t in tasks if t in TASKBENCH_PROFILES])
    source = (
        f"{PREDICTIONS} ({len(plans)} plans; {unknown} of {total} tasks name no TaskBench tool "
        "and are left out)"
    )
    return task_mix(plans), TASKBENCH_PROFILES, source


def _check(
    medians: dict[str, dict[int, dict[str, float]]], cores: float
) -> dict[str, dict[str, float]]:
    """The model's prediction for each config on this machine against what it did, from the
    single cluster's costs at the longest chain (services, NATS, load generator and LLM), on
    the cores that other work on the machine left during the measurement."""
    cost = {
        k.removeprefix("cpu_"): v
        for k, v in medians["single"][CHAINS[-1]].items()
        if k.startswith("cpu_")
    }
    one_core_each = [*SERVICES, "client", "llm"]
    out = {}
    for name, replicas in CONFIGS.items():
        figures = medians[name][CHAINS[-1]]
        counts = {s: replicas.get(s, 1) for s in one_core_each}
        cpu = sum(v for k, v in figures.items() if k.startswith("cpu_"))
        others = max(0.0, figures["machine_cpu"] - cpu) * figures["rps"] / 1000  # cores
        out[name] = {
            "predicted_rps": predicted_rps(cost, counts, cores - others),
            "cores_taken_by_other_work": others,
            "measured_rps": figures["rps"],
            "cpu_ms_per_request": cpu,
            "cores_used": cpu * figures["rps"] / 1000,
            # request, plan, an invocation and a result a task, report: more is work done twice
            "work_messages_per_request": figures[f"stream_{subjects.WORK_STREAM}"],
            "work_messages_expected": 3 + 2 * CHAINS[-1],
        }
    return out


def markdown(figures: dict[str, Any]) -> str:
    """The figures as the tables deploy/README.md shows."""
    m, plans = figures["measured_per_request"], figures["targets"]
    tasks = plans[0]["tasks_per_request"]
    config = figures["config"]
    start, end = config["load_average_1min"]
    lines = [
        f"Machine: {config['cpus']} x {config['cpu_model']}, load average {start:.1f} at the "
        f"start and {end:.1f} at the end (other work shares it).",
        "",
        f"Per request, fitted over 1- and 3-task chains (fixed + per task), and at the mix's "
        f"{tasks:.2f} tasks a request:",
        "",
        "| | fixed | per task | at the mix |",
        "| --- | ---: | ---: | ---: |",
    ]
    for kind, unit in (("cpu_ms", "CPU ms"), ("stream_messages", "messages")):
        for name, c in m[kind].items():
            if c["fixed"] or c["per_task"]:
                at = c["fixed"] + c["per_task"] * tasks
                lines.append(
                    f"| {name} {unit} | {c['fixed']:.2f} | {c['per_task']:.2f} | {at:.2f} |"
                )
    b = m["server_bytes"]
    at = b["fixed"] + b["per_task"] * tasks
    lines += [
        f"| NATS bytes in+out | {b['fixed']:,.0f} | {b['per_task']:,.0f} | {at:,.0f} |",
        "",
        f"One stream leader (probe, server CPU per write): publish {m['stream_write_us']:.1f} us, "
        f"KV write {m['kv_write_us']:.1f} us.",
        "",
        "| target | " + " | ".join(f"{p['rate']:,.0f} req/s" for p in plans) + " |",
        "| --- |" + " ---: |" * len(plans),
    ]

    def row(label: str, cells: list[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    for service in SERVICES:
        row(f"{service} replicas", [f"{p['replicas'][service]}" for p in plans])
    for device in plans[0]["executor_devices"]:
        row(
            f"{device} executors (task types)",
            [f"{p['executor_devices'][device]:,}" for p in plans],
        )
    row("NATS server cores (R3)", [f"{p['nats_cores']:.1f}" for p in plans])
    row("NATS nodes", [f"{p['nats_nodes']}" for p in plans])
    for stream in plans[0]["streams"]:
        loads = [p["streams"][stream] for p in plans]
        row(
            f"`{stream}` msg/s (partitions); one leader: {loads[0]['ceiling_rps']:,.0f} req/s",
            [f"{x['messages_per_s']:,.0f} ({x['partitions']})" for x in loads],
        )
    first = plans[0]
    lines += [
        "",
        f"First limit that replicas do not lift: `{first['first_limit']}`, one stream leader "
        f"at {first['first_limit_rps']:,.0f} req/s.",
        "",
        "| on this machine, 3-task chain | predicted req/s | measured req/s | CPU ms/request "
        "| other work (cores) | work messages/request | well | failed | lost | twice |",
        "| --- |" + " ---: |" * 9,
    ]
    for name, c in figures["check"].items():
        t = figures["tallies"][name]
        replicas = ", ".join(f"{n} {s}" for s, n in CONFIGS[name].items())
        lines.append(
            f"| {name} ({replicas}) | {c['predicted_rps']:.1f} | {c['measured_rps']:.1f} "
            f"| {c['cpu_ms_per_request']:.1f} | {c['cores_taken_by_other_work']:.2f} "
            f"| {c['work_messages_per_request']:.2f} (of {c['work_messages_expected']}) "
            f"| {t['well']} | {t['failed']} | {t['lost']} | {t['twice']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200, help="per measurement")
    parser.add_argument(
        "--stream-limit", type=float, help="messages/s of one stream leader (default: from the run)"
    )
    parser.add_argument("--probe-writes", type=int, default=30_000)
    args = parser.parse_args()
    cores = float(os.cpu_count() or 1)
    load_before = os.getloadavg()[0]
    with scripted_llm(chains_llm) as (llm_url, llm_pid):
        sides = {
            name: BusSide(name, ROOT, llm_url, IMAGE_SIDE, replicas=replicas)
            for name, replicas in CONFIGS.items()
        }
        try:
            for side in sides.values():
                side.start()
            medians, tallies = asyncio.run(_measure(sides, llm_pid, args.rounds, args.requests))
        finally:
            for side in sides.values():
                side.stop()
    print("probing what one stream leader takes", flush=True)
    probe = probe_stream_costs(args.probe_writes, PROBE_MESSAGE_BYTES)
    measured = measured_model(medians["single"], probe)
    mix, profiles, source = load_mix()
    assume = Assumptions(stream_messages_per_s=args.stream_limit)
    plans: list[Capacity] = [
        plan_capacity(rate, mix, measured, profiles, assume) for rate in TARGETS
    ]
    figures: dict[str, Any] = {
        "config": {
            "rounds": args.rounds,
            "requests_per_measurement": args.requests,
            "concurrency": CONCURRENCY,
            "chains": list(CHAINS),
            "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "load_average_1min": [load_before, os.getloadavg()[0]],  # at the start, at the end
            "replicas": CONFIGS,
        },
        "runs": {n: {str(t): row for t, row in by.items()} for n, by in medians.items()},
        "measured_per_request": asdict(measured),
        "assumptions": asdict(assume),
        "mix_source": source,
        "mix": mix,
        "profiles": {t: asdict(p) for t, p in profiles.items()},
        "targets": [asdict(p) for p in plans],
        "check": _check(medians, cores),
        "tallies": {n: t.figures(crashes=0) | {"errors": t.errors[:5]} for n, t in tallies.items()},
    }
    write_results(RESULTS, figures, default=str)
    table = markdown(figures)
    RESULTS.with_suffix(".md").write_text(table)
    print("\n" + table)
    print(f"wrote {RESULTS.relative_to(ROOT)} and {RESULTS.with_suffix('.md').relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
