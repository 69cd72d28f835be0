"""`chorus ask`: send one request over gRPC, show its progress, save what it generated."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import grpc
from chorus.v1.messages_pb2 import ChatMessage, ChatRequest, ChatResponse, StopAfter

from services.cli.client import ChorusClient, describe_task, plan_json, response_json
from services.common.tasks import status_name


class StreamEnded(RuntimeError):
    """The server closed the stream before the `done` event."""


STOP_AFTER = {"plan": StopAfter.STOP_AFTER_PLAN, "execute": StopAfter.STOP_AFTER_EXECUTE}


def ask(
    text: str, files: list[Path], *, addr: str, out: Path, as_json: bool, stop_after: str | None
) -> int:
    """`chorus ask`: progress as it happens, the answer, the saved files (or one JSON object)."""
    stop = STOP_AFTER.get(stop_after or "", StopAfter.STOP_AFTER_UNSPECIFIED)

    def run(client: ChorusClient, request: ChatRequest) -> int:
        request.stop_after = stop
        response = _run(client, request, sys.stderr if as_json else sys.stdout, quiet=as_json)
        saved = {a.id: client.download(a.id, out) for a in response.artifacts}
        if as_json:
            print(json.dumps(response_json(response, saved), indent=2, ensure_ascii=False))
        else:
            for path in saved.values():
                print(f"saved {path}")
        return _report_error(response, quiet=as_json)

    return _with_client("ask", text, files, addr, run)


def plan(text: str, files: list[Path], *, addr: str) -> int:
    """`chorus plan`: the plan alone, as JSON in HuggingGPT's shape; notes on stderr."""

    def run(client: ChorusClient, request: ChatRequest) -> int:
        request.stop_after = StopAfter.STOP_AFTER_PLAN
        response = _run(client, request, sys.stderr, quiet=True)
        print(json.dumps(plan_json(response.plan.tasks), indent=2, ensure_ascii=False))
        for note in response.plan.notes:
            print(f"note: {note}", file=sys.stderr)
        return _report_error(response, quiet=False)

    return _with_client("plan", text, files, addr, run)


def _with_client(
    command: str,
    text: str,
    files: list[Path],
    addr: str,
    run: Callable[[ChorusClient, ChatRequest], int],
) -> int:
    """Uploads the files, builds the request, runs `run`; gRPC failures become one clear line."""
    for path in files:
        if not path.is_file():
            print(f"chorus {command}: no such file: {path}", file=sys.stderr)
            return 2
    client = ChorusClient(addr)
    try:
        message = ChatMessage(role="user", content=text)
        message.artifacts.extend(client.upload(p) for p in files)
        return run(client, ChatRequest(messages=[message]))
    except StreamEnded as e:
        print(f"chorus {command}: {e}", file=sys.stderr)
        return 2
    except grpc.RpcError as e:
        code = e.code()
        if code == grpc.StatusCode.UNAVAILABLE and "connect" in str(e.details()).lower():
            print(
                f"chorus {command}: cannot reach Chorus at {addr} (is `chorus up` running?)",
                file=sys.stderr,
            )
        else:
            print(f"chorus {command}: {code.name}: {e.details()}", file=sys.stderr)
        return 2
    finally:
        client.close()


def _report_error(response: ChatResponse, quiet: bool) -> int:
    if not response.HasField("error"):
        return 0
    if not quiet:
        err = response.error
        print(f"error in {err.stage} ({err.code}): {err.message}", file=sys.stderr)
    return 1


def _run(client: ChorusClient, request: ChatRequest, out: TextIO, quiet: bool) -> ChatResponse:
    """Streams the request, printing progress as it happens; returns the final response."""
    started = time.monotonic()

    def say(line: str) -> None:
        if not quiet:
            print(f"{time.monotonic() - started:6.2f}s  {line}", file=out, flush=True)

    answering = False
    for event in client.stream_chat(request):
        kind = event.WhichOneof("event")
        if kind == "plan_ready":
            plan = event.plan_ready
            say(f"plan: {len(plan.tasks)} task(s)" + "".join(f"; {n}" for n in plan.notes))
            for task in plan.tasks:
                say(f"  {describe_task(task)}")
        elif kind == "task_started":
            s = event.task_started
            say(f"task {s.task_id} {s.task} -> {s.model} ({s.selection_reason})")
        elif kind == "task_finished":
            r = event.task_finished
            detail = r.error or ", ".join(
                o.text or o.artifact.name for o in r.outputs if o.text or o.artifact.name
            )
            say(f"task {r.task_id} {status_name(r.status)} in {r.seconds:.2f}s: {detail[:200]}")
        elif kind == "answer_token":
            if not quiet:
                if not answering:
                    print("\n", file=out, end="")
                    answering = True
                print(event.answer_token, end="", file=out, flush=True)
        elif kind == "done":
            if answering:
                print("\n", file=out)
            for note in event.done.notes:
                say(f"note: {note}")
            return event.done
    raise StreamEnded("the event stream ended without a response")
