"""`make chaos`: requests at a fixed concurrency while Chorus's parts are killed.

Three runs, each on a fresh NATS and fresh services (two selectors, two executors, a planner,
a responder, as processes; a scripted LLM plans every request as a 3-task chain of built-in
canny operations):

- services: a random service SIGKILLed every 3 s and started again a second later;
- nats:     the single NATS server SIGKILLed and started again every 6 s;
- cluster:  a 3-node JetStream cluster (streams at 3 replicas), a random node killed every
            5 s and back 3 s later.

Counted as a user would: answered well, answered with a failure, answered twice, lost (no
answer within two minutes), and services that exited by themselves (each is started again,
as Kubernetes would). Median and p99 latency of the answered requests. Writes
bench/results/chaos.json. `CHAOS_RUNS=services,nats` picks runs; `CHAOS_REQUESTS=50` and
`CHAOS_CONCURRENCY` scale them.
"""

from __future__ import annotations

import asyncio
import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.stats import write_results
from tests.fault.harness import Client, Fleet, NatsNodes, service_env
from tests.support import canny_chain_llm

RESULTS = Path("bench/results/chaos.json")
CONCURRENCY = int(os.environ.get("CHAOS_CONCURRENCY", "16"))
Fault = Callable[[NatsNodes, Fleet, random.Random], str]


def _kill_a_service(nodes: NatsNodes, fleet: Fleet, rng: random.Random) -> str:
    name = rng.choice(fleet.names)
    fleet.kill(name)
    time.sleep(1.0)
    fleet.restart(name)
    return name


def _restart_nats(nodes: NatsNodes, fleet: Fleet, rng: random.Random) -> str:
    nodes.restart(0)
    return "nats"


def _kill_a_node(nodes: NatsNodes, fleet: Fleet, rng: random.Random) -> str:
    index = rng.randrange(len(nodes.nodes))
    nodes.kill(index)
    time.sleep(3.0)
    nodes.restart(index)
    return f"node {index}"


@dataclass(frozen=True)
class Run:
    name: str
    requests: int
    nodes: int
    every_s: float
    fault: Fault


RUNS = [
    Run("services", 300, 1, 3.0, _kill_a_service),
    Run("nats", 200, 1, 6.0, _restart_nats),
    Run("cluster", 200, 3, 5.0, _kill_a_node),
]


def _chaos(run: Run, root: Path, seed: int) -> dict[str, object]:
    requests = int(os.environ.get("CHAOS_REQUESTS", run.requests))
    replicas = 3 if run.nodes > 1 else 1
    llm = canny_chain_llm()
    nodes = NatsNodes(root / "nats", run.nodes)
    fleet = Fleet(nodes.url, service_env(llm, replicas), root / "logs")
    rng = random.Random(seed)
    faults: list[str] = []
    try:
        nodes.start()
        fleet.start()

        async def drive() -> Client:
            client = Client(nodes.url, replicas)
            await client.open()
            asking = asyncio.create_task(client.ask_many(requests, CONCURRENCY))
            while not asking.done():
                await asyncio.wait({asking}, timeout=run.every_s)
                fleet.supervise()
                if not asking.done():
                    faults.append(await asyncio.to_thread(run.fault, nodes, fleet, rng))
            fleet.supervise()
            await client.count_twice()
            await client.close()
            return client

        started = time.monotonic()
        client = asyncio.run(drive())
        elapsed = time.monotonic() - started
    finally:
        fleet.close()
        nodes.close()
        llm.stop()
    figures = client.tally.figures(len(fleet.crashes))
    return {
        **figures,
        "requests": requests,
        "concurrency": CONCURRENCY,
        "faults": len(faults),
        "fault_every_s": run.every_s,
        "seconds": round(elapsed, 1),
        "crashed": fleet.crashes,
        "errors": sorted(set(client.tally.errors))[:10],
    }


def main() -> int:
    chosen = os.environ.get("CHAOS_RUNS", ",".join(r.name for r in RUNS)).split(",")
    results: dict[str, object] = {"cpus": os.cpu_count()}
    header = f"{'run':10}{'well':>6}{'failed':>8}{'twice':>7}{'lost':>6}{'crashes':>9}"
    print(header + f"{'median s':>10}{'p99 s':>8}{'faults':>8}", flush=True)
    for seed, run in enumerate(r for r in RUNS if r.name in chosen):
        with tempfile.TemporaryDirectory(prefix=f"chorus-chaos-{run.name}-") as tmp:
            row = _chaos(run, Path(tmp), seed)
        results[run.name] = row
        print(
            f"{run.name:10}{row['well']:>6}{row['failed']:>8}{row['twice']:>7}{row['lost']:>6}"
            f"{row['service_crashes']:>9}{row['median_s']:>10}{row['p99_s']:>8}{row['faults']:>8}",
            flush=True,
        )
        write_results(RESULTS, results)
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
