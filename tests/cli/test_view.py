"""The live view on a terminal: the tree redrawn in place, then the answer below it."""

from __future__ import annotations

import io

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
    view = ProgressView(out, live=True)
    plan = TaskPlan(tasks=[Task(id=0, task="summarization"), Task(id=1, task="translation")])
    view.on_event(ProgressEvent(plan_ready=plan))
    view.on_event(ProgressEvent(task_started=TaskStarted(task_id=0, model="tiny/sum")))
    finished = TaskResult(task_id=0, model="tiny/sum", status=TaskStatus.TASK_STATUS_SUCCEEDED)
    finished.seconds = 1.25
    view.on_event(ProgressEvent(task_finished=finished))
    for piece in ["Short ", "answer."]:
        view.on_event(ProgressEvent(answer_token=piece))
    view.on_event(ProgressEvent(done=ChatResponse(answer="Short answer.")))
    view.close()
    text = out.getvalue()
    assert text.startswith("plan: 2 task(s)\n")
    assert "\x1b[2F\x1b[J" in text  # up over the two rows drawn before, clear, draw again
    last_tree = text.rsplit("\x1b[J", 1)[1]
    assert "├─ ✓ [0] summarization()  tiny/sum  succeeded 1.2s" in last_tree
    assert "└─ · [1] translation()  waiting" in last_tree
    assert last_tree.endswith("\nShort answer.\n\n")
