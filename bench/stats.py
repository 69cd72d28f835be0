"""The figures every benchmark reports, computed one way."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any


def p99(ordered: Sequence[float]) -> float:
    """The 99th percentile of sorted samples: nearest rank, the largest under 100 samples."""
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def throughput(run: Callable[[], Awaitable[None]], concurrency: int, requests: int) -> float:
    """Calls per second of `requests` calls of `run`, at most `concurrency` at a time."""
    slots = asyncio.Semaphore(concurrency)

    async def limited() -> None:
        async with slots:
            await run()

    started = time.perf_counter()
    await asyncio.gather(*(limited() for _ in range(requests)))
    return requests / (time.perf_counter() - started)


def write_results(
    path: Path, results: object, default: Callable[[Any], object] | None = None
) -> None:
    """A benchmark's figures as JSON (UTF-8) at `path` under bench/results/, the folder made
    if need be; `default` turns values JSON has no type for into ones it has."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2, ensure_ascii=False, default=default)
    path.write_text(text + "\n", encoding="utf-8")
