"""How the consumer loop decides what to pull, and what a status on its inbox means (pure)."""

from __future__ import annotations

import asyncio

from chorus.v1.messages_pb2 import TaskResult

from services.common import bus, subjects


def _terms(concurrency: int = 8, shared: bool = False) -> bus._PullTerms:
    spec = bus.ConsumerSpec(
        stage="selector",
        subject=subjects.RESULT,
        durable="d",
        message_type=TaskResult,
        handle=lambda message: asyncio.sleep(0),
        give_up=lambda message, error: asyncio.sleep(0),
        concurrency=concurrency,
        shared_slots=asyncio.Semaphore(2) if shared else None,
    )
    return bus._PullTerms.of(spec)


def test_it_asks_for_every_free_slot_once_about_half_are_free() -> None:
    terms = _terms(8)
    assert terms.to_ask(pending=0, running=0, slot_free=True) == 8
    assert terms.to_ask(pending=7, running=0, slot_free=True) == 0  # one in: still plenty asked
    assert terms.to_ask(pending=4, running=0, slot_free=True) == 4  # half free: ask again
    assert terms.to_ask(pending=4, running=3, slot_free=True) == 0
    assert terms.to_ask(pending=0, running=7, slot_free=True) == 1  # nothing asked: ask for 1
    assert terms.to_ask(pending=0, running=8, slot_free=True) == 0  # never over the slots


def test_shared_slots_ask_for_one_at_a_time_and_only_with_a_slot_free() -> None:
    terms = _terms(8, shared=True)
    assert terms.to_ask(pending=0, running=3, slot_free=True) == 1
    assert terms.to_ask(pending=1, running=0, slot_free=True) == 0
    assert terms.to_ask(pending=0, running=0, slot_free=False) == 0
    assert b"idle_heartbeat" not in terms.request(1)  # its short expiry is the server's word
    assert terms.silence_s > terms.expires_s


def test_statuses_call_off_what_they_say_and_void_the_pulls_otherwise() -> None:
    pulls = bus._Pulls()
    pulls.asked(8)
    assert pulls.received({}) and pulls.pending == 7  # a message
    assert not pulls.received({"Status": "100", "Description": "Idle Heartbeat"})
    assert pulls.pending == 7 and pulls.lost is None
    expired = {"Status": "408", "Description": "Request Timeout", bus.PULL_PENDING_MSGS: "5"}
    assert not pulls.received(expired) and pulls.pending == 2
    moved = {"Status": "409", "Description": "Leadership Change", bus.PULL_PENDING_MSGS: "2"}
    assert not pulls.received(moved) and pulls.pending == 0 and pulls.lost is None
    for void in ("Consumer Deleted", "Exceeded MaxWaiting"):
        pulls = bus._Pulls()
        pulls.received({"Status": "409", "Description": void})
        assert pulls.lost == f"409 {void}"  # the loop binds again
    pulls = bus._Pulls()
    pulls.received({"Status": "503", "Description": ""})  # no consumer answers its pulls
    assert pulls.lost is not None
