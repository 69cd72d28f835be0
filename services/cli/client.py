"""The gRPC client side of Chorus: uploads, streamed chat, downloads, and the JSON view."""

from __future__ import annotations

import json
import mimetypes
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc
from chorus.v1 import chorus_pb2_grpc
from chorus.v1.chorus_pb2 import ArtifactChunk, DownloadArtifactRequest
from chorus.v1.messages_pb2 import (
    ArtifactRef,
    ChatRequest,
    ChatResponse,
    ProgressEvent,
    Task,
    TaskArgument,
    TaskResult,
)

from services.common.artifact_refs import media_type_for, safe_file_name
from services.common.events import code_name
from services.common.settings import SettingsError
from services.common.tasks import status_name

CHUNK_BYTES = 256 * 1024


def tls_credentials(
    ca: Path | None, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials | None:
    """For a gateway serving gRPC over TLS: `ca` is the PEM file of the CA that signed its
    certificate (None: the system's roots), `cert` and `key` this client's for mutual TLS.
    None when none is given: plain gRPC. A file that cannot be read is a `SettingsError`."""
    if ca is None and cert is None and key is None:
        return None
    if (cert is None) != (key is None):
        raise SettingsError("--tls-cert and --tls-key (CHORUS_TLS_CERT, _KEY) go together")
    return grpc.ssl_channel_credentials(
        root_certificates=_pem("--tls-ca", ca),
        private_key=_pem("--tls-key", key),
        certificate_chain=_pem("--tls-cert", cert),
    )


def _pem(option: str, path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as e:
        raise SettingsError(f"{option}: cannot read {path}: {e}") from e


class ChorusClient:
    def __init__(
        self,
        addr: str,
        api_key: str | None = None,
        tls: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.addr = addr
        self._channel = (
            grpc.insecure_channel(addr) if tls is None else grpc.secure_channel(addr, tls)
        )
        self._stub = chorus_pb2_grpc.ChorusStub(self._channel)
        # Sent with every call; a gateway without keys ignores it.
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()

    def close(self) -> None:
        self._channel.close()

    def upload(self, path: Path) -> ArtifactRef:
        def chunks() -> Iterator[ArtifactChunk]:
            with path.open("rb") as f:
                first = True
                while data := f.read(CHUNK_BYTES):
                    chunk = ArtifactChunk(data=data)
                    if first:
                        chunk.name, chunk.media_type = path.name, media_type_for(path.name)
                        first = False
                    yield chunk
                if first:  # an empty file still needs its name
                    yield ArtifactChunk(name=path.name, media_type=media_type_for(path.name))

        return self._stub.UploadArtifact(chunks(), metadata=self._metadata)  # type: ignore[no-any-return]

    def stream_chat(self, request: ChatRequest) -> Iterator[ProgressEvent]:
        return self._stub.StreamChat(request, metadata=self._metadata)  # type: ignore[no-any-return]

    def download(self, artifact_id: str, out_dir: Path) -> Path:
        out_dir.mkdir(parents=True, exist_ok=True)
        chunks = self._stub.DownloadArtifact(
            DownloadArtifactRequest(id=artifact_id), metadata=self._metadata
        )
        first = next(chunks)
        name = safe_file_name(first.name or artifact_id)
        if not Path(name).suffix and first.media_type:  # a file type the OS can open it by
            name += mimetypes.guess_extension(first.media_type) or ""
        target = _unused(out_dir / name)
        # Written beside the target and renamed once whole: a download that breaks half-way
        # leaves nothing that looks like the file.
        partial = target.with_name(f".{target.name}.part")
        try:
            with partial.open("wb") as f:
                f.write(first.data)
                for chunk in chunks:
                    f.write(chunk.data)
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
        return target


def _unused(path: Path) -> Path:
    n = 1
    candidate = path
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1
    return candidate


def argument_value(arg: TaskArgument) -> str:
    which = arg.WhichOneof("value")
    if which == "artifact":
        return str(arg.artifact.name)
    if which == "generated":
        return f"<GENERATED>-{arg.generated.task_id}"
    return str(arg.text)


def plan_json(tasks: Iterable[Task]) -> list[dict[str, Any]]:
    """The plan in HuggingGPT's shape: `{"id", "task", "dep", "args"}`, `dep` [] when none."""
    return [
        {
            "id": t.id,
            "task": t.task,
            "dep": list(t.deps),
            "args": {a.name: argument_value(a) for a in t.args},
        }
        for t in tasks
    ]


def result_json(result: TaskResult) -> dict[str, Any]:
    outputs = []
    for o in result.outputs:
        which = o.WhichOneof("value")
        value: Any = o.artifact.name if which == "artifact" else getattr(o, which or "text")
        if which == "json":
            value = json.loads(value)
        outputs.append({"name": o.name, which or "text": value})
    return {
        "id": result.task_id,
        "task": result.task,
        "model": result.model,
        "status": status_name(result.status),
        "outputs": outputs,
        "error": result.error,
        "reason": result.selection_reason,
        "seconds": round(result.seconds, 4),
    }


def response_json(response: ChatResponse, saved: dict[str, Path]) -> dict[str, Any]:
    error = response.error if response.HasField("error") else None
    return {
        "request_id": response.request_id,
        "plan": plan_json(response.plan.tasks),
        "results": [result_json(r) for r in response.results],
        "answer": response.answer,
        "artifacts": [
            {
                "id": a.id,
                "name": a.name,
                "media_type": a.media_type,
                "size": a.size,
                "path": str(saved[a.id]) if a.id in saved else None,
            }
            for a in response.artifacts
        ],
        "timings": {
            "planning_s": round(response.timings.planning_seconds, 4),
            "execution_s": round(response.timings.execution_seconds, 4),
            "response_s": round(response.timings.response_seconds, 4),
            "total_s": round(response.timings.total_seconds, 4),
        },
        "notes": list(response.notes),
        "error": {"stage": error.stage, "code": code_name(error.code), "message": error.message}
        if error
        else None,
    }


def describe_task(task: Task) -> str:
    args = ", ".join(f"{a.name}={argument_value(a)!r}" for a in task.args)
    deps = f" after {', '.join(map(str, task.deps))}" if task.deps else ""
    return f"[{task.id}] {task.task}({args}){deps}"
