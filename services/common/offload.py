"""Small work on the event loop, large work in a thread.

Handing work to a thread costs about 70 µs of CPU (measured), more than decoding a tiny image or
reading a short reply; but large work on the loop would hold up every other message the
service is handling meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def run_small_on_loop(
    small: bool, work: Callable[..., T], *args: Any, timeout_s: float | None = None
) -> T:
    """`work(*args)`: at once on the loop when `small`, else in a thread, waited for at most
    `timeout_s` (`TimeoutError` past it; the thread itself runs on to its end)."""
    if small:
        return work(*args)
    in_thread = asyncio.to_thread(work, *args)
    return await (in_thread if timeout_s is None else asyncio.wait_for(in_thread, timeout_s))
