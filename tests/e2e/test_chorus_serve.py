"""`chorus serve` runs one service; a bad setting ends it with one clear line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def _serve(nats_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CHORUS_NATS_URL": nats_url, "CHORUS_EXECUTOR_DEFAULTS": "0"}
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", "serve", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["executor", "--model", "text-classification"], "wants TASK=MODEL_ID_OR_PATH"),
        (
            ["executor", "--model", "text-classification=/no/such/dir"],
            "/no/such/dir: no such directory",
        ),
        (["executor", "--model", "canny-control=builtin:sobel"], "no such built-in"),
        (["executor", "--device", "tpu"], "CHORUS_DEVICE must be cpu or cuda"),
        (["executor"], "nothing to serve"),
    ],
)
def test_bad_executor_settings_stop_start_up_with_a_clear_line(
    nats_url: str, args: list[str], message: str
) -> None:
    done = _serve(nats_url, *args)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("chorus executor:") and message in last


def test_bad_settings_are_named_before_connecting() -> None:
    done = _serve("localhost:4222", "planner")
    assert done.returncode != 0
    assert "CHORUS_NATS_URL is not a nats/tls/ws/wss URL" in done.stderr
