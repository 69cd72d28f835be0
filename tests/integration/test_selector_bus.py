"""The selector on the real bus: retries, bad plans, stray results, one LLM call per plan."""

from __future__ import annotations

import asyncio
import json
import uuid

import nats
import pytest
from chorus.v1.messages_pb2 import (
    ChatMessage,
    ChatRequest,
    ChatResponse,
    Task,
    TaskArgument,
    TaskPlan,
    TaskResult,
    TaskStatus,
)
from chorus.v1.workers_pb2 import ServedModel, WorkerInfo
from nats.js.api import DeliverPolicy
from nats.js.errors import NoKeysError
from prometheus_client import REGISTRY

from services.common import bus, subjects
from services.common.workers import WorkerAnnouncer
from services.selector import service as selector_service
from tests.echo_replica import EchoReplica
from tests.integration.stack import running_stack
from tests.support import ScriptedLLM

FAST_SWEEP: dict[str, float] = {"SWEEP_INTERVAL_S": 0.5, "OVERDUE_GRACE_S": 0.5}


@pytest.fixture
def fast_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in FAST_SWEEP.items():
        monkeypatch.setattr(selector_service, name, value)


def _stray(reason: str) -> float:
    return REGISTRY.get_sample_value("chorus_selector_stray_results_total", {"reason": reason}) or 0


def _plan(text: str, *tasks: Task) -> TaskPlan:
    request = ChatRequest(
        request_id=uuid.uuid4().hex, messages=[ChatMessage(role="user", content=text)]
    )
    return TaskPlan(request_id=request.request_id, request=request, tasks=tasks)


def _text_task(task_id: int, task: str, deps: tuple[int, ...] = ()) -> Task:
    return Task(
        id=task_id, task=task, deps=deps or [], args=[TaskArgument(name="text", text="some text")]
    )


async def _run_plan(nats_url: str, plan: TaskPlan) -> ChatResponse:
    """Publishes a plan as the planner would and waits for the final response."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    responses = await js.subscribe(
        subjects.response(plan.request_id), ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    await bus.publish(js, subjects.PLAN, plan)
    response = ChatResponse.FromString((await responses.next_msg(timeout=30)).data)
    await nc.close()
    return response


async def _ghost(nats_url: str, task: str, model: str, ttl_s: float = 3.0) -> None:
    """A replica that announced itself once and then died: nothing consumes its work."""
    nc = await nats.connect(nats_url)
    ghost = WorkerInfo(
        worker_id=f"ghost-{model}", capacity=1, models=[ServedModel(task=task, model=model)]
    )
    await WorkerAnnouncer(nc.jetstream(), ghost, ttl_s).announce()
    await nc.close()
    await asyncio.sleep(0.2)  # let the selector's registry watch see it


async def test_a_task_whose_replica_died_is_retried_then_fails_at_its_deadline(
    nats_url: str, fast_sweep: None
) -> None:
    env = {"CHORUS_TASK_DEADLINE": "1"}
    async with running_stack(nats_url, env, services=("selector", "responder")):
        await _ghost(nats_url, "summarization", "ghost/model", ttl_s=60)
        response = await _run_plan(nats_url, _plan("r", _text_task(0, "summarization")))
    (result,) = response.results
    assert result.model == "ghost/model" and result.status == TaskStatus.TASK_STATUS_FAILED
    assert "no result by the task's deadline" in result.error
    assert result.attempt == 1  # one retry (CHORUS_TASK_RETRIES=1), then the verdict


async def test_work_of_a_model_that_disappeared_is_retried_on_another(
    nats_url: str, fast_sweep: None
) -> None:
    async with running_stack(nats_url, services=("selector", "responder")):
        # Ranked first (same load, no catalog facts, then by name), then gone after its TTL;
        # announced first, so a selector that sees the live replica has seen the ghost too.
        await _ghost(nats_url, "summarization", "a/ghost")
        live = await EchoReplica(nats_url, [("summarization", "b/live")]).start()
        response = await _run_plan(nats_url, _plan("r", _text_task(0, "summarization")))
        await live.stop()
    (result,) = response.results
    assert result.status == TaskStatus.TASK_STATUS_SUCCEEDED, result.error
    assert (result.model, result.attempt) == ("b/live", 1)
    assert "retried away from a/ghost" in result.selection_reason


async def test_a_retryable_failure_is_retried_on_another_model(nats_url: str) -> None:
    async with running_stack(nats_url, services=("selector", "responder")):
        full = await EchoReplica(
            nats_url, [("summarization", "a/full")], out_of_memory=True
        ).start()
        roomy = await EchoReplica(nats_url, [("summarization", "b/roomy")]).start()
        await asyncio.sleep(0.2)  # the selector's registry watch sees both
        response = await _run_plan(nats_url, _plan("r", _text_task(0, "summarization")))
        await full.stop()
        await roomy.stop()
    (result,) = response.results
    assert result.status == TaskStatus.TASK_STATUS_SUCCEEDED, result.error
    assert (result.model, result.attempt) == ("b/roomy", 1)
    assert "retried away from a/full" in result.selection_reason


async def test_a_plan_with_bad_references_finishes_with_a_status_for_every_task(
    nats_url: str,
) -> None:
    plan = _plan(
        "r",
        _text_task(0, "make-coffee"),
        _text_task(1, "summarization", deps=(9,)),
        _text_task(2, "summarization", deps=(3,)),
        _text_task(3, "translation", deps=(2,)),
        _text_task(4, "translation", deps=(0,)),
        _text_task(5, "summarization"),
        _text_task(5, "translation"),
    )
    async with running_stack(nats_url, services=("selector", "responder")):
        echo = await EchoReplica(nats_url, [("summarization", "m")]).start()
        response = await _run_plan(nats_url, plan)
        await echo.stop()
    status = {r.task_id: (TaskStatus.Name(r.status), r.error) for r in response.results}
    assert status == {
        0: ("TASK_STATUS_FAILED", "unknown task type 'make-coffee'"),
        1: ("TASK_STATUS_FAILED", "depends on task 9, which is not in the plan"),
        2: ("TASK_STATUS_FAILED", "part of a dependency cycle"),
        3: ("TASK_STATUS_FAILED", "part of a dependency cycle"),
        4: ("TASK_STATUS_SKIPPED", "skipped: task 0 did not succeed"),
        5: ("TASK_STATUS_SUCCEEDED", ""),
    }
    assert any("task id 5 appears twice" in note for note in response.notes)


async def test_stray_results_are_counted_and_the_selector_keeps_going(nats_url: str) -> None:
    before = {r: _stray(r) for r in ("unknown_request", "finished_request")}
    async with running_stack(nats_url, services=("selector", "responder")):
        echo = await EchoReplica(nats_url, [("summarization", "m")]).start()
        done = _plan("r", _text_task(0, "summarization"))
        await _run_plan(nats_url, done)
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        late = TaskResult(request_id=done.request_id, task_id=0, attempt=0)
        await bus.publish(js, subjects.RESULT, late)  # its request has finished
        await bus.publish(js, subjects.RESULT, TaskResult(request_id="no-such-request"))
        runs = await js.key_value(subjects.RUN_STATE_BUCKET)
        with pytest.raises(NoKeysError):  # a finished run leaves the sweep's listing
            await runs.keys()
        await nc.close()
        response = await _run_plan(nats_url, _plan("r", _text_task(0, "summarization")))
        await echo.stop()
    assert response.results[0].status == TaskStatus.TASK_STATUS_SUCCEEDED
    assert _stray("unknown_request") - before["unknown_request"] == 1
    assert _stray("finished_request") - before["finished_request"] == 1


async def test_one_llm_call_chooses_the_models_of_a_whole_plan(
    nats_url: str, scripted_llm: ScriptedLLM
) -> None:
    plan = json.dumps(
        [
            {"task": "text-classification", "id": 0, "dep": [-1], "args": {"text": "great"}},
            {"task": "token-classification", "id": 1, "dep": [-1], "args": {"text": "Ann"}},
        ]
    )
    choice = json.dumps(
        {
            "choices": [
                {"task": 0, "id": "b/cls", "reason": "fits sentiment"},
                {"task": 1, "id": "b/tok", "reason": "knows names"},
            ]
        }
    )
    scripted_llm.replies = [plan, choice, "Done."]
    served = [(t, m) for t in ("text-classification", "token-classification") for m in "ab"]
    served = [(t, f"{m}/{'cls' if t.startswith('text') else 'tok'}") for t, m in served]
    env = {"CHORUS_LLM_BASE_URL": scripted_llm.base_url, "CHORUS_EXECUTOR_DEFAULTS": "0"}
    async with running_stack(nats_url, env, services=("planner", "selector", "responder")):
        echo = await EchoReplica(nats_url, served).start()
        await asyncio.sleep(0.2)
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        request = ChatRequest(
            request_id=uuid.uuid4().hex,
            messages=[ChatMessage(role="user", content="label 'great' and find names in 'Ann'")],
        )
        responses = await js.subscribe(
            subjects.response(request.request_id),
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        await js.publish(subjects.REQUEST, request.SerializeToString())
        response = ChatResponse.FromString((await responses.next_msg(timeout=30)).data)
        await nc.close()
        await echo.stop()
    assert [(r.model, r.selection_reason) for r in response.results] == [
        ("b/cls", "chosen by the LLM: fits sentiment"),
        ("b/tok", "chosen by the LLM: knows names"),
    ]
    assert len(scripted_llm.requests) == 3  # plan, one choice for both tasks, answer
    assert "Task 1: token-classification" in scripted_llm.requests[1]["messages"][-1]["content"]


async def test_a_lost_race_to_delete_a_run_is_a_compare_and_set_conflict(nats_url: str) -> None:
    from nats.js.api import KeyValueConfig
    from nats.js.errors import KeyWrongLastSequenceError

    nc = await nats.connect(nats_url)
    runs = await nc.jetstream().create_key_value(KeyValueConfig(bucket="runs_race"))
    first = await runs.put("r", b"state")
    await runs.put("r", b"changed by another replica")
    with pytest.raises(KeyWrongLastSequenceError):
        await selector_service._delete_at(runs, "r", first)
    await nc.close()
