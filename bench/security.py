"""`make bench`: what the front door's defences cost, and how the rules planner scales.

- Per-call latency of gRPC `ListModels` and HTTP `GET /v1/models` through a gateway with API
  keys and one without, both running in this process on one NATS server; rounds alternate which
  goes first, and the figure is the median per-call time of each, side by side.
- The API-key check alone (`Gate.owner`, hash and constant-time compare over 100 keys).
- The rules planner on one long word (the request that froze the front door), by length.
- The gateway's peak memory (VmHWM) over three concurrent 60 MiB gRPC uploads, in its own
  process: uploads are spooled to disk, not held whole; and over three concurrent downloads
  of them, in another: downloads are streamed from the store part by part.
"""

from __future__ import annotations

import asyncio
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import grpc
import httpx
from chorus.v1 import chorus_pb2_grpc
from chorus.v1.chorus_pb2 import ArtifactChunk, DownloadArtifactRequest, ListModelsRequest
from chorus.v1.messages_pb2 import ArtifactRef

from bench.stats import write_results
from services.cli.cluster import free_port, start_nats_server
from services.common.runtime import serve
from services.common.settings import Settings
from services.gateway.auth import Gate
from services.gateway.keys import ApiKeys, add_key
from services.gateway.service import build as build_gateway
from services.planner.rules import plan_by_rules

ROUNDS = int(os.environ.get("BENCH_SECURITY_ROUNDS", "10"))
CALLS = int(os.environ.get("BENCH_SECURITY_CALLS", "50"))
RESULTS = Path("bench/results/security.json")
UPLOAD_MIB = 60


@asynccontextmanager
async def _gateway(nats_url: str, keys_file: Path | None) -> AsyncIterator[tuple[str, str]]:
    grpc_addr, http_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = {"CHORUS_NATS_URL": nats_url, "CHORUS_GRPC_ADDR": grpc_addr}
    env["CHORUS_OPENAI_ADDR"] = http_addr
    if keys_file is not None:
        env["CHORUS_API_KEYS"] = str(keys_file)
    stop = asyncio.Event()
    task = asyncio.create_task(serve("gateway", Settings.from_env(env), build_gateway, stop))
    await asyncio.sleep(1.0)
    try:
        yield grpc_addr, http_addr
    finally:
        stop.set()
        await task


async def _per_call(call: Callable[[], Awaitable[object]]) -> list[float]:
    times = []
    for _ in range(CALLS):
        started = time.perf_counter()
        await call()
        times.append(time.perf_counter() - started)
    return times


async def _door_overhead(tmp: Path) -> dict[str, float]:
    keys_file = tmp / "keys"
    for n in range(99):
        add_key(keys_file, f"other-{n}")
    token = add_key(keys_file, "bench")
    bearer = f"Bearer {token}"
    proc, nats_url = start_nats_server(tmp / "nats")
    try:
        async with (
            _gateway(nats_url, None) as (open_grpc, open_http),
            _gateway(nats_url, keys_file) as (keyed_grpc, keyed_http),
            grpc.aio.insecure_channel(open_grpc) as open_channel,
            grpc.aio.insecure_channel(keyed_grpc) as keyed_channel,
            httpx.AsyncClient() as http,
        ):
            open_stub = chorus_pb2_grpc.ChorusStub(open_channel)
            keyed_stub = chorus_pb2_grpc.ChorusStub(keyed_channel)
            metadata = (("authorization", bearer),)
            calls: dict[str, Callable[[], Awaitable[object]]] = {
                "grpc_no_keys": lambda: open_stub.ListModels(ListModelsRequest()),
                "grpc_keys": lambda: keyed_stub.ListModels(ListModelsRequest(), metadata=metadata),
                "http_no_keys": lambda: http.get(f"http://{open_http}/v1/models"),
                "http_keys": lambda: http.get(
                    f"http://{keyed_http}/v1/models", headers={"Authorization": bearer}
                ),
            }
            times: dict[str, list[float]] = {name: [] for name in calls}
            for round_ in range(ROUNDS):
                order = list(calls) if round_ % 2 == 0 else list(reversed(calls))
                for name in order:
                    times[name] += await _per_call(calls[name])
    finally:
        proc.terminate()
        proc.wait(10)
    return {f"{name}_median_ms": statistics.median(t) * 1000 for name, t in times.items()}


def _key_check_us(keys_file: Path) -> float:
    token = add_key(keys_file, "check")
    gate = Gate(ApiKeys(keys_file))
    headers = {"authorization": f"Bearer {token}"}.get
    runs = timeit.repeat(lambda: gate.owner(headers, "grpc"), number=1000, repeat=7)
    return statistics.median(runs) / 1000 * 1e6


def _rules_planner_s() -> dict[str, float]:
    figures = {}
    for chars in (10_000, 20_000, 40_000, 50_000):
        runs = timeit.repeat(functools.partial(plan_by_rules, "a" * chars, {}), number=1, repeat=5)
        figures[f"rules_one_word_{chars // 1000}k_median_s"] = statistics.median(runs)
    return figures


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc")


async def _upload(stub: chorus_pb2_grpc.ChorusStub, n: int) -> ArtifactRef:
    async def chunks() -> AsyncIterator[ArtifactChunk]:
        yield ArtifactChunk(name=f"big-{n}.bin", media_type="application/octet-stream")
        block = os.urandom(1024 * 1024)
        for _ in range(UPLOAD_MIB):
            yield ArtifactChunk(data=block)

    ref: ArtifactRef = await stub.UploadArtifact(chunks())
    return ref


async def _download(stub: chorus_pb2_grpc.ChorusStub, artifact_id: str) -> int:
    size = 0
    async for chunk in stub.DownloadArtifact(DownloadArtifactRequest(id=artifact_id)):
        size += len(chunk.data)
    return size


async def _three(
    addr: str, pid: int, work: Callable[..., Awaitable[object]], *args: object
) -> tuple[float, float, list[Any]]:
    """The gateway's peak memory before and after three of `work` at once, and their results."""
    async with grpc.aio.insecure_channel(addr) as channel:
        await channel.channel_ready()
        idle = _peak_rss_mib(pid)
        stub = chorus_pb2_grpc.ChorusStub(channel)
        done = await asyncio.gather(*(work(stub, arg) for arg in args))
    return idle, _peak_rss_mib(pid), list(done)


@contextmanager
def _gateway_process(nats_url: str) -> Iterator[tuple[str, int]]:
    addr = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "CHORUS_NATS_URL": nats_url, "CHORUS_GRPC_ADDR": addr}
    gateway = subprocess.Popen(
        [sys.executable, "-m", "services.gateway"], env=env, stderr=subprocess.DEVNULL
    )
    try:
        yield addr, gateway.pid
    finally:
        gateway.terminate()
        gateway.wait(30)


def _transfer_memory(tmp: Path) -> dict[str, float]:
    """Three 60 MiB uploads through one gateway process, then three downloads of them through
    a fresh one (peak memory never falls, so each is measured in a process of its own)."""
    proc, nats_url = start_nats_server(tmp / "nats-uploads")
    try:
        with _gateway_process(nats_url) as (addr, pid):
            idle, peak, refs = asyncio.run(_three(addr, pid, _upload, 0, 1, 2))
        with _gateway_process(nats_url) as (addr, pid):
            ids = [ref.id for ref in refs]
            down_idle, down_peak, sizes = asyncio.run(_three(addr, pid, _download, *ids))
        assert sizes == [UPLOAD_MIB * 1024 * 1024] * 3
    finally:
        proc.terminate()
        proc.wait(10)
    return {
        "gateway_peak_rss_mib_idle": idle,
        "gateway_peak_rss_mib_3_uploads": peak,
        "gateway_peak_rss_mib_idle_before_downloads": down_idle,
        "gateway_peak_rss_mib_3_downloads": down_peak,
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        figures = asyncio.run(_door_overhead(Path(tmp)))
        figures["key_check_median_us"] = _key_check_us(Path(tmp) / "keys")
        figures |= _transfer_memory(Path(tmp))
    figures |= _rules_planner_s()
    for kind in ("grpc", "http"):
        figures[f"{kind}_keys_overhead_ratio"] = (
            figures[f"{kind}_keys_median_ms"] / figures[f"{kind}_no_keys_median_ms"]
        )
    write_results(RESULTS, figures)
    for name, value in figures.items():
        print(f"{name}: {value:.4g}")


if __name__ == "__main__":
    main()
