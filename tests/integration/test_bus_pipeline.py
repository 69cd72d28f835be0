"""A request driven purely over the public bus contract, with no gRPC."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import nats
from chorus.v1.messages_pb2 import (
    ChatMessage,
    ChatRequest,
    ChatResponse,
    ErrorCode,
    ProgressEvent,
    StopAfter,
    TaskStatus,
)
from nats.js.api import DeliverPolicy
from PIL import Image

from services.common import subjects
from services.common.artifacts import ArtifactStore
from tests.integration.stack import CANNY_ONLY, running_stack
from tests.support import ScriptedLLM, marks_the_square, square_png

TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def _ask_over_bus(
    nats_url: str, request: ChatRequest
) -> tuple[list[ProgressEvent], ChatResponse]:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    sub = await js.subscribe(
        subjects.event(request.request_id),
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
    )
    await js.publish(subjects.REQUEST, request.SerializeToString(), headers={"traceparent": TRACE})
    events: list[ProgressEvent] = []
    while True:
        try:
            msg = await sub.next_msg(timeout=30)
        except nats.errors.TimeoutError:
            kinds = [e.WhichOneof("event") for e in events]
            raise AssertionError(f"no done event after {kinds}") from None
        event = ProgressEvent.FromString(msg.data)
        # W3C trace context travels with the work: every event belongs to the caller's trace.
        assert msg.headers and msg.headers["traceparent"].split("-")[1] == TRACE.split("-")[1]
        events.append(event)
        if event.HasField("done"):
            break
    # The final response also sits on its own subject, replayable.
    resp_sub = await js.subscribe(
        subjects.response(request.request_id),
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
    )
    response = ChatResponse.FromString((await resp_sub.next_msg(timeout=10)).data)
    await nc.close()
    return events, response


async def _edges_of_stored_square(
    nats_url: str, inline: bytes = b""
) -> tuple[list[ProgressEvent], Image.Image]:
    """Stores the test square, asks over the bus for its edges (`inline` riding on the file's
    reference, as a request published straight to the bus could send it), and returns the
    events and the edge map the response names."""
    nc = await nats.connect(nats_url)
    store = await ArtifactStore.open(nc.jetstream())
    upload = await store.put(square_png(), "square.png")
    if inline:
        upload.inline, upload.size = inline, len(inline)
    request = _request("Find the edges in square.png")
    request.messages[0].artifacts.append(upload)
    events, response = await _ask_over_bus(nats_url, request)
    (artifact,) = response.artifacts
    _, data = await store.get(artifact.id)
    await nc.close()
    return events, Image.open(io.BytesIO(data)).convert("L")


def _request(text: str, **kw: object) -> ChatRequest:
    return ChatRequest(
        request_id=uuid.uuid4().hex,
        messages=[ChatMessage(role="user", content=text)],
        **kw,  # type: ignore[arg-type]
    )


async def test_text_classification_over_the_bus(nats_url: str, tiny_classifier: Path) -> None:
    env = {
        "CHORUS_EXECUTOR_MODELS": f"text-classification={tiny_classifier}",
        "CHORUS_EXECUTOR_DEFAULTS": "0",
    }
    async with running_stack(nats_url, env):
        request = _request("What is the sentiment of 'i great movie'?")
        events, response = await _ask_over_bus(nats_url, request)
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "plan_ready", response.results
    assert (
        response.results[0].error == ""
        and "task_started" in kinds
        and "task_finished" in kinds
        and kinds[-1] == "done"
    )
    assert [t.task for t in response.plan.tasks] == ["text-classification"]
    (result,) = response.results
    assert result.status == TaskStatus.TASK_STATUS_SUCCEEDED, result.error
    assert result.model == str(tiny_classifier)
    labels = json.loads(next(o.json for o in result.outputs if o.name == "labels"))
    assert labels[0]["label"] in ("POSITIVE", "NEGATIVE")
    assert "text-classification" in response.answer
    assert any("template" in n for n in response.notes)  # the offline fallback says so


async def test_generated_image_travels_through_the_object_store(
    nats_url: str, tmp_path: Path
) -> None:
    async with running_stack(nats_url, CANNY_ONLY):
        _, edges = await _edges_of_stored_square(nats_url)
    assert edges.size == (48, 48)
    assert marks_the_square(edges)


async def test_inline_bytes_sent_with_a_request_are_ignored_for_the_stored_file(
    nats_url: str,
) -> None:
    # Only a task's output travels inline; a request published straight to the bus that brings
    # other bytes with a stored file's reference must not have them run in place of the file.
    forged = io.BytesIO()
    Image.new("RGB", (48, 48), "white").save(forged, format="PNG")
    async with running_stack(nats_url, CANNY_ONLY):
        events, edges = await _edges_of_stored_square(nats_url, inline=forged.getvalue())
    assert marks_the_square(edges)  # the stored square's, not the blank forged inline
    plans = [e.plan_ready for e in events if e.HasField("plan_ready")]
    assert plans and not any(arg.artifact.inline for t in plans[0].tasks for arg in t.args)


async def test_stop_after_plan_runs_no_task(nats_url: str) -> None:
    async with running_stack(nats_url, CANNY_ONLY):
        request = _request("Summarize 'a long text here'", stop_after=StopAfter.STOP_AFTER_PLAN)
        _, response = await _ask_over_bus(nats_url, request)
    assert [t.task for t in response.plan.tasks] == ["summarization"]
    assert not response.results and not response.answer


async def test_a_task_no_replica_comes_for_fails_and_its_dependents_are_skipped(
    nats_url: str, scripted_llm: ScriptedLLM
) -> None:
    scripted_llm.replies = [
        '[{"task": "image-to-text", "id": 0, "dep": [], "args": {"image": "a.png"}},'
        ' {"task": "text-to-speech", "id": 1, "dep": [0], "args": {"text": "<GENERATED>-0"}}]',
        "Nothing could be done.",
    ]
    env = {**CANNY_ONLY, "CHORUS_LLM_BASE_URL": scripted_llm.base_url, "CHORUS_CAPACITY_WAIT": "1"}
    async with running_stack(nats_url, env):
        events, response = await _ask_over_bus(
            nats_url, _request("describe a.png and read it aloud")
        )
    waiting = [e.task_waiting for e in events if e.WhichOneof("event") == "task_waiting"]
    assert [w.reason for w in waiting] == ["waiting for a replica of image-to-text"]
    first, second = response.results
    assert first.status == TaskStatus.TASK_STATUS_FAILED
    assert "no live executor serves 'image-to-text' (waited 1 s" in first.error
    assert second.status == TaskStatus.TASK_STATUS_SKIPPED and "task 0" in second.error
    assert response.answer == "Nothing could be done."


async def test_llm_plan_and_streamed_answer(nats_url: str, scripted_llm: ScriptedLLM) -> None:
    scripted_llm.replies = [
        'Sure! ```json\n[{"task": "canny-control", "id": 0, "dep": [-1], "args": {"image": "x.png"}}]\n```',
        "The edges are drawn in canny-control-0.png.",
    ]
    env = {**CANNY_ONLY, "CHORUS_LLM_BASE_URL": scripted_llm.base_url}
    async with running_stack(nats_url, env):
        events, response = await _ask_over_bus(nats_url, _request("edges of x.png please"))
    tokens = [e.answer_token for e in events if e.WhichOneof("event") == "answer_token"]
    assert len(tokens) > 1 and "".join(tokens) == response.answer
    assert response.answer == "The edges are drawn in canny-control-0.png."
    # x.png was never uploaded: the executor answers with a clear failure, not a hang.
    assert response.results[0].status == TaskStatus.TASK_STATUS_FAILED
    assert "needs an uploaded image file" in response.results[0].error


async def test_llm_down_gives_a_clear_error_in_bounded_time(nats_url: str) -> None:
    from services.cli.cluster import free_port

    env = {
        "CHORUS_LLM_BASE_URL": f"http://127.0.0.1:{free_port()}/v1",  # nothing listens
        "CHORUS_LLM_MAX_RETRIES": "0",
        "CHORUS_LLM_TIMEOUT": "2",
    }
    async with running_stack(nats_url, env, services=("planner",)):
        _, response = await _ask_over_bus(nats_url, _request("hello"))
    assert (
        response.error.stage == "planner"
        and response.error.code == ErrorCode.ERROR_CODE_LLM_UNAVAILABLE
    )
    assert "unavailable" in response.error.message


async def test_undecodable_messages_on_every_stage_go_to_dead_letter_and_nothing_stops(
    nats_url: str, tmp_path: Path
) -> None:
    from prometheus_client import REGISTRY

    def dead_letters(stage: str) -> float:
        labels = {"stage": stage, "outcome": "dead_letter"}
        return REGISTRY.get_sample_value("chorus_messages_total", labels) or 0.0

    garbage = {
        subjects.REQUEST: ("planner", "ChatRequest"),
        subjects.PLAN: ("selector", "TaskPlan"),
        subjects.RESULT: ("selector", "TaskResult"),
        subjects.invoke("canny-control", "builtin:canny"): ("executor", "TaskInvocation"),
        subjects.REPORT: ("responder", "ExecutionReport"),
    }
    before = {stage: dead_letters(stage) for stage, _ in garbage.values()}
    async with running_stack(nats_url, CANNY_ONLY):
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        dead = await js.subscribe(
            "chorus.deadletter.>", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
        )
        for subject in garbage:
            await js.publish(subject, b"\xff\xfe not a protobuf")
        seen = {}
        for _ in garbage:
            msg = await dead.next_msg(timeout=10)
            assert msg.data == b"\xff\xfe not a protobuf" and msg.headers
            seen[msg.headers["Chorus-Subject"]] = (msg.subject, msg.headers["Chorus-Error"])
        store = await ArtifactStore.open(js)
        upload = await store.put(square_png(), "square.png")
        await nc.close()
        request = _request("Find the edges in square.png")
        request.messages[0].artifacts.append(upload)
        _, response = await _ask_over_bus(nats_url, request)
    for subject, (stage, message_type) in garbage.items():
        dead_subject, reason = seen[subject]
        assert dead_subject == f"chorus.deadletter.{stage}"
        assert f"undecodable {message_type}" in reason
    assert dead_letters("selector") - before["selector"] == 2
    assert dead_letters("executor") - before["executor"] == 1
    # Every stage still serves: a whole request goes through afterwards.
    assert response.results[0].status == TaskStatus.TASK_STATUS_SUCCEEDED


async def test_a_plan_too_large_for_a_message_fails_clearly(nats_url: str) -> None:
    text = "Summarize and translate '" + "word " * 80_000 + "'"  # 400 kB, copied into each task
    async with running_stack(nats_url, CANNY_ONLY):
        _, response = await _ask_over_bus(nats_url, _request(text))
    assert (response.error.stage, response.error.code) == (
        "planner",
        ErrorCode.ERROR_CODE_PAYLOAD_TOO_LARGE,
    )
    assert "send long inputs as files" in response.error.message


async def test_a_request_id_that_is_no_subject_token_is_dead_lettered(nats_url: str) -> None:
    async with running_stack(nats_url, CANNY_ONLY, services=("planner",)):
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        dead = await js.subscribe(
            "chorus.deadletter.>", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
        )
        await js.publish(subjects.REQUEST, _request("hi").SerializeToString())
        bad = ChatRequest(request_id="a.b.>", messages=[ChatMessage(role="user", content="hi")])
        await js.publish(subjects.REQUEST, bad.SerializeToString())
        msg = await dead.next_msg(timeout=10)
        await nc.close()
    assert msg.headers and "invalid request_id 'a.b.>'" in msg.headers["Chorus-Error"]
