"""`chorus up` as processes, driven through `chorus ask --json` like a user would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from services.cli.cluster import free_port

pytestmark = pytest.mark.slow
CHORUS = [sys.executable, "-m", "services.cli.main"]


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def chorus_up(
    tmp_path_factory: pytest.TempPathFactory, tiny_classifier: Path
) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("home")
    env = {
        **os.environ,
        "CHORUS_GRPC_ADDR": f"127.0.0.1:{free_port()}",
        "CHORUS_OPENAI_ADDR": f"127.0.0.1:{free_port()}",
        "HF_HOME": str(home),
    }
    proc = subprocess.Popen(
        [
            *CHORUS,
            "up",
            "--model",
            f"text-classification={tiny_classifier}",
            "--log-dir",
            str(home / "logs"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "Chorus is up" in line or not line:
            break
    assert any("Chorus is up" in line for line in lines), "".join(lines)
    children = _children(proc.pid)
    yield {"env": env, "proc": proc, "children": children, "tmp": home}
    if proc.poll() is None:
        proc.kill()


def _ask(up: dict[str, Any], *args: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [*CHORUS, "ask", *args, "--json", "--out", str(up["tmp"] / "out")],
        env=up["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else {
        "stderr": done.stderr
    }


def test_a_request_through_chorus_ask_json(chorus_up: dict[str, Any]) -> None:
    code, out = _ask(chorus_up, "What is the sentiment of 'i great movie'?")
    assert code == 0, out
    assert out["plan"] == [
        {"id": 0, "task": "text-classification", "dep": [], "args": {"text": "i great movie"}}
    ]
    (result,) = out["results"]
    assert result["status"] == "succeeded" and result["model"].endswith("tiny-bert0")
    assert out["answer"] and out["request_id"] and out["timings"]["total_s"] > 0
    assert any("offline rules planner" in n for n in out["notes"])


def test_an_uploaded_file_is_found_by_name_and_outputs_are_saved(
    chorus_up: dict[str, Any], tmp_path: Path
) -> None:
    photo = tmp_path / "photo.png"
    image = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(image).ellipse([16, 16, 48, 48], fill="black")
    image.save(photo)
    code, out = _ask(chorus_up, "Find the edges in photo.png", "--file", str(photo))
    assert code == 0, out
    assert out["plan"][0]["args"] == {"image": "photo.png"}
    (artifact,) = out["artifacts"]
    saved = Path(artifact["path"])
    assert saved.parent == chorus_up["tmp"] / "out" and Image.open(saved).size == (64, 64)


def test_sentence_similarity_runs_on_the_bundled_model(chorus_up: dict[str, Any]) -> None:
    code, out = _ask(chorus_up, 'How similar are "a cat sleeps" and "a kitten naps"?')
    assert code == 0, out
    (result,) = out["results"]
    assert result["model"] == "bundled:all-MiniLM-L6-v2" and result["status"] == "succeeded"
    score = next(o["json"] for o in result["outputs"] if o["name"] == "score")
    assert 0.2 < score <= 1.0


def test_chorus_plan_prints_the_plan_in_hugginggpts_shape(chorus_up: dict[str, Any]) -> None:
    done = subprocess.run(
        [*CHORUS, "plan", "Generate an image of a red fox, then describe it"],
        env=chorus_up["env"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [
        {
            "id": 0,
            "task": "text-to-image",
            "dep": [],
            "args": {"text": "Generate an image of a red fox, then describe it"},
        },
        {"id": 1, "task": "image-to-text", "dep": [0], "args": {"image": "<GENERATED>-0"}},
    ]
    assert "offline rules planner" in done.stderr


def test_chorus_up_serves_the_openai_compatible_endpoint(chorus_up: dict[str, Any]) -> None:
    from openai import OpenAI

    addr = chorus_up["env"]["CHORUS_OPENAI_ADDR"]
    with OpenAI(base_url=f"http://{addr}/v1", api_key="unused", max_retries=0) as client:
        assert [m.id for m in client.models.list().data] == ["chorus"]
        reply = client.chat.completions.create(
            model="chorus",
            messages=[{"role": "user", "content": "What is the sentiment of 'i great movie'?"}],
        )
    assert "text-classification" in (reply.choices[0].message.content or "")


def test_the_locked_bus_refused_no_service_anything(chorus_up: dict[str, Any]) -> None:
    """Every service ran the requests above as its own narrowed NATS user (services/common/
    roles.py): the server never had to refuse one of them a publish or a subscription."""
    log = (chorus_up["tmp"] / "logs" / "nats.log").read_text(errors="replace")
    assert "Server is ready" in log
    assert [line for line in log.splitlines() if "Violation" in line] == []


def test_sigterm_stops_everything(chorus_up: dict[str, Any]) -> None:
    proc: subprocess.Popen[str] = chorus_up["proc"]
    assert len(chorus_up["children"]) == 5  # NATS and four services
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in chorus_up["children"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in chorus_up["children"] if _alive(p)]
