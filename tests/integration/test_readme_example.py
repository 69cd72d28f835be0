"""The event-driven example in README.md runs as printed, against a running stack."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

from tests.integration.stack import CANNY_ONLY, running_stack

README = Path(__file__).resolve().parents[2] / "README.md"


def _example() -> str:
    blocks: list[str] = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (example,) = [b for b in blocks if '"chorus.request"' in b]
    return example


async def test_the_readme_bus_example_prints_events_then_the_answer(nats_url: str) -> None:
    code = _example().replace("nats://127.0.0.1:4222", nats_url)
    # Nothing serves summarization here: it fails after a second's wait for a replica.
    async with running_stack(nats_url, {**CANNY_ONLY, "CHORUS_CAPACITY_WAIT": "1"}):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            code,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[0] == "plan_ready" and "done" in lines and "answer_token" in lines
    assert any("summarization" in line for line in lines[lines.index("done") + 1 :])
