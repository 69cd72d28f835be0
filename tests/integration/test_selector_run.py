"""The selector's run rules on the real bus: record-then-dispatch, cancels, capacity waits,
and bad state that must not spread."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import pytest
from chorus.v1.messages_pb2 import (
    CancelRequest,
    ChatResponse,
    ErrorCode,
    ProgressEvent,
    TaskStatus,
)
from nats.js.api import DeliverPolicy
from nats.js.errors import NoKeysError
from nats.js.kv import KeyValue
from prometheus_client import REGISTRY

from services.common import bus, subjects
from services.common.tasks import MAX_PLAN_TASKS
from tests.echo_replica import EchoReplica
from tests.integration.stack import running_stack
from tests.integration.test_selector_bus import _ghost, _plan, _run_plan, _stray, _text_task
from tests.integration.test_selector_bus import fast_sweep as fast_sweep


def _sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0


async def test_a_result_never_overtakes_the_record_of_its_dispatch(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's state is written slowly, and the replica answers at once: were the invocation
    published before the write, its result would find no record of it and be dropped."""
    update: Callable[..., Awaitable[int]] = KeyValue.update

    async def slow_update(self: KeyValue, key: str, value: bytes, last: Any = None) -> int:
        if self._name == subjects.RUN_STATE_BUCKET:
            await asyncio.sleep(0.5)
        return await update(self, key, value, last)

    monkeypatch.setattr(KeyValue, "update", slow_update)
    before = _stray("unknown_task")
    chain = (_text_task(0, "summarization"), _text_task(1, "summarization", deps=(0,)))
    async with running_stack(nats_url, services=("selector", "responder")):
        echo = await EchoReplica(nats_url, [("summarization", "m")]).start()
        response = await _run_plan(nats_url, _plan("r", *chain))
        await echo.stop()
    assert [TaskStatus.Name(r.status) for r in response.results] == ["TASK_STATUS_SUCCEEDED"] * 2
    assert _stray("unknown_task") == before


async def test_a_cancel_stops_the_run_and_reports_its_tasks_cancelled(nats_url: str) -> None:
    cancels = _sample("chorus_selector_stray_cancels_total", {"reason": "unknown_request"})
    plan = _plan("r", _text_task(0, "summarization"), _text_task(1, "summarization", deps=(0,)))
    async with running_stack(nats_url, services=("selector", "responder")):
        await _ghost(nats_url, "summarization", "ghost/model", ttl_s=60)  # takes it, never answers
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        responses = await js.subscribe(
            subjects.response(plan.request_id),
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        started = await js.subscribe(
            subjects.event(plan.request_id),
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        await bus.publish(js, subjects.PLAN, plan)
        event = ProgressEvent.FromString((await started.next_msg(timeout=30)).data)
        assert event.WhichOneof("event") == "task_started"
        cancel = CancelRequest(request_id=plan.request_id, reason="cancelled by the user")
        await bus.publish(js, subjects.cancel(plan.request_id), cancel)
        response = ChatResponse.FromString((await responses.next_msg(timeout=30)).data)
        await bus.publish(js, subjects.cancel("no-such-request"), CancelRequest(request_id="x"))
        for _ in range(100):  # the stray cancel is counted, and acked
            if _sample("chorus_selector_stray_cancels_total", {"reason": "unknown_request"}):
                break
            await asyncio.sleep(0.05)
        await nc.close()
    assert [(r.task_id, TaskStatus.Name(r.status)) for r in response.results] == [
        (0, "TASK_STATUS_CANCELLED"),
        (1, "TASK_STATUS_CANCELLED"),
    ]
    assert response.results[0].error == "cancelled: cancelled by the user"
    assert response.results[0].model == "ghost/model"
    after = _sample("chorus_selector_stray_cancels_total", {"reason": "unknown_request"})
    assert after == cancels + 1


async def test_a_task_waits_for_a_replica_and_runs_when_one_comes(
    nats_url: str, fast_sweep: None
) -> None:
    plan = _plan("r", _text_task(0, "summarization"))
    async with running_stack(nats_url, {"CHORUS_CAPACITY_WAIT": "120"}, ("selector", "responder")):
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        events = await js.subscribe(
            subjects.event(plan.request_id),
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        responses = await js.subscribe(
            subjects.response(plan.request_id),
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        await bus.publish(js, subjects.PLAN, plan)
        waiting = ProgressEvent.FromString((await events.next_msg(timeout=30)).data)
        echo = await EchoReplica(nats_url, [("summarization", "late/model")]).start()
        response = ChatResponse.FromString((await responses.next_msg(timeout=30)).data)
        await echo.stop()
        await nc.close()
    assert waiting.task_waiting.reason == "waiting for a replica of summarization"
    (result,) = response.results
    assert (TaskStatus.Name(result.status), result.model) == ("TASK_STATUS_SUCCEEDED", "late/model")


async def test_a_task_nobody_comes_for_fails_with_the_reason(
    nats_url: str, fast_sweep: None
) -> None:
    async with running_stack(nats_url, {"CHORUS_CAPACITY_WAIT": "1"}, ("selector", "responder")):
        response = await _run_plan(nats_url, _plan("r", _text_task(0, "summarization")))
    (result,) = response.results
    assert result.status == TaskStatus.TASK_STATUS_FAILED
    assert result.error == "no live executor serves 'summarization' (waited 1 s for a replica)"


async def test_an_unreadable_run_is_failed_and_dropped_and_other_runs_go_on(
    nats_url: str, fast_sweep: None
) -> None:
    bad = _sample("chorus_selector_bad_run_state_total")
    request_id = uuid.uuid4().hex
    async with running_stack(nats_url, services=("selector", "responder")):
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        responses = await js.subscribe(
            subjects.response(request_id), ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
        )
        runs = await js.key_value(subjects.RUN_STATE_BUCKET)
        await runs.put(request_id, b"\xff\xff not a RunState")
        failed = ChatResponse.FromString((await responses.next_msg(timeout=30)).data)
        echo = await EchoReplica(nats_url, [("summarization", "m")]).start()
        good = await _run_plan(nats_url, _plan("r", _text_task(0, "summarization")))
        await echo.stop()
        await nc.close()
    assert (failed.error.stage, failed.error.code) == ("selector", ErrorCode.ERROR_CODE_INTERNAL)
    assert "unreadable" in failed.error.message
    assert good.results[0].status == TaskStatus.TASK_STATUS_SUCCEEDED
    assert _sample("chorus_selector_bad_run_state_total") == bad + 1


async def test_the_selector_refuses_a_plan_over_the_size_limit(nats_url: str) -> None:
    tasks = [_text_task(i, "summarization") for i in range(MAX_PLAN_TASKS + 1)]
    async with running_stack(nats_url, services=("selector", "responder")):
        response = await _run_plan(nats_url, _plan("r", *tasks))
    assert (response.error.stage, response.error.code) == (
        "selector",
        ErrorCode.ERROR_CODE_PAYLOAD_TOO_LARGE,
    )
    assert f"more than {MAX_PLAN_TASKS}" in response.error.message


async def test_a_work_stream_deleted_under_running_services_is_recreated(nats_url: str) -> None:
    async with running_stack(nats_url, services=("selector", "responder")):
        echo = await EchoReplica(nats_url, [("summarization", "m")]).start()
        nc = await nats.connect(nats_url)
        await nc.jetstream().delete_stream(subjects.WORK_STREAM)
        await nc.close()
        # Consumers find their stream gone, the services make it again and bind anew.
        response = await _run_plan(nats_url, _plan("r", _text_task(0, "summarization")))
        await echo.stop()
    assert response.results[0].status == TaskStatus.TASK_STATUS_SUCCEEDED


async def test_a_step_writes_the_run_without_reading_it(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The selector keeps the state it last wrote: a plan creates its run with its first
    dispatches in one write, without looking for an earlier run (the create is refused where
    there is one); a step is one compare-and-set write and no read; only the last step, whose
    report goes out before its delete, reads the run afresh first."""
    calls: list[tuple[str, str]] = []

    def counted(name: str) -> None:
        original: Callable[..., Awaitable[Any]] = getattr(KeyValue, name)

        async def call(self: KeyValue, key: str, *args: Any, **kwargs: Any) -> Any:
            if self._name == subjects.RUN_STATE_BUCKET:
                calls.append((name, key))
            return await original(self, key, *args, **kwargs)

        monkeypatch.setattr(KeyValue, name, call)

    for name in ("get", "create", "update", "delete"):
        counted(name)
    chain = [_text_task(i, "summarization", deps=(i - 1,) if i else ()) for i in range(3)]
    async with running_stack(nats_url, services=("selector", "responder")):
        echo = await EchoReplica(nats_url, [("summarization", "m")]).start()
        response = await _run_plan(nats_url, _plan("r", *chain))
        await echo.stop()
    assert [r.status for r in response.results] == [TaskStatus.TASK_STATUS_SUCCEEDED] * 3
    # The plan's write (task 0 out), two results' (tasks 1 and 2 out), the last one's look
    # and the delete.
    ops = ["update", "update", "update", "get", "delete"]
    assert calls == [(op, response.request_id) for op in ops]


async def test_a_plan_redelivered_after_its_run_finished_starts_nothing(nats_url: str) -> None:
    plan = _plan("r", _text_task(0, "summarization"))
    async with running_stack(nats_url, services=("selector", "responder")):
        echo = await EchoReplica(nats_url, [("summarization", "m")]).start()
        response = await _run_plan(nats_url, plan)
        await echo.stop()  # a run started again would now wait, and stay in the bucket
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await bus.publish(js, subjects.PLAN, plan)
        for _ in range(200):  # until the selector has taken and acked it
            info = await js.consumer_info(subjects.WORK_STREAM, "selector-plans")
            if info.num_pending == 0 and info.num_ack_pending == 0:
                break
            await asyncio.sleep(0.05)
        runs = await js.key_value(subjects.RUN_STATE_BUCKET)
        with pytest.raises(NoKeysError):
            await runs.keys()
        await nc.close()
    assert response.results[0].status == TaskStatus.TASK_STATUS_SUCCEEDED


async def test_two_selectors_share_runs_through_compare_and_set(nats_url: str) -> None:
    """Each keeps what it wrote; a write on top of a state the other moved on is refused and
    read again, so every request still finishes once and well."""
    chain = [_text_task(i, "summarization", deps=(i - 1,) if i else ()) for i in range(3)]
    async with running_stack(nats_url, services=("selector", "selector", "responder")):
        echo = await EchoReplica(nats_url, [("summarization", "m")]).start()
        responses = await asyncio.gather(
            *(_run_plan(nats_url, _plan(f"r{i}", *chain)) for i in range(12))
        )
        await echo.stop()
    for response in responses:
        assert [r.status for r in response.results] == [TaskStatus.TASK_STATUS_SUCCEEDED] * 3
