"""What `chorus ask` and `chorus chat` show while a request runs.

The plan as a small tree, each task with its model, status and elapsed time, then the answer
as it streams. On a terminal the tree is one `rich` live display, redrawn in place, each row
cut to the terminal's width (a wrapped row would break the redraw); piped, each change is one
plain line, so logs and scripts read it too.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TextIO

from chorus.v1.messages_pb2 import ProgressEvent, TaskPlan, TaskStatus
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from services.cli.client import describe_task
from services.common.tasks import status_name

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
_MARK = {
    TaskStatus.TASK_STATUS_SUCCEEDED: "✓",
    TaskStatus.TASK_STATUS_FAILED: "✗",
    TaskStatus.TASK_STATUS_SKIPPED: "-",
}


@dataclass
class _Row:
    label: str
    model: str = ""
    status: str = "waiting"
    mark: str = "·"
    started: float | None = None
    seconds: float | None = None
    detail: str = ""


class ProgressView:
    """Consumes a request's events and writes them to `out`; `live` redraws in place."""

    def __init__(self, out: TextIO, *, live: bool, width: int | None = None) -> None:
        self._out = out
        self._live = live
        self._started = time.monotonic()
        self._rows: dict[int, _Row] = {}
        self._answering = False
        self._final = False
        self._lock = threading.Lock()
        self._display: Live | None = None
        # `width` for tests; on a terminal rich asks the terminal (and follows a resize).
        self._console = Console(file=out, force_terminal=live, width=width, highlight=False)

    def on_event(self, event: ProgressEvent) -> None:
        kind = event.WhichOneof("event")
        with self._lock:
            if kind == "plan_ready":
                self._plan(event.plan_ready)
            elif kind == "task_started":
                s = event.task_started
                row = self._rows.setdefault(s.task_id, _Row(f"[{s.task_id}] {s.task}"))
                row.model, row.status, row.started = s.model, "running", time.monotonic()
                self._changed(row, f"{row.label} -> {s.model} ({s.selection_reason})")
            elif kind == "task_waiting":
                w = event.task_waiting
                row = self._rows.setdefault(w.task_id, _Row(f"[{w.task_id}] {w.task}"))
                row.status = "waiting for a replica"
                self._changed(row, f"{row.label} {w.reason}")
            elif kind == "task_finished":
                r = event.task_finished
                row = self._rows.setdefault(r.task_id, _Row(f"[{r.task_id}] {r.task}"))
                row.model = r.model or row.model
                row.status, row.mark, row.seconds = (
                    status_name(r.status),
                    _MARK.get(r.status, "?"),
                    r.seconds,
                )
                row.detail = r.error or ", ".join(
                    o.text or o.artifact.name for o in r.outputs if o.text or o.artifact.name
                )
                self._changed(
                    row, f"{row.label} {row.status} in {r.seconds:.2f}s: {row.detail[:200]}"
                )
            elif kind == "answer_token":
                self._token(event.answer_token)
            elif kind == "done":
                self._finish(event)

    def close(self) -> None:
        self._stop_display()

    def _plan(self, plan: TaskPlan) -> None:
        for task in plan.tasks:
            self._rows[task.id] = _Row(describe_task(task))
        notes = "".join(f"; {n}" for n in plan.notes)
        if not self._live:
            self._line(f"plan: {len(plan.tasks)} task(s){notes}")
            for i, task in enumerate(plan.tasks):
                branch = "└─" if i == len(plan.tasks) - 1 else "├─"
                self._line(f"  {branch} {describe_task(task)}")
            return
        self._out.write(f"plan: {len(plan.tasks)} task(s){notes}\n")
        self._display = Live(
            console=self._console, get_renderable=self._tree, refresh_per_second=10
        )
        self._display.start()

    def _changed(self, row: _Row, line: str) -> None:
        if self._display is not None:
            self._display.refresh()
        elif not self._live:
            self._line(line)

    def _stop_display(self) -> None:
        """The last drawing of the tree stays; what follows goes below it."""
        self._final = True
        if self._display is not None:
            self._display.refresh()
            self._display.stop()
            self._display = None

    def _token(self, piece: str) -> None:
        if not self._answering:
            self._answering = True
            self._stop_display()
            self._out.write("\n")
        self._out.write(piece)
        self._out.flush()

    def _finish(self, event: ProgressEvent) -> None:
        self._stop_display()
        if self._answering:
            self._out.write("\n\n")
        for note in event.done.notes:
            self._line(f"note: {note}")
        self._out.flush()

    def _line(self, text: str) -> None:
        self._out.write(f"{time.monotonic() - self._started:6.2f}s  {text}\n")
        self._out.flush()

    def _tree(self) -> Group:
        """The rows now, one line each, cut at the terminal's edge."""
        frame = SPINNER[int(time.monotonic() * 10) % len(SPINNER)]
        lines = []
        rows = list(self._rows.values())
        for i, row in enumerate(rows):
            branch = "└─" if i == len(rows) - 1 else "├─"
            mark = frame if row.status == "running" and not self._final else row.mark
            if row.seconds is not None:
                elapsed = f"{row.seconds:.1f}s"
            elif row.started is not None:
                elapsed = f"{time.monotonic() - row.started:.1f}s"
            else:
                elapsed = ""
            model = f"  {row.model}" if row.model else ""
            line = f"  {branch} {mark} {row.label}{model}  {row.status} {elapsed}".rstrip()
            lines.append(Text(line, no_wrap=True, overflow="ellipsis"))
        return Group(*lines)
