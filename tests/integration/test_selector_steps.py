"""What a selector step costs on the real bus: the request's language is worked out once, and a
step that finds another replica moved the run on is counted."""

from __future__ import annotations

from collections.abc import AsyncIterator

import nats
import pytest
from chorus.v1.messages_pb2 import Task, TaskOutput, TaskPlan, TaskResult, TaskStatus
from chorus.v1.workers_pb2 import ServedModel, WorkerInfo
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from prometheus_client import REGISTRY

from services.common import bus
from services.common.settings import Settings
from services.common.workers import WorkerAnnouncer, WorkerRegistry
from services.selector import rank
from services.selector.catalog import Catalog
from services.selector.config import SelectorConfig
from services.selector.service import Selector, open_runs
from tests.echo_replica import EchoReplica
from tests.integration.stack import running_stack
from tests.integration.test_selector_bus import _plan, _run_plan, _text_task

Replicas = tuple[Selector, Selector, KeyValue]  # two selectors and the run bucket they share


def _conflicts(how: str) -> float:
    value = REGISTRY.get_sample_value("chorus_selector_state_conflicts_total", {"how": how})
    return value or 0


def _chain(length: int) -> list[Task]:
    return [_text_task(i, "summarization", deps=(i - 1,) if i else ()) for i in range(length)]


def _succeeded(plan: TaskPlan, task_id: int) -> TaskResult:
    return TaskResult(
        request_id=plan.request_id,
        task_id=task_id,
        task="summarization",
        model="m",
        status=TaskStatus.TASK_STATUS_SUCCEEDED,
        outputs=[TaskOutput(text=f"summary {task_id}")],
    )


async def test_the_language_of_a_request_is_detected_once(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fastText once per request, not at every step that ranks candidates."""
    detected: list[str] = []
    guess = rank.guess_language

    def counted(text: str) -> str:
        detected.append(text)
        return guess(text)

    monkeypatch.setattr(rank, "guess_language", counted)
    async with running_stack(nats_url, services=("selector", "responder")):
        echo = await EchoReplica(nats_url, [("summarization", "m")]).start()
        response = await _run_plan(nats_url, _plan("summarise this text", *_chain(3)))
        await echo.stop()
    assert [r.status for r in response.results] == [TaskStatus.TASK_STATUS_SUCCEEDED] * 3
    assert detected == ["summarise this text"]


@pytest.fixture
async def two_selectors(nats_url: str) -> AsyncIterator[Replicas]:
    """Two replicas on one run bucket, driven by hand so that each event goes where the test
    says; a live replica of `summarization` is announced, and none consumes its work."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await bus.ensure_streams(js)
    worker = WorkerInfo(
        worker_id="w", capacity=1, models=[ServedModel(task="summarization", model="m")]
    )
    await WorkerAnnouncer(js, worker, ttl_s=60).announce()
    registry = await WorkerRegistry.watch(js, 60, 1)
    config = SelectorConfig.from_settings(Settings.from_env({"CHORUS_NATS_URL": nats_url}))
    runs = await open_runs(js, 1)
    yield (
        Selector(nc, js, runs, registry, Catalog(), config, None),
        Selector(nc, js, runs, registry, Catalog(), config, None),
        runs,
    )
    await registry.stop()
    await nc.close()


async def test_a_write_over_a_run_another_replica_moved_on_is_a_counted_conflict(
    two_selectors: Replicas,
) -> None:
    first, second, runs = two_selectors
    plan = _plan("r", _text_task(0, "summarization"), _text_task(1, "summarization"))
    refused = _conflicts("refused")
    await first.handle_plan(plan)  # both tasks dispatched; `first` keeps what it wrote
    await second.handle_result(_succeeded(plan, 0))  # reads the run and moves it on
    assert _conflicts("refused") == refused
    # `first` records task 1 on the state it kept, and its write is refused: it reads the run
    # again and finishes it.
    await first.handle_result(_succeeded(plan, 1))
    assert _conflicts("refused") == refused + 1
    with pytest.raises(KeyNotFoundError) as finished:
        await runs.get(plan.request_id)
    assert finished.value.op is not None  # a delete marker: the run finished


async def test_a_kept_state_another_replica_moved_on_is_a_counted_conflict(
    two_selectors: Replicas,
) -> None:
    first, second, runs = two_selectors
    plan = _plan("r", *_chain(3))
    stale = _conflicts("stale")
    await first.handle_plan(plan)  # task 0 dispatched; `first` keeps what it wrote
    await second.handle_result(_succeeded(plan, 0))  # dispatches task 1
    # Task 1 is unknown to the state `first` kept: nothing to write, so it reads the run again
    # and finds it moved on.
    await first.handle_result(_succeeded(plan, 1))
    assert _conflicts("stale") == stale + 1
    await second.handle_result(_succeeded(plan, 2))  # the state `second` kept is stale too
    assert _conflicts("stale") == stale + 2
    with pytest.raises(KeyNotFoundError):
        await runs.get(plan.request_id)
