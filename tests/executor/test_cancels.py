"""The executor's set of cancelled requests: waited on, bounded, expiring."""

from __future__ import annotations

import asyncio

import pytest

from services.executor.cancels import CancelledRequests


async def test_watched_work_is_cancelled_with_its_request_and_only_then() -> None:
    cancelled = CancelledRequests()
    work = asyncio.create_task(asyncio.sleep(3600))
    after = asyncio.create_task(asyncio.sleep(3600))
    with cancelled.watching("r1", work), cancelled.watching("r1", after):
        cancelled.add("r2", "other")
        await asyncio.sleep(0)
        assert not work.done()
        cancelled.add("r1", "the user pressed Stop")
        with pytest.raises(asyncio.CancelledError):
            await work
    assert cancelled.reason("r1") == "the user pressed Stop"
    assert after.cancelled() or after.cancelling()
    left = asyncio.create_task(asyncio.sleep(3600))
    with cancelled.watching("r3", left):
        pass
    cancelled.add("r3", "too late")  # its block ended: the work is no longer this request's
    await asyncio.sleep(0)
    assert not left.done()
    left.cancel()


def test_the_set_is_bounded_and_forgets_old_cancels() -> None:
    cancelled = CancelledRequests(ttl_s=3600, max_ids=2)
    for request_id in ("a", "b", "c"):
        cancelled.add(request_id, "x")
    assert [cancelled.reason(r) for r in ("a", "b", "c")] == [None, "x", "x"]
    expiring = CancelledRequests(ttl_s=1e-9)
    expiring.add("a", "x")
    assert expiring.reason("a") is None
