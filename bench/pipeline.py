"""`make bench`: the pipeline over the bus against the same stage functions in one process.

A scripted LLM answers at once (both sides call it the same way, through `OpenAILLM`), with a
3-task chain of built-in canny operations. Two workloads: `canny` (a 128-px image: stage work
included) and `noop` (an 8-px image: the stage work is next to nothing, so what is left is
orchestration). Each reports p50/p99 at concurrency 1, requests/s at 8 and 32, CPU-ms per
request of each process and of the NATS server, JetStream traffic per request from the
server's own counters (`/varz`, `/jsz` on its monitoring port), and a span breakdown (one
traced run: every service exports OTLP to a receiver in this process).

With `--against DIR`, another checkout (the code before a change) runs as a second cluster
beside this one; the two are measured in alternating rounds, so both see the same machine.

    python -m bench.pipeline [--against /tmp/chorus-before] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

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

from bench.stats import p99, throughput, write_results
from services.cli.cluster import LocalCluster, free_port, nats_server_binary
from services.common.llm import OpenAILLM
from services.common.settings import Settings
from services.executor.execute import execute
from services.planner.plan import plan
from services.responder.respond import respond
from services.selector.catalog import Catalog
from services.selector.dag import ready_tasks, resolve_args
from services.selector.rank import RequestFacts, rank
from services.selector.select import decide
from tests.support import MemoryArtifacts, ScriptedLLM, canny_chain_llm, local_run, square_png

WORKLOADS = {"canny": 128, "noop": 8}  # the side of the square image the chain works on
LATENCY_REQUESTS = int(os.environ.get("BENCH_REQUESTS", "30"))  # per round, at concurrency 1
THROUGHPUT_REQUESTS = int(os.environ.get("BENCH_THROUGHPUT_REQUESTS", "96"))  # per level
CONCURRENCY = (8, 32)
TRACED_REQUESTS = 20
RESULTS = Path("bench/results/pipeline.json")

Run = Callable[[], Awaitable[None]]


def _request(photo: ArtifactRef) -> ChatRequest:
    message = ChatMessage(role="user", content="Edges of photo.png, three times", artifacts=[photo])
    request = ChatRequest(messages=[message])
    request.created_at.GetCurrentTime()
    return request


async def _latencies(run: Run, n: int) -> list[float]:
    latencies = []
    for _ in range(n):
        started = time.perf_counter()
        await run()
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def _percentiles(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "p50_ms": statistics.median(ordered),
        "p99_ms": p99(ordered),
    }


# --- the bus side: a cluster of processes, and what its server and processes spent ---------


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.loads(reply.read())  # type: ignore[no-any-return]


def _process_cpu_s(metrics_port: int) -> float:
    """`process_cpu_seconds_total` of a service, from its own metrics endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("process_cpu_seconds_total "):
                return float(line.split()[1])
    return 0.0


def pid_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class BusSide:
    """One tree's cluster: its own NATS server (with monitoring) and its four services."""

    name: str
    tree: Path
    llm_url: str
    image_side: int
    traced_to: str = ""  # an OTLP endpoint: every service exports its spans there
    replicas: dict[str, int] = field(default_factory=dict)  # as LocalCluster.replicas
    addr: str = field(default_factory=lambda: f"127.0.0.1:{free_port()}")
    _nats: Any = None
    _cluster: LocalCluster | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None
    monitor: str = ""

    def start(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="chorus-bench-")
        port, monitor = free_port(), free_port()
        listen = ["-a", "127.0.0.1", "-p", str(port), "-m", str(monitor)]
        self._nats = subprocess.Popen(
            [nats_server_binary(), "-js", *listen, "-sd", self._tmp.name],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.monitor = f"http://127.0.0.1:{monitor}"
        env = {
            "CHORUS_LLM_BASE_URL": self.llm_url,
            "CHORUS_EXECUTOR_DEFAULTS": "0",
            "CHORUS_EXECUTOR_CAPACITY": "4",
            "CHORUS_LOG_LEVEL": "WARNING",
            # One anonymous caller sends every request, at whatever concurrency a bench asks
            # for (this one's, bench.capacity's): admission is not what is measured.
            "CHORUS_MAX_REQUESTS": "1024",
            "CHORUS_MAX_REQUESTS_PER_KEY": "1024",
        }
        if self.traced_to:
            env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": self.traced_to, "OTEL_BSP_SCHEDULE_DELAY": "200"}
        self._cluster = LocalCluster(
            nats_url=f"nats://127.0.0.1:{port}",
            grpc_addr=self.addr,
            executor_models=["canny-control=builtin:canny"],
            env=env,
            replicas=self.replicas,
        )
        here = Path.cwd()
        os.chdir(self.tree)  # the services run this tree's code: `python -m` looks in the cwd
        try:
            _wait_for(lambda: get_json(f"{self.monitor}/healthz") is not None)
            self._cluster.start()
        finally:
            os.chdir(here)

    @property
    def nats_url(self) -> str:
        assert self._cluster is not None
        return str(self._cluster.nats_url)

    def stop(self) -> None:
        if self._cluster is not None:
            self._cluster.stop()
        if self._nats is not None:
            self._nats.terminate()
            self._nats.wait(10)
        if self._tmp is not None:
            self._tmp.cleanup()

    def counters(self) -> dict[str, float]:
        """Cumulative CPU seconds of each service (all its processes) and the server's message
        counters."""
        assert self._cluster is not None
        cpu: dict[str, float] = defaultdict(float)
        for name, service in self._cluster.processes.items():
            cpu[service] += _process_cpu_s(self._cluster.metrics_ports[name])
        cpu["nats"] = pid_cpu_s(self._nats.pid)
        varz, jsz = get_json(f"{self.monitor}/varz"), get_json(f"{self.monitor}/jsz")
        return {
            **{f"cpu_{n}": s for n, s in cpu.items()},
            "messages_in": varz["in_msgs"],
            "messages_out": varz["out_msgs"],
            "bytes_in": varz["in_bytes"],
            "bytes_out": varz["out_bytes"],
            "jetstream_api_calls": jsz.get("api", {}).get("total", 0),
            "consumers": jsz.get("consumers", 0),
        }

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[Run]:
        async with grpc.aio.insecure_channel(self.addr) as channel:
            stub = chorus_pb2_grpc.ChorusStub(channel)

            async def chunks() -> AsyncIterator[ArtifactChunk]:
                data = square_png(self.image_side)
                yield ArtifactChunk(name="photo.png", media_type="image/png", data=data)

            photo = await stub.UploadArtifact(chunks())

            async def run() -> None:
                response = await stub.Chat(_request(photo))
                assert [r.status for r in response.results] == [
                    TaskStatus.TASK_STATUS_SUCCEEDED
                ] * 3

            yield run


def _wait_for(ready: Callable[[], object], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if ready():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("not ready in time")
        time.sleep(0.1)


async def _bus_round(side: BusSide, run: Run, row: dict[str, Any]) -> None:
    """One round: latencies at concurrency 1, then throughput at each level with the costs."""
    row.setdefault("latencies_ms", []).extend(await _latencies(run, LATENCY_REQUESTS))
    for level in CONCURRENCY:
        before = await asyncio.to_thread(side.counters)
        rate = await throughput(run, level, THROUGHPUT_REQUESTS)
        after = await asyncio.to_thread(side.counters)
        row.setdefault(f"rps_at_{level}", []).append(rate)
        for key in after:
            if key != "consumers":
                per_request = (after[key] - before[key]) / THROUGHPUT_REQUESTS
                scale = 1000.0 if key.startswith("cpu_") else 1.0  # CPU in ms
                row.setdefault(f"per_request_{key}", []).append(per_request * scale)
        row.setdefault("consumers_after", []).append(after["consumers"])


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = _percentiles(row.pop("latencies_ms"))
    for key, values in row.items():
        summary[key] = statistics.median(values)
    cpu = {k.removeprefix("per_request_cpu_"): v for k, v in summary.items() if "_cpu_" in k}
    summary["cpu_ms_per_request"] = cpu
    summary["cpu_ms_per_request_total"] = sum(cpu.values())
    return {k: v for k, v in summary.items() if "_cpu_" not in k}


async def _bus_sides(sides: list[BusSide], rounds: int) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {s.name: {} for s in sides}
    async with contextlib.AsyncExitStack() as stack:
        runs = [await stack.enter_async_context(s.client()) for s in sides]
        for run in runs:
            await run()  # warm-up
        for r in range(rounds):  # alternate which tree goes first
            order = list(zip(sides, runs, strict=True))
            for side, run in order if r % 2 == 0 else order[::-1]:
                await _bus_round(side, run, rows[side.name])
    return {name: _summary(row) for name, row in rows.items()}


# --- the span breakdown: an OTLP/HTTP receiver in this process -----------------------------


class SpanReceiver:
    """Takes the OTLP exports of every service (`/v1/traces`, protobuf) and keeps the spans."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
                    ExportTraceServiceRequest,
                )

                body = self.rfile.read(int(self.headers["Content-Length"]))
                export = ExportTraceServiceRequest.FromString(body)
                for resource in export.resource_spans:
                    for scope in resource.scope_spans:
                        receiver.spans.extend(scope.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()


def span_breakdown(spans: list[Any]) -> dict[str, dict[str, float]]:
    """Median time per request of each kind of span, and of each bus hop (from the start of a
    publish to the start of its handling): what a request's time is made of."""
    by_id = {s.span_id: s for s in spans}
    per_trace: dict[bytes, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for s in spans:
        ms = (s.end_time_unix_nano - s.start_time_unix_nano) / 1e6
        per_trace[s.trace_id][s.name] += ms
        parent = by_id.get(s.parent_span_id)
        if s.name.endswith(" handle") and parent is not None:
            hop = (s.start_time_unix_nano - parent.start_time_unix_nano) / 1e6
            per_trace[s.trace_id][f"hop to {s.name.removesuffix(' handle')}"] += hop
    requests = [t for t in per_trace.values() if "chorus request" in t]
    names = sorted({n for t in requests for n in t})
    return {
        n: {
            "median_ms_per_request": statistics.median(t.get(n, 0.0) for t in requests),
            "requests": float(len(requests)),
        }
        for n in names
    }


async def _traced(side: BusSide) -> None:
    async with side.client() as run:
        await _latencies(run, TRACED_REQUESTS)


def _breakdowns(sides: list[BusSide]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for side in sides:
        receiver = SpanReceiver()
        side.traced_to = receiver.endpoint
        side.start()
        try:
            asyncio.run(_traced(side))
        finally:
            side.stop()  # each service sends its queued spans on the way out
            receiver.stop()
        out[side.name] = span_breakdown(receiver.spans)
    return out


# --- the in-process side: the same stage functions, called directly ------------------------


async def _in_process_side(llm_url: str, image_side: int, rounds: int) -> dict[str, Any]:
    # As the services build theirs: the same settings (retries included) from the same variable.
    llm = OpenAILLM(Settings.from_env({"CHORUS_LLM_BASE_URL": llm_url}).llm)
    store = MemoryArtifacts()
    photo = await store.put(square_png(image_side), "photo.png")
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

    await run()
    row: dict[str, Any] = {}
    for _ in range(rounds):
        row.setdefault("latencies_ms", []).extend(await _latencies(run, LATENCY_REQUESTS))
        for level in CONCURRENCY:
            cpu = time.process_time()
            row.setdefault(f"rps_at_{level}", []).append(
                await throughput(run, level, THROUGHPUT_REQUESTS)
            )
            per_request = (time.process_time() - cpu) / THROUGHPUT_REQUESTS * 1000
            row.setdefault("per_request_cpu_bench", []).append(per_request)
    await llm.close()
    return _summary(row)


# --- the run ---------------------------------------------------------------------------------


def _workload(name: str, llm_url: str, trees: dict[str, Path], rounds: int) -> dict[str, Any]:
    side = WORKLOADS[name]
    print(f"\n== {name}: 3-task canny chain on a {side}-px image, {rounds} round(s)", flush=True)
    sides = [BusSide(tree_name, tree, llm_url, side) for tree_name, tree in trees.items()]
    try:
        for s in sides:
            s.start()
        bus = asyncio.run(_bus_sides(sides, rounds))
    finally:
        for s in sides:
            s.stop()
    direct = asyncio.run(_in_process_side(llm_url, side, rounds))
    result: dict[str, Any] = {"in_process": direct}
    for tree_name, figures in bus.items():
        figures["overhead_p50_ms"] = figures["p50_ms"] - direct["p50_ms"]
        result[f"bus_{tree_name}"] = figures
    result["span_breakdown"] = _breakdowns(
        [BusSide(tree_name, tree, llm_url, side) for tree_name, tree in trees.items()]
    )
    if "before" in bus:
        result["ratios_this_over_before"] = {
            key: bus["this"][key] / bus["before"][key]
            for key in ("p50_ms", "p99_ms", "rps_at_8", "rps_at_32", "cpu_ms_per_request_total")
            if bus["before"].get(key)
        }
    _print(name, result)
    return result


def _print(name: str, result: dict[str, Any]) -> None:
    print(f"{'':22}{'p50 ms':>8}{'p99 ms':>8}{'rps@8':>8}{'rps@32':>8}{'CPU ms':>8}{'JS api':>8}")
    for side, f in result.items():
        if side in ("span_breakdown", "ratios_this_over_before"):
            continue
        print(
            f"{name + ' ' + side:22}{f['p50_ms']:8.1f}{f['p99_ms']:8.1f}{f['rps_at_8']:8.1f}"
            f"{f['rps_at_32']:8.1f}{f['cpu_ms_per_request_total']:8.1f}"
            f"{f.get('per_request_jetstream_api_calls', 0.0):8.1f}"
        )
    for tree, breakdown in result["span_breakdown"].items():
        print(f"  spans ({tree}), median ms per request:")
        for span, figures in sorted(
            breakdown.items(), key=lambda kv: -kv[1]["median_ms_per_request"]
        ):
            print(f"    {span:40}{figures['median_ms_per_request']:8.2f}")
    if ratios := result.get("ratios_this_over_before"):
        print("  this / before: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))


def _serve_llm(urls: multiprocessing.Queue[str], make: Callable[[], ScriptedLLM]) -> None:
    urls.put(make().base_url)
    threading.Event().wait()  # until terminated


@contextlib.contextmanager
def scripted_llm(
    make: Callable[[], ScriptedLLM] = canny_chain_llm,
) -> Iterator[tuple[str, int]]:
    """A started scripted LLM in a process of its own: its URL and process id. The in-process
    side's stages must not share an interpreter (and its lock) with the server they call, as
    the bus side's do not."""
    context = multiprocessing.get_context("fork")
    urls: multiprocessing.Queue[str] = context.Queue()
    server = context.Process(target=_serve_llm, args=(urls, make), daemon=True)
    server.start()
    try:
        assert server.pid is not None
        yield urls.get(timeout=30), server.pid
    finally:
        server.terminate()
        server.join(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", type=Path, help="another checkout, run side by side")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), action="append")
    args = parser.parse_args()
    trees = {"this": Path.cwd()}
    if args.against:
        trees["before"] = args.against.resolve()
    figures: dict[str, Any] = {
        "config": {
            "latency_requests_per_round": LATENCY_REQUESTS,
            "throughput_requests": THROUGHPUT_REQUESTS,
            "concurrency": list(CONCURRENCY),
            "rounds": args.rounds,
            "cpus": os.cpu_count(),
            "trees": {k: str(v) for k, v in trees.items()},
        }
    }
    with scripted_llm() as (llm_url, _):
        for name in args.workload or sorted(WORKLOADS):
            figures[name] = _workload(name, llm_url, trees, args.rounds)
    write_results(RESULTS, figures)
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
