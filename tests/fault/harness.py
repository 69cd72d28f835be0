"""Chorus as real processes on loopback, with the means to break it: the fault tests' and
`make chaos`'s shared harness.

- `NatsNodes`: one `nats-server` (from the wheel), or a 3-node JetStream cluster, each node
  killable with SIGKILL and restartable on its port and store.
- `Fleet`: the services as processes (two selectors, two executors), each killable and
  restartable; one that exits on its own is a crash: counted, then restarted, as a
  supervisor (Kubernetes) would.
- `Client`: asks over the public bus (`chorus.request`), waits for `chorus.response.<id>`,
  and counts what a user would: answered well, answered with a failure, twice, lost.

Everything binds 127.0.0.1, every wait is bounded, and `close` stops what was started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import nats
from chorus.v1.messages_pb2 import (
    ArtifactRef,
    ChatMessage,
    ChatRequest,
    ChatResponse,
    TaskStatus,
)
from nats.aio.client import Client as NATS

from bench.stats import p99
from services.cli.cluster import free_port, nats_server_binary, service_ready
from services.common import bus, subjects
from services.common.artifacts import ArtifactStore
from services.common.outage import retrying
from tests.support import CANNY_CHAIN_ANSWER, ScriptedLLM, square_png

FLEET = {"planner": 1, "selector": 2, "executor": 2, "responder": 1}


@dataclass
class _Node:
    name: str
    port: int
    store: Path
    cluster_port: int | None = None
    routes: list[int] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, log: Path) -> None:
        command = [nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", str(self.port)]
        command += ["-sd", str(self.store), "-n", self.name]
        if self.cluster_port is not None:
            routes = ",".join(f"nats-route://127.0.0.1:{p}" for p in self.routes)
            command += ["--cluster_name", "chorus", "--cluster"]
            command += [f"nats://127.0.0.1:{self.cluster_port}", "--routes", routes]
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class NatsNodes:
    """One NATS server (`size=1`) or a JetStream cluster of `size` nodes on loopback."""

    def __init__(self, root: Path, size: int = 1) -> None:
        self.root = root
        ports = [free_port() for _ in range(size)]
        cluster = [free_port() for _ in range(size)] if size > 1 else [None] * size
        self.nodes = [
            _Node(
                f"n{i}",
                ports[i],
                root / f"n{i}",
                cluster[i],
                [p for j, p in enumerate(cluster) if j != i and p is not None],
            )
            for i in range(size)
        ]

    @property
    def url(self) -> str:
        """What the services are given: every node, so a client can start on any."""
        return ",".join(n.url for n in self.nodes)

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for node in self.nodes:
            node.start(self.root / f"{node.name}.log")
        asyncio.run(self._until_jetstream(90.0))

    def kill(self, index: int) -> None:
        self.nodes[index].kill()

    def restart(self, index: int) -> None:
        node = self.nodes[index]
        node.kill()
        node.start(self.root / f"{node.name}.log")

    def close(self) -> None:
        for node in self.nodes:
            node.kill()

    async def _until_jetstream(self, timeout_s: float) -> None:
        """Until JetStream answers (in a cluster: a meta leader is elected)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                nc = await nats.connect(
                    self.url.split(","),
                    connect_timeout=1,
                    max_reconnect_attempts=0,
                    error_cb=_ignore,
                )
                try:
                    await nc.jetstream().account_info()
                    return
                finally:
                    await nc.close()
            await asyncio.sleep(0.5)
        raise RuntimeError(f"JetStream did not come up within {timeout_s:.0f} s")


class Fleet:
    """The Chorus services as processes: killable, restartable, crash-counted."""

    def __init__(self, nats_url: str, env: dict[str, str], log_dir: Path) -> None:
        self._url = nats_url
        self._env = env
        self._log_dir = log_dir
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._ports: dict[str, int] = {}
        self._killed: set[str] = set()
        self.crashes: list[str] = []

    @property
    def names(self) -> list[str]:
        return sorted(self._procs)

    def start(self, timeout_s: float = 180.0) -> None:
        self._log_dir.mkdir(parents=True, exist_ok=True)
        for service, count in FLEET.items():
            for i in range(count):
                self._start(f"{service}-{i}")
        self.until_ready(list(self._procs), timeout_s)

    def kill(self, name: str) -> None:
        """SIGKILL: no drain, nothing acked, as a node failure or the OOM killer would."""
        self._killed.add(name)
        proc = self._procs[name]
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)

    def restart(self, name: str) -> None:
        self._killed.discard(name)
        self._start(name)

    def supervise(self) -> None:
        """Counts a service that exited by itself as a crash, and starts it again."""
        for name, proc in list(self._procs.items()):
            if name not in self._killed and proc.poll() is not None:
                self.crashes.append(f"{name} (exit {proc.returncode})")
                self._start(name)

    def until_ready(self, names: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        pending = set(names)
        while pending and time.monotonic() < deadline:
            pending = {n for n in pending if not service_ready(self._ports[n])}
            time.sleep(0.2)
        if pending:
            raise RuntimeError(f"not ready after {timeout_s:.0f} s: {sorted(pending)}")

    def close(self) -> None:
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self._procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _start(self, name: str) -> None:
        service = name.rsplit("-", 1)[0]
        port = self._ports.setdefault(name, free_port())
        env = {
            **os.environ,
            **self._env,
            "CHORUS_NATS_URL": self._url,
            "CHORUS_METRICS_PORT": str(port),
            "CHORUS_GRPC_ADDR": f"127.0.0.1:{free_port()}",
        }
        with open(self._log_dir / f"{name}.log", "ab") as out:
            self._procs[name] = subprocess.Popen(
                [sys.executable, "-m", f"services.{service}"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )


def service_env(llm: ScriptedLLM, stream_replicas: int = 1) -> dict[str, str]:
    return {
        "CHORUS_LLM_BASE_URL": llm.base_url,
        "CHORUS_EXECUTOR_DEFAULTS": "0",
        "CHORUS_EXECUTOR_MODELS": "canny-control=builtin:canny",
        "CHORUS_EXECUTOR_CAPACITY": "4",
        "CHORUS_WORKER_TTL": "3",
        "CHORUS_TASK_DEADLINE": "20",
        "CHORUS_STREAM_REPLICAS": str(stream_replicas),
        "CHORUS_LOG_LEVEL": "WARNING",
        "HF_HUB_OFFLINE": "1",
    }


async def _ignore(error: Exception) -> None:
    """A node not up yet is what the wait is for: no traceback."""


@dataclass
class Tally:
    """What the users saw."""

    well: int = 0
    failed: int = 0
    twice: int = 0
    lost: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def figures(self, crashes: int) -> dict[str, float | int]:
        ordered = sorted(self.latencies) or [0.0]
        return {
            "well": self.well,
            "failed": self.failed,
            "twice": self.twice,
            "lost": self.lost,
            "service_crashes": crashes,
            "median_s": round(statistics.median(ordered), 3),
            "p99_s": round(p99(ordered), 3),
        }


class Client:
    """Asks over the public bus and judges each answer: the 3-task chain, all succeeded."""

    def __init__(self, nats_url: str, replicas: int = 1, answer_timeout_s: float = 120.0) -> None:
        self._url = nats_url
        self._replicas = replicas
        self._timeout_s = answer_timeout_s
        self._nc: NATS | None = None
        self._photo: ArtifactRef | None = None
        self.tally = Tally()
        self.request_ids: list[str] = []

    async def open(self) -> None:
        self._nc = await bus.connect(self._url, "chorus-fault-client")
        js = self._nc.jetstream()
        await bus.ensure_streams(js, self._replicas)
        store = await ArtifactStore.open(js, self._replicas)
        self._photo = await store.put(square_png(64), "photo.png")

    async def close(self) -> None:
        if self._nc is not None:
            await self._nc.close()

    async def ask_many(self, count: int, concurrency: int) -> None:
        slots = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with slots:
                await self.ask()

        await asyncio.gather(*(one() for _ in range(count)))

    async def ask(self) -> None:
        assert self._nc is not None and self._photo is not None
        js = self._nc.jetstream()
        message = ChatMessage(
            role="user", content="Edges of photo.png, three times", artifacts=[self._photo]
        )
        request = ChatRequest(request_id=uuid.uuid4().hex, messages=[message])
        request.created_at.GetCurrentTime()
        self.request_ids.append(request.request_id)
        started = time.monotonic()
        try:
            await bus.publish(js, subjects.REQUEST, request, msg_id=request.request_id)
        except Exception as e:
            self.tally.failed += 1
            self.tally.errors.append(f"could not send: {e!r}")
            return
        response = await self._await_response(request.request_id)
        if response is None:
            self.tally.lost += 1
            return
        self.tally.latencies.append(time.monotonic() - started)
        statuses = [r.status for r in response.results]
        if response.error.code or statuses != [TaskStatus.TASK_STATUS_SUCCEEDED] * 3:
            self.tally.failed += 1
            errors = [r.error for r in response.results if r.error]
            self.tally.errors.append(f"{response.error.message or errors}")
        elif response.answer != CANNY_CHAIN_ANSWER:
            self.tally.failed += 1
            self.tally.errors.append(f"wrong answer {response.answer!r}")
        else:
            self.tally.well += 1

    async def _await_response(self, request_id: str) -> ChatResponse | None:
        """Polls the events stream for the request's response: a direct read, which needs
        no subscription to survive a NATS restart."""
        assert self._nc is not None
        js = self._nc.jetstream()
        deadline = time.monotonic() + self._timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                msg = await js.get_last_msg(subjects.EVENTS_STREAM, subjects.response(request_id))
                return ChatResponse.FromString(msg.data or b"")
            await asyncio.sleep(0.25)
        return None

    async def count_twice(self) -> None:
        """Requests whose response was published more than once (the stream keeps them all)."""
        assert self._nc is not None
        js = self._nc.jetstream()
        info = await retrying(
            "count responses",
            lambda: js.stream_info(subjects.EVENTS_STREAM, subjects_filter="chorus.response.>"),
        )
        counts = info.state.subjects or {}
        self.tally.twice = sum(1 for n in counts.values() if n > 1)
