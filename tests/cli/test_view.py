"""The live view on a terminal: the tree redrawn in place, then the answer below it."""

from __future__ import annotations

import io
import re

from chorus.v1.messages_pb2 import (
    ChatResponse,
    ProgressEvent,
    Task,
    TaskPlan,
    TaskResult,
    TaskStarted,
    TaskStatus,
)

from services.cli.view import ProgressView


def test_a_terminal_gets_the_tree_redrawn_in_place_then_the_answer() -> None:
    out = io.StringIO()
    view = ProgressView(out, live=True, width=40)
    plan = TaskPlan(tasks=[Task(id=0, task="summarization"), Task(id=1, task="translation")])
    view.on_event(ProgressEvent(plan_ready=plan))
    long_model = "an-organisation/a-model-name-far-wider-than-the-terminal"
    view.on_event(ProgressEvent(task_started=TaskStarted(task_id=0, model=long_model)))
    finished = TaskResult(task_id=0, model=long_model, status=TaskStatus.TASK_STATUS_SUCCEEDED)
    finished.seconds = 1.25
    view.on_event(ProgressEvent(task_finished=finished))
    for piece in ["Short ", "answer."]:
        view.on_event(ProgressEvent(answer_token=piece))
    view.on_event(ProgressEvent(done=ChatResponse(answer="Short answer.")))
    view.close()
    text = out.getvalue()
    assert text.startswith("plan: 2 task(s)\n")
    assert text.count("plan: 2 task(s)") == 1  # the tree is redrawn, the heading never
    assert "\x1b[2K\x1b[1A\x1b[2K" in text  # up over the rows drawn before, erased, drawn again
    screen = _ANSI.sub("", text.rsplit("\x1b[2K", 1)[1])
    tree, answer = screen.split("\n\n", 1)
    rows = tree.splitlines()
    assert rows[0].startswith("  ├─ ✓ [0] summarization()  an-organ") and rows[0].endswith("…")
    assert rows[1] == "  └─ · [1] translation()  waiting"
    assert all(len(row) <= 40 for row in rows)  # cut at the edge, never wrapped
    assert answer == "Short answer.\n\n"


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
