"""The executor's set of cancelled requests: waited on, bounded, expiring."""

from __future__ import annotations

import asyncio

from services.executor.cancels import CancelledRequests


async def test_a_wait_ends_when_its_request_is_cancelled() -> None:
    cancelled = CancelledRequests()
    waiting = asyncio.create_task(cancelled.wait("r1"))
    await asyncio.sleep(0)
    cancelled.add("r2", "other")
    await asyncio.sleep(0)
    assert not waiting.done()
    cancelled.add("r1", "the user pressed Stop")
    assert await waiting == "the user pressed Stop"
    assert await cancelled.wait("r1") == "the user pressed Stop"  # at once, once cancelled


def test_the_set_is_bounded_and_forgets_old_cancels() -> None:
    cancelled = CancelledRequests(ttl_s=3600, max_ids=2)
    for request_id in ("a", "b", "c"):
        cancelled.add(request_id, "x")
    assert [cancelled.reason(r) for r in ("a", "b", "c")] == [None, "x", "x"]
    expiring = CancelledRequests(ttl_s=1e-9)
    expiring.add("a", "x")
    assert expiring.reason("a") is None
