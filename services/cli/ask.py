"""`chorus ask`: send one request over gRPC, show its progress, save what it generated."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

import grpc
from chorus.v1.messages_pb2 import ArtifactRef, ChatMessage, ChatRequest, ChatResponse, StopAfter
from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory, History, InMemoryHistory

from services.cli.client import ChorusClient, plan_json, response_json
from services.cli.view import ProgressView
from services.common.events import code_name


class StreamEnded(RuntimeError):
    """The server closed the stream before the `done` event."""


STOP_AFTER = {"plan": StopAfter.STOP_AFTER_PLAN, "execute": StopAfter.STOP_AFTER_EXECUTE}


def ask(
    text: str,
    files: list[Path],
    *,
    addr: str,
    out: Path,
    as_json: bool,
    stop_after: str | None,
    quiet: bool = False,
    api_key: str | None = None,
    tls: grpc.ChannelCredentials | None = None,
) -> int:
    """`chorus ask`: a live view, the answer as it streams, the saved files.

    `as_json`: one JSON object on stdout and nothing else; `quiet`: the answer alone.
    """
    stop = STOP_AFTER.get(stop_after or "", StopAfter.STOP_AFTER_UNSPECIFIED)

    def run(client: ChorusClient, request: ChatRequest) -> int:
        request.stop_after = stop
        shown = not (as_json or quiet)
        view = ProgressView(sys.stdout, live=sys.stdout.isatty()) if shown else None
        response = _run(client, request, view)
        saved = {a.id: client.download(a.id, out) for a in response.artifacts}
        if as_json:
            print(json.dumps(response_json(response, saved), indent=2, ensure_ascii=False))
        elif quiet:
            print(response.answer)
        else:
            for path in saved.values():
                print(f"saved {path}")
        return _report_error(response, quiet=as_json)

    return _with_client("ask", text, files, ChorusClient(addr, api_key, tls), run)


def _lines(stdin: TextIO) -> Iterator[str]:
    """What the user types: on a terminal with line editing and a history kept across
    sessions (arrows, Ctrl-R); piped, the lines as they come. Ends at Ctrl-D or Ctrl-C."""
    if not stdin.isatty():
        yield from stdin
        return
    session: PromptSession[str] = PromptSession(history=_history())
    while True:
        try:
            yield session.prompt("you> ")
        except (EOFError, KeyboardInterrupt):
            return


def _history() -> History:
    path = Path(os.environ.get("CHORUS_CHAT_HISTORY", Path.home() / ".chorus_chat_history"))
    try:
        path.touch(exist_ok=True)
    except OSError:  # a read-only home: this session's lines only
        return InMemoryHistory()
    return FileHistory(str(path))


def chat(
    addr: str,
    out: Path,
    stdin: TextIO,
    stdout: TextIO,
    api_key: str | None = None,
    tls: grpc.ChannelCredentials | None = None,
) -> int:
    """`chorus chat`: one conversation, a request per line; `/file PATH` attaches, `/quit` ends.

    The conversation (each turn's text and files, the answers' generated files included)
    goes with every request, so "the image from before" can be found.
    """
    client = ChorusClient(addr, api_key, tls)
    history: list[ChatMessage] = []
    attached: list[ArtifactRef] = []
    try:
        for line in _lines(stdin):
            text = line.strip()
            if text in ("/quit", "/exit"):
                return 0
            if text.startswith("/file "):
                path = Path(text.removeprefix("/file ").strip()).expanduser()
                if not path.is_file():
                    stdout.write(f"no such file: {path}\n")
                    continue
                attached.append(client.upload(path))
                stdout.write(f"attached {path.name}\n")
                continue
            if not text:
                continue
            message = ChatMessage(role="user", content=text, artifacts=attached)
            request = ChatRequest(messages=[*history, message])
            view = ProgressView(stdout, live=stdout.isatty())
            try:
                response = _run(client, request, view)
            except (StreamEnded, grpc.RpcError) as e:
                stdout.write(f"error: {_rpc_message(e, addr)}\n")
                continue
            attached = []
            for artifact in response.artifacts:
                stdout.write(f"saved {client.download(artifact.id, out)}\n")
            if response.HasField("error"):
                err = response.error
                stdout.write(f"error in {err.stage} ({code_name(err.code)}): {err.message}\n")
                continue
            history += [
                message,
                ChatMessage(
                    role="assistant", content=response.answer, artifacts=response.artifacts
                ),
            ]
        return 0
    finally:
        client.close()


def plan(
    text: str,
    files: list[Path],
    *,
    addr: str,
    api_key: str | None = None,
    tls: grpc.ChannelCredentials | None = None,
) -> int:
    """`chorus plan`: the plan alone, as JSON in HuggingGPT's shape; notes on stderr."""

    def run(client: ChorusClient, request: ChatRequest) -> int:
        request.stop_after = StopAfter.STOP_AFTER_PLAN
        response = _run(client, request, None)
        print(json.dumps(plan_json(response.plan.tasks), indent=2, ensure_ascii=False))
        for note in response.plan.notes:
            print(f"note: {note}", file=sys.stderr)
        return _report_error(response, quiet=False)

    return _with_client("plan", text, files, ChorusClient(addr, api_key, tls), run)


def _with_client(
    command: str,
    text: str,
    files: list[Path],
    client: ChorusClient,
    run: Callable[[ChorusClient, ChatRequest], int],
) -> int:
    """Uploads the files, builds the request, runs `run`; gRPC failures become one clear line."""
    for path in files:
        if not path.is_file():
            print(f"chorus {command}: no such file: {path}", file=sys.stderr)
            client.close()
            return 2
    try:
        message = ChatMessage(role="user", content=text)
        message.artifacts.extend(client.upload(p) for p in files)
        return run(client, ChatRequest(messages=[message]))
    except StreamEnded as e:
        print(f"chorus {command}: {e}", file=sys.stderr)
        return 2
    except grpc.RpcError as e:
        print(f"chorus {command}: {_rpc_message(e, client.addr)}", file=sys.stderr)
        return 2
    finally:
        client.close()


def _rpc_message(e: Exception, addr: str) -> str:
    if not isinstance(e, grpc.RpcError):
        return str(e)
    code, details = e.code(), str(e.details())
    unreachable = code == grpc.StatusCode.UNAVAILABLE
    if unreachable and "handshake" in details.lower():
        return f"no TLS connection with Chorus at {addr} (see --tls-ca): {details}"
    if unreachable and "connect" in details.lower():
        # A gateway serving TLS closes a plain connection, or one without a client certificate.
        return (
            f"cannot reach Chorus at {addr} (is `chorus up` running? does it serve TLS: see "
            f"--tls-ca, --tls-cert and --tls-key): {details}"
        )
    return f"{code.name}: {details}"


def _report_error(response: ChatResponse, quiet: bool) -> int:
    if not response.HasField("error"):
        return 0
    if not quiet:
        err = response.error
        print(f"error in {err.stage} ({code_name(err.code)}): {err.message}", file=sys.stderr)
    return 1


def _run(client: ChorusClient, request: ChatRequest, view: ProgressView | None) -> ChatResponse:
    """Streams the request through `view` (None: silently); returns the final response."""
    try:
        for event in client.stream_chat(request):
            if view is not None:
                view.on_event(event)
            if event.HasField("done"):
                return event.done
    finally:
        if view is not None:
            view.close()
    raise StreamEnded("the event stream ended without a response")
