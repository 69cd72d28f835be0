"""Progress events on a real NATS server: sent without waiting for an ack, yet stored in
`CHORUS_EVENTS` (once each) and replayed to a late subscriber with the acked `done` last; a
publish the connection refuses is counted and the caller goes on."""

from __future__ import annotations

import logging

import pytest
from chorus.v1.messages_pb2 import ChatResponse, ProgressEvent, TaskResult
from prometheus_client import REGISTRY

from services.common import bus, events
from tests.support import stored_events


def _finished(request_id: str, task_id: int) -> tuple[ProgressEvent, str]:
    event = events.new_event(request_id)
    event.task_finished.CopyFrom(TaskResult(request_id=request_id, task_id=task_id))
    return event, f"{request_id}.{task_id}.finished"


async def test_progress_events_wait_for_no_ack_yet_are_stored_once_and_before_done(
    nats_url: str,
) -> None:
    nc = await bus.connect(nats_url, "stage")
    js = nc.jetstream()
    await bus.ensure_streams(js)
    try:
        sent = [_finished("r1", n) for n in range(4)]
        acks_before = nc.stats["in_msgs"]
        for event, msg_id in [*sent, sent[1]]:  # the second one twice, as a redelivery sends
            await events.publish_event(nc, event, msg_id=msg_id)
        await nc.flush()  # a round trip of the connection: any PubAck would have come by now
        assert nc.stats["in_msgs"] == acks_before  # none asked for, none received
        await events.finish(js, ChatResponse(request_id="r1", answer="done"))
        assert nc.stats["in_msgs"] == acks_before + 2  # the response's and `done`'s
    finally:
        await nc.close()
    stored = await stored_events(nats_url, "r1")
    assert [msg_id for msg_id, _ in stored] == [*(m for _, m in sent), "r1.done"]
    assert [e.task_finished.task_id for _, e in stored[:-1]] == [0, 1, 2, 3]
    assert stored[-1][1].done.answer == "done"


async def test_an_event_the_connection_refuses_is_counted_and_logged_and_the_caller_goes_on(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    def unsent() -> float:
        labels = {"event": "task_finished"}
        return REGISTRY.get_sample_value("chorus_events_unsent_total", labels) or 0.0

    nc = await bus.connect(nats_url, "stage")
    await nc.close()  # as after a drain, or a connection given up on
    before = unsent()
    event, msg_id = _finished("r-closed", 0)
    with caplog.at_level(logging.WARNING, logger="services.common.events"):
        await events.publish_event(nc, event, msg_id=msg_id)  # raises nothing
    assert unsent() == before + 1
    (record,) = [r for r in caplog.records if r.name == "services.common.events"]
    assert "r-closed.0.finished" in record.getMessage()
    assert record.fields["request_id"] == "r-closed"  # type: ignore[attr-defined]
