"""Admission slots of the front door on a real NATS server: a request whose events are never
read gives its slot back, whether its caller dropped it or just never began reading."""

from __future__ import annotations

import asyncio
import gc

import pytest
from chorus.v1.messages_pb2 import ChatMessage, ChatRequest, ErrorCode

from services.gateway import frontdoor
from services.gateway.errors import RequestError
from services.gateway.frontdoor import FrontDoor


def _hello() -> ChatRequest:
    return ChatRequest(messages=[ChatMessage(role="user", content="Hi")])


def _busy(door: FrontDoor, owner: str) -> bool:
    try:
        door.admit(owner)
    except RequestError as e:
        assert e.code == ErrorCode.ERROR_CODE_RESOURCE_EXHAUSTED
        return True
    return False


async def test_events_dropped_unread_give_the_slot_back_at_once(door: FrontDoor) -> None:
    events = await door.start(_hello(), api="openai", owner="alice")
    assert _busy(door, "alice")
    del events  # the client left before its response began: nothing ever reads them
    gc.collect()
    assert not _busy(door, "alice")


async def test_events_not_read_in_time_give_the_slot_back_and_refuse_a_late_read(
    door: FrontDoor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(frontdoor, "START_TIMEOUT_S", 0.2)
    events = await door.start(_hello(), api="openai", owner="alice")
    assert _busy(door, "alice")
    for _ in range(100):  # bounded: until the start timeout has run
        if not _busy(door, "alice"):
            break
        await asyncio.sleep(0.05)
    assert not _busy(door, "alice")
    with pytest.raises(RequestError) as late:
        await anext(events)
    assert late.value.code == ErrorCode.ERROR_CODE_DEADLINE
    assert "was not read within" in str(late.value)


async def test_events_being_read_hold_the_slot_until_their_caller_leaves(
    door: FrontDoor,
) -> None:
    events = await door.start(_hello(), api="openai", owner="alice")
    reading = asyncio.ensure_future(anext(events))  # publishes it, waits for its first event
    await asyncio.sleep(0.5)
    assert not reading.done() and _busy(door, "alice")
    reading.cancel()  # the caller left
    await asyncio.gather(reading, return_exceptions=True)
    assert not _busy(door, "alice")
