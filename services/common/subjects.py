"""Every NATS subject, stream and bucket name Chorus uses, in one place.

Public contract (for event-driven integration):
    chorus.request                 ChatRequest   start a request
    chorus.event.<request_id>      ProgressEvent progress, answer tokens, and `done` last
    chorus.response.<request_id>   ChatResponse  the final response

Internal hand-offs between stages (stream CHORUS_WORK, work-queue retention):
    chorus.plan                    TaskPlan        planner   -> selector
    chorus.invoke.<task>.<route>   TaskInvocation  selector  -> executor (one consumer per pair;
                                                   route: a model, `llm` or `hf-inference`)
    chorus.result                  TaskResult      executor  -> selector
    chorus.report                  ExecutionReport selector  -> responder
    chorus.cancel.<request_id>     CancelRequest   front door -> selector (also read, without
                                                   a stream consumer, by executors)
    chorus.deadletter.<stage>      raw bytes of a message a stage could not decode or handle
"""

from __future__ import annotations

import hashlib
import re

REQUEST = "chorus.request"
PLAN = "chorus.plan"
RESULT = "chorus.result"
REPORT = "chorus.report"
CANCEL_PREFIX = "chorus.cancel"
INVOKE_PREFIX = "chorus.invoke"

WORK_STREAM = "CHORUS_WORK"
WORK_SUBJECTS = [REQUEST, PLAN, f"{INVOKE_PREFIX}.>", RESULT, REPORT, f"{CANCEL_PREFIX}.>"]
EVENTS_STREAM = "CHORUS_EVENTS"
EVENTS_SUBJECTS = ["chorus.event.>", "chorus.response.>"]
DEADLETTER_STREAM = "CHORUS_DEADLETTER"
DEADLETTER_SUBJECTS = ["chorus.deadletter.>"]

ARTIFACT_BUCKET = "chorus_artifacts"
WORKER_BUCKET = "chorus_workers"
RUN_STATE_BUCKET = "chorus_runs"
REQUEST_OWNER_BUCKET = "chorus_request_owners"  # request id -> the API key that sent it

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def valid_request_id(request_id: str) -> bool:
    """Request ids become subject tokens and KV keys: `>` or `.` in one would reach other requests."""
    return _REQUEST_ID.fullmatch(request_id) is not None


def event(request_id: str) -> str:
    return f"chorus.event.{request_id}"


def response(request_id: str) -> str:
    return f"chorus.response.{request_id}"


def cancel(request_id: str) -> str:
    return f"{CANCEL_PREFIX}.{request_id}"


def deadletter(stage: str) -> str:
    return f"chorus.deadletter.{stage}"


def subject_token(value: str) -> str:
    """A single NATS subject token for a free-form name such as a model id.

    Model ids hold `/` and `.`, which subjects cannot, so they are flattened and a
    short hash keeps two ids that flatten alike apart.
    """
    digest = hashlib.sha1(value.encode()).hexdigest()[:8]
    return f"{_UNSAFE.sub('_', value)[-48:]}-{digest}"


def invoke(task: str, route: str) -> str:
    return f"{INVOKE_PREFIX}.{subject_token(task)}.{subject_token(route)}"


def result_msg_id(request_id: str, task_id: int, attempt: int) -> str:
    """The dedup id of a task's result: a retry's result is a new message, not a duplicate."""
    return f"{request_id}.{task_id}.{attempt}.result"


def consumer_name(*parts: str) -> str:
    return "-".join(subject_token(p) if _UNSAFE.search(p) else p for p in parts)
