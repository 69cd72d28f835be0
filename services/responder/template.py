"""The answer without an LLM: a readable account of what each task did and made."""

from __future__ import annotations

import json
from typing import Any

from chorus.v1.messages_pb2 import ExecutionReport, TaskOutput, TaskResult, TaskStatus

from services.common.tasks import status_name

MAX_TEXT_CHARS = 1000  # per output; the whole result is in the response's `results`


def templated_answer(report: ExecutionReport) -> str:
    if not report.results:
        return (
            "No model was needed for this request, and no LLM is configured to answer it "
            "directly. Set CHORUS_LLM_BASE_URL or CHORUS_LLM_API_KEY for free-form answers."
        )
    succeeded = sum(r.status == TaskStatus.TASK_STATUS_SUCCEEDED for r in report.results)
    lines = [f"I ran {len(report.results)} task(s) for your request; {succeeded} succeeded."]
    for r in report.results:
        head = f"{r.task_id + 1}. {r.task}" + (f" with {r.model}" if r.model else "")
        if r.status == TaskStatus.TASK_STATUS_SUCCEEDED:
            lines.append(f"{head}: {describe_outputs(r)}")
        else:
            lines.append(f"{head}: {status_name(r.status)} — {r.error}")
    files = [o.artifact.name for r in report.results for o in r.outputs if o.HasField("artifact")]
    if files:
        lines.append(f"Generated file(s): {', '.join(files)}.")
    return "\n".join(lines)


def describe_outputs(result: TaskResult) -> str:
    parts = [_describe(o) for o in result.outputs]
    return "; ".join(p for p in parts if p) or "(no output)"


def _describe(output: TaskOutput) -> str:
    which = output.WhichOneof("value")
    if which == "text":
        return _clip(output.text)
    if which == "artifact":
        return f"generated file {output.artifact.name}"
    if which == "json":
        try:
            value = json.loads(output.json)
        except ValueError:
            return f"{output.name}: {_clip(output.json)}"
        return f"{output.name}: {_readable(value)}"
    return ""


def _readable(value: Any) -> str:
    """Labels with scores as `POSITIVE (0.98)`, a bare number rounded, anything else as JSON."""
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        key = next((k for k in ("label", "entity_group", "entity", "word") if k in value[0]), None)
        if key is not None:
            shown = [
                f"{v.get(key)} ({v['score']:.2f})"
                if isinstance(v.get("score"), float)
                else str(v.get(key))
                for v in value[:5]
            ]
            more = f" and {len(value) - 5} more" if len(value) > 5 else ""
            return ", ".join(shown) + more
    return _clip(json.dumps(value, ensure_ascii=False))


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS] + " [...]"
