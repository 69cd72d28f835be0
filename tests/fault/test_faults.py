"""Chorus keeps its promise when its parts die: SIGKILLed services, a restarted NATS server,
a lost node of a 3-node JetStream cluster. Every request is answered once and correctly, and
no service exits by itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fault.harness import Client, Fleet, NatsNodes, service_env
from tests.support import ScriptedLLM, canny_chain_llm

pytestmark = pytest.mark.fault


@pytest.fixture
def llm() -> Iterator[ScriptedLLM]:
    llm = canny_chain_llm()
    yield llm
    llm.stop()


def _under_fault(
    tmp_path: Path, llm: ScriptedLLM, size: int, fault: Callable[[NatsNodes, Fleet], None]
) -> tuple[dict[str, float | int], list[str]]:
    """Starts NATS (`size` nodes) and the services, asks 12 requests at concurrency 6 while
    `fault` runs once in-flight, and returns what the users saw and the errors they got."""
    replicas = 3 if size > 1 else 1
    nodes = NatsNodes(tmp_path / "nats", size)
    nodes.start()
    fleet = Fleet(nodes.url, service_env(llm, replicas), tmp_path / "logs")
    try:
        fleet.start()

        async def run() -> Client:
            client = Client(nodes.url, replicas)
            await client.open()
            asking = asyncio.create_task(client.ask_many(12, 6))
            await asyncio.sleep(0.5)
            await asyncio.to_thread(fault, nodes, fleet)
            await asyncio.wait_for(asking, 240)
            fleet.supervise()
            await client.count_twice()
            await client.close()
            return client

        client = asyncio.run(run())
        return client.tally.figures(len(fleet.crashes)), client.tally.errors
    finally:
        fleet.close()
        nodes.close()


def _kill_and_restart(name: str) -> Callable[[NatsNodes, Fleet], None]:
    def fault(nodes: NatsNodes, fleet: Fleet) -> None:
        fleet.kill(name)
        fleet.restart(name)

    return fault


ALL_WELL = {"well": 12, "failed": 0, "twice": 0, "lost": 0, "service_crashes": 0}


@pytest.mark.parametrize("service", ["planner", "selector", "executor", "responder"])
def test_a_service_killed_mid_request_loses_nothing(
    tmp_path: Path, llm: ScriptedLLM, service: str
) -> None:
    figures, errors = _under_fault(tmp_path, llm, 1, _kill_and_restart(f"{service}-0"))
    assert {k: figures[k] for k in ALL_WELL} == ALL_WELL, errors


def test_a_nats_restart_with_work_in_flight_loses_nothing(tmp_path: Path, llm: ScriptedLLM) -> None:
    def restart_nats(nodes: NatsNodes, fleet: Fleet) -> None:
        nodes.restart(0)

    figures, errors = _under_fault(tmp_path, llm, 1, restart_nats)
    assert {k: figures[k] for k in ALL_WELL} == ALL_WELL, errors


def test_a_cluster_node_killed_mid_run_loses_nothing(tmp_path: Path, llm: ScriptedLLM) -> None:
    def kill_a_node(nodes: NatsNodes, fleet: Fleet) -> None:
        nodes.kill(0)  # the node every client tried first
        time.sleep(3.0)
        nodes.restart(0)

    figures, errors = _under_fault(tmp_path, llm, 3, kill_a_node)
    assert {k: figures[k] for k in ALL_WELL} == ALL_WELL, errors
