"""Chorus's events in OpenAI's response shapes. Pure: no I/O.

What an OpenAI chat client can show is the answer text and, in newer clients, a collapsible
`reasoning_content`: so the workflow (the plan, each task started and finished with its model
and time) streams as reasoning, and the files the tasks made are embedded in the answer as
markdown pointing at `/v1/files/<id>/content`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from chorus.v1.messages_pb2 import ArtifactRef, ChatResponse, ProgressEvent, TaskStatus

from services.common.tasks import status_name
from services.common.tokens import count_tokens

MODEL_ID = "chorus"


def file_url(base_url: str, artifact_id: str) -> str:
    return f"{base_url}/v1/files/{artifact_id}/content"


def files_markdown(artifacts: list[ArtifactRef], base_url: str) -> str:
    """Pictures as markdown images, everything else as links, one a line."""
    lines = []
    for a in artifacts:
        label = _markdown_text(a.name)
        url = file_url(base_url, a.id)
        lines.append(
            f"![{label}]({url})" if a.media_type.startswith("image/") else f"[{label}]({url})"
        )
    return "\n".join(lines)


def _markdown_text(name: str) -> str:
    # A file name is the caller's text: brackets and markup in it must not shape the link.
    return "".join(f"\\{c}" if c in "[]()<>*_`!\\" else c for c in name)


def workflow_line(event: ProgressEvent) -> str:
    """One line of the workflow for `reasoning_content`; "" for events that are not workflow."""
    kind = event.WhichOneof("event")
    if kind == "plan_ready":
        tasks = event.plan_ready.tasks
        if not tasks:
            return "Plan: no tasks; answering directly.\n"
        steps = "; ".join(f"#{t.id} {t.task}" for t in tasks)
        return f"Plan: {len(tasks)} task(s): {steps}.\n"
    if kind == "task_started":
        s = event.task_started
        return f"Task #{s.task_id} {s.task} started on {s.model}: {s.selection_reason}\n"
    if kind == "task_finished":
        r = event.task_finished
        outcome = status_name(r.status)
        line = f"Task #{r.task_id} {r.task} {outcome} on {r.model} in {r.seconds:.1f}s"
        if r.status != TaskStatus.TASK_STATUS_SUCCEEDED and r.error:
            line += f": {r.error}"
        return line + ".\n"
    return ""


@dataclass
class AnswerCut:
    """Honours `stop` and `max_tokens` on an answer that arrives in pieces.

    Text that might begin a stop sequence is held back until it is known not to.
    """

    stop: tuple[str, ...] = ()
    max_tokens: int | None = None
    finish_reason: str | None = None
    _held: str = ""
    _tokens: int = field(default=0)

    def feed(self, piece: str) -> str:
        """The part of `piece` (and what was held) that can be sent now."""
        if self.finish_reason is not None:
            return ""
        text = self._held + piece
        for s in self.stop:
            if (at := text.find(s)) >= 0:
                text, self.finish_reason = text[:at], "stop"
        keep = 0 if self.finish_reason else _stop_prefix(text, self.stop)
        text, self._held = text[: len(text) - keep], text[len(text) - keep :]
        return self._limit(text)

    def flush(self) -> str:
        text, self._held = self._held, ""
        return "" if self.finish_reason else self._limit(text)

    def _limit(self, text: str) -> str:
        if self.max_tokens is None:
            return text
        tokens = count_tokens(text)
        if self._tokens + tokens <= self.max_tokens:
            self._tokens += tokens
            return text
        words, kept = text.split(" "), []
        for word in words:
            if self._tokens + count_tokens(word) > self.max_tokens:
                break
            self._tokens += count_tokens(word)
            kept.append(word)
        self.finish_reason = "length"
        return " ".join(kept)


def _stop_prefix(text: str, stops: tuple[str, ...]) -> int:
    """How many characters at the end of `text` begin some stop sequence."""
    return max((n for s in stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)


def with_files(content: str, response: ChatResponse, base_url: str) -> str:
    """The answer (or its tail) with the files the request made embedded after it."""
    files = files_markdown(list(response.artifacts), base_url)
    return f"{content}\n\n{files}" if files else content


def completion(response: ChatResponse, content: str, finish: str, base_url: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{response.request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": MODEL_ID,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish,
            }
        ],
        "usage": usage(response, content),
        "chorus": extra(response, base_url),
    }


def chunk(request_id: str, delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": MODEL_ID,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def extra(response: ChatResponse, base_url: str) -> dict[str, Any]:
    """What Chorus adds to OpenAI's shape: the request id, notes, and the files made."""
    return {
        "request_id": response.request_id,
        "notes": list(response.notes),
        "artifacts": [
            {
                "id": a.id,
                "name": a.name,
                "media_type": a.media_type,
                "size": a.size,
                "url": file_url(base_url, a.id),
            }
            for a in response.artifacts
        ],
    }


def usage(response: ChatResponse, content: str) -> dict[str, int]:
    """Estimated (services.common.tokens): the request in, the answer out."""
    prompt = sum(count_tokens(m.content) for m in response.plan.request.messages)
    completion_tokens = count_tokens(content)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
    }


def error_body(message: str, kind: str, status: int, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def models() -> dict[str, Any]:
    model = {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "chorus"}
    return {"object": "list", "data": [model]}
