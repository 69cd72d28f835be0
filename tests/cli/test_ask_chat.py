"""`chorus ask` and `chorus chat` against the services in this test's loop, as a user runs them."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from services.cli.ask import ask, chat
from tests.integration.stack import CANNY_ONLY, running_stack
from tests.support import ScriptedLLM, square_png


def _photo(folder: Path) -> Path:
    (folder / "square.png").write_bytes(square_png())
    return folder / "square.png"


@pytest.fixture
def llm(scripted_llm: ScriptedLLM) -> ScriptedLLM:
    scripted_llm.replies = ["The edges are in the saved file."]
    return scripted_llm


def _env(llm: ScriptedLLM) -> dict[str, str]:
    return {**CANNY_ONLY, "CHORUS_LLM_BASE_URL": llm.base_url, "CHORUS_PLANNER": "rules"}


async def test_ask_shows_the_plan_tree_progress_answer_and_saved_files(
    nats_url: str, llm: ScriptedLLM, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = _photo(tmp_path)
    async with running_stack(nats_url, _env(llm)) as settings:

        async def edges(out: str, *, as_json: bool = False, quiet: bool = False) -> int:
            return await asyncio.to_thread(
                ask,
                "Find the edges in square.png",
                [photo],
                addr=settings.grpc_addr,
                out=tmp_path / out,
                as_json=as_json,
                stop_after=None,
                quiet=quiet,
            )

        code = await edges("out")
        shown = capsys.readouterr().out
        quiet = await edges("out", quiet=True)
        answer_only = capsys.readouterr().out
        as_json = await edges("json", as_json=True)
        data = json.loads(capsys.readouterr().out)
    assert code == quiet == as_json == 0
    lines = shown.splitlines()
    # Not a terminal: plain lines, no escape codes.
    assert "\x1b" not in shown
    assert any("s  plan: 1 task(s)" in line for line in lines)
    assert any("└─ [0] canny-control(image='square.png')" in line for line in lines)
    assert any("-> builtin:canny" in line for line in lines)
    assert any("succeeded in" in line and "canny-control-0.png" in line for line in lines)
    assert "The edges are in the saved file." in lines
    saved = [line.removeprefix("saved ") for line in lines if line.startswith("saved ")]
    assert len(saved) == 1 and Image.open(saved[0]).size == (48, 48)
    assert answer_only == "The edges are in the saved file.\n"
    assert data["answer"] == "The edges are in the saved file."
    assert Path(data["artifacts"][0]["path"]).parent == tmp_path / "json"


async def test_chat_keeps_the_conversation_and_files_from_before(
    nats_url: str, llm: ScriptedLLM, tmp_path: Path
) -> None:
    photo = _photo(tmp_path)
    typed = io.StringIO(
        f"/file {photo}\n"
        "Find the edges in square.png\n"
        "\n"
        "Now find the edges of the image from before\n"
        "/quit\n"
        "never read\n"
    )
    shown = io.StringIO()
    async with running_stack(nats_url, _env(llm)) as settings:
        code = await asyncio.to_thread(chat, settings.grpc_addr, tmp_path / "out", typed, shown)
    assert code == 0
    lines = shown.getvalue().splitlines()
    assert "attached square.png" in lines
    plans = [line for line in lines if "└─ [0] canny-control(" in line]
    assert "image='square.png'" in plans[0]
    # The second turn works on the first turn's output, carried in the conversation.
    assert "image='canny-control-0.png'" in plans[1]
    saved = [line for line in lines if line.startswith("saved ")]
    assert len(saved) == 2 and len(llm.requests) == 2
    # The LLM saw the earlier turn, with the file it made.
    second = llm.requests[1]["messages"]
    assert any("[files: canny-control-0.png]" in m["content"] for m in second)
