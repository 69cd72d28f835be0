"""`chorus ask`: send one request over gRPC, show its progress, save what it generated."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TextIO

import grpc
from chorus.v1.messages_pb2 import ChatMessage, ChatRequest, ChatResponse, StopAfter

from services.cli.client import ChorusClient, describe_task, response_json
from services.common.tasks import status_name


class StreamEnded(RuntimeError):
    """The server closed the stream before the `done` event."""


STOP_AFTER = {"plan": StopAfter.STOP_AFTER_PLAN, "execute": StopAfter.STOP_AFTER_EXECUTE}


def ask(
    text: str, files: list[Path], *, addr: str, out: Path, as_json: bool, stop_after: str | None
) -> int:
    for path in files:
        if not path.is_file():
            print(f"chorus ask: no such file: {path}", file=sys.stderr)
            return 2
    client = ChorusClient(addr)
    try:
        message = ChatMessage(role="user", content=text)
        message.artifacts.extend(client.upload(p) for p in files)
        request = ChatRequest(
            messages=[message],
            stop_after=STOP_AFTER.get(stop_after or "", StopAfter.STOP_AFTER_UNSPECIFIED),
        )
        response = _run(client, request, sys.stderr if as_json else sys.stdout, quiet=as_json)
        saved = {a.id: client.download(a.id, out) for a in response.artifacts}
    except StreamEnded as e:
        print(f"chorus ask: {e}", file=sys.stderr)
        return 2
    except grpc.RpcError as e:
        code = e.code()
        if code == grpc.StatusCode.UNAVAILABLE and "connect" in str(e.details()).lower():
            print(
                f"chorus ask: cannot reach Chorus at {addr} (is `chorus up` running?)",
                file=sys.stderr,
            )
        else:
            print(f"chorus ask: {code.name}: {e.details()}", file=sys.stderr)
        return 2
    finally:
        client.close()
    if as_json:
        print(json.dumps(response_json(response, saved), indent=2, ensure_ascii=False))
    else:
        for path in saved.values():
            print(f"saved {path}")
    if response.HasField("error"):
        if not as_json:
            err = response.error
            print(f"error in {err.stage} ({err.code}): {err.message}", file=sys.stderr)
        return 1
    return 0


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
