"""The event-driven example in README.md runs as printed, against a running stack."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path

from tests.integration.stack import CANNY_ONLY, running_stack
from tests.locked_bus import locked_bus

README = Path(__file__).resolve().parents[2] / "README.md"


def _example() -> str:
    blocks: list[str] = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (example,) = [b for b in blocks if '"chorus.request"' in b]
    return example


async def test_the_readme_bus_example_prints_events_then_the_answer(tmp_path: Path) -> None:
    """On a locked bus, as `chorus up` runs it: each service as its role, the example as the
    integrator with the credentials file `chorus up` writes. No service asks for more than
    its role allows: the server refused nothing."""
    env = {**CANNY_ONLY, "CHORUS_CAPACITY_WAIT": "1"}
    with locked_bus(tmp_path / "jetstream", env) as bus:
        credentials = tmp_path / "integrator.json"
        credentials.write_text(
            json.dumps(
                {"url": bus.url, "user": "integrator", "password": bus.passwords["integrator"]}
            )
        )
        async with running_stack(bus.url, env, passwords=bus.passwords):
            out, err, code = await _run_example(credentials)
        assert bus.violations() == []
    assert code == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[0] == "plan_ready" and "done" in lines and "answer_token" in lines
    assert any("summarization" in line for line in lines[lines.index("done") + 1 :])


async def _run_example(credentials: Path) -> tuple[bytes, bytes, int | None]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _example(),
        str(credentials),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return out, err, proc.returncode
