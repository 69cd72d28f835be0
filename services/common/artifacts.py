"""Files that tasks read and write, kept in the NATS object store; messages carry `ArtifactRef`s."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from chorus.v1.messages_pb2 import ArtifactRef
from nats.js import JetStreamContext
from nats.js.api import ObjectStoreConfig, StorageType
from nats.js.errors import BadRequestError, NotFoundError

from services.common import bus, subjects
from services.common.artifact_refs import (
    MEDIA_TYPE,
    ArtifactNotFound,
    checked_media_type,
    kind_for,
    media_type_for,
    safe_file_name,
)
from services.common.outage import retrying
from services.common.settings import DEFAULT_ARTIFACT_MAX_BYTES

log = logging.getLogger(__name__)
ARTIFACT_TTL_S = 24 * 3600.0  # generated and uploaded files expire a day after they are written
_NAME_HEADER = "Chorus-Name"
_TYPE_HEADER = "Chorus-Media-Type"
_OWNER_HEADER = "Chorus-Owner"
_REQUEST_HEADER = "Chorus-Request-Id"
_OCTETS = "application/octet-stream"
_CHUNK_BYTES = 128 * 1024  # nats-py's chunk size
_CHUNKS_IN_FLIGHT = 8  # a large file's chunks awaited 1 MiB at a time, within nats-py's buffer


@dataclass(frozen=True)
class Stored:
    """What is stored under an id, from its metadata (not its bytes), and who made it."""

    ref: ArtifactRef
    uploader: str  # the owner that uploaded it; "" where none
    made_for: str  # the request it was made for; "" where none


class ArtifactStore:
    """The object store, read and written in its own format (nats-py's `ObjectStore` and the
    `nats` CLI read what this writes) with fewer round trips than its client: a read is direct
    gets (its metadata, then each chunk) instead of a new consumer per read, and a write skips
    the look for an earlier object of that name (every id is new)."""

    def __init__(self, js: JetStreamContext, bucket: str) -> None:
        self._js = js
        self._bucket = bucket
        self._stream = f"OBJ_{bucket}"

    @classmethod
    async def open(
        cls, js: JetStreamContext, replicas: int = 1, max_bytes: int = DEFAULT_ARTIFACT_MAX_BYTES
    ) -> ArtifactStore:
        config = ObjectStoreConfig(
            ttl=ARTIFACT_TTL_S, storage=StorageType.FILE, replicas=replicas, max_bytes=max_bytes
        )
        bucket = subjects.ARTIFACT_BUCKET
        try:
            await retrying(
                "create artifact bucket", lambda: js.create_object_store(bucket, config=config)
            )
        except BadRequestError as e:
            log.warning("the artifact bucket exists with other settings, which are kept: %s", e)
            await retrying("open artifact bucket", lambda: js.object_store(bucket))
        return cls(js, bucket)

    async def put(
        self,
        data: bytes | IO[bytes],
        name: str,
        media_type: str | None = None,
        *,
        owner: str = "",
        request_id: str = "",
    ) -> ArtifactRef:
        """Stores `data` (bytes, or a seekable file read in chunks) under a new unguessable id.

        `owner` is the API key that uploaded it; a generated file names the `request_id` it
        was made for instead, and belongs to that request's owner. A media type that is not
        a plain `type/subtype` raises `BadMediaType`: it would be echoed in a header.
        """
        name = safe_file_name(name)
        media_type = checked_media_type(media_type) if media_type else media_type_for(name)
        artifact_id = f"{secrets.token_hex(16)}-{name}"  # 128 random bits
        headers = {_NAME_HEADER: name, _TYPE_HEADER: media_type}
        if owner:
            headers[_OWNER_HEADER] = owner
        if request_id:
            headers[_REQUEST_HEADER] = request_id
        # Retried through a NATS outage: a second put under the same id only writes it again.
        size = await retrying("store artifact", lambda: self._write(artifact_id, data, headers))
        return ArtifactRef(
            id=artifact_id, name=name, media_type=media_type, kind=kind_for(media_type), size=size
        )

    async def _write(
        self, artifact_id: str, data: bytes | IO[bytes], headers: dict[str, str]
    ) -> int:
        nuid = uuid.uuid4().hex
        chunk_subject = f"$O.{self._bucket}.C.{nuid}"
        digest, size, chunks = hashlib.sha256(), 0, 0
        sending: list[Awaitable[object]] = []
        for chunk in _chunks(data):
            sending.append(self._js.publish(chunk_subject, chunk))
            digest.update(chunk)
            size, chunks = size + len(chunk), chunks + 1
            if len(sending) == _CHUNKS_IN_FLIGHT:
                await bus.pipelined(sending)
                sending = []
        info = {
            "name": artifact_id,
            "bucket": self._bucket,
            "nuid": nuid,
            "size": size,
            "chunks": chunks,
            "digest": f"SHA-256={base64.urlsafe_b64encode(digest.digest()).decode()}",
            "mtime": datetime.now(UTC).isoformat(),
            "headers": headers,
            "options": {"max_chunk_size": _CHUNK_BYTES},
        }
        rollup = {"Nats-Rollup": "sub"}  # the newest metadata replaces any earlier one
        # Sent behind the last chunks on the same connection, so the server stores it after
        # them; their acks are awaited together (one round trip for a small file, not two).
        sending.append(
            self._js.publish(
                self._meta_subject(artifact_id), json.dumps(info).encode(), headers=rollup
            )
        )
        await bus.pipelined(sending)  # a failure: the caller's retry writes the whole file again
        return size

    def _meta_subject(self, artifact_id: str) -> str:
        encoded = base64.urlsafe_b64encode(artifact_id.encode()).decode()
        return f"$O.{self._bucket}.M.{encoded}"

    async def _meta(self, artifact_id: str) -> dict[str, Any]:
        subject = self._meta_subject(artifact_id)
        try:
            msg = await retrying(
                "read artifact", lambda: self._js.get_last_msg(self._stream, subject, direct=True)
            )
            meta = json.loads(msg.data or b"{}")
        except (NotFoundError, ValueError) as e:
            raise ArtifactNotFound(f"artifact {artifact_id!r} does not exist or expired") from e
        if not isinstance(meta, dict) or meta.get("deleted") or not meta.get("nuid"):
            raise ArtifactNotFound(f"artifact {artifact_id!r} does not exist or expired")
        return meta

    async def described(self, artifact_id: str) -> Stored:
        """What is stored under this id, without fetching the bytes, with who made it."""
        return _stored(artifact_id, await self._meta(artifact_id))

    async def info(self, artifact_id: str) -> ArtifactRef:
        """What is stored under this id, without fetching the bytes."""
        return (await self.described(artifact_id)).ref

    async def get(self, artifact_id: str) -> tuple[ArtifactRef, bytes]:
        meta = await self._meta(artifact_id)
        data = b"".join([part async for part in self._parts(artifact_id, meta)])
        return _ref(artifact_id, meta.get("headers") or {}, len(data)), data

    async def stream(self, artifact_id: str) -> tuple[Stored, AsyncIterator[bytes]]:
        """What is stored under this id, and its bytes one stored chunk (128 KiB) at a time,
        each read when the one before has been taken: a download of any size holds one chunk.
        A lost part, or a digest that differs at the end, raises `ArtifactNotFound` from the
        iterator, after the parts before it."""
        meta = await self._meta(artifact_id)
        return _stored(artifact_id, meta), self._parts(artifact_id, meta)

    async def _parts(self, artifact_id: str, meta: dict[str, Any]) -> AsyncIterator[bytes]:
        subject = f"$O.{self._bucket}.C.{meta['nuid']}"
        digest = hashlib.sha256()
        seq = 0
        for _ in range(int(meta.get("chunks") or 0)):
            try:
                after = functools.partial(
                    self._js.get_msg, self._stream, seq + 1, subject, direct=True, next=True
                )
                msg = await retrying("read artifact", after)
            except NotFoundError as e:
                raise ArtifactNotFound(f"artifact {artifact_id!r} lost a part (expired)") from e
            digest.update(msg.data or b"")
            seq = msg.seq or seq + 1
            yield msg.data or b""
        encoded = base64.urlsafe_b64encode(digest.digest()).decode()
        if str(meta.get("digest", "")).removeprefix("SHA-256=") != encoded:
            raise ArtifactNotFound(f"artifact {artifact_id!r} is damaged (its digest differs)")


def _stored(artifact_id: str, meta: dict[str, Any]) -> Stored:
    headers = meta.get("headers") or {}
    ref = _ref(artifact_id, headers, int(meta.get("size") or 0))
    return Stored(ref, headers.get(_OWNER_HEADER, ""), headers.get(_REQUEST_HEADER, ""))


def _ref(artifact_id: str, headers: dict[str, str], size: int) -> ArtifactRef:
    # Checked again on the way out: an object written straight to the bucket is read too.
    name = safe_file_name(headers.get(_NAME_HEADER, artifact_id))
    media_type = headers.get(_TYPE_HEADER) or media_type_for(name)
    if not MEDIA_TYPE.fullmatch(media_type):
        media_type = _OCTETS
    return ArtifactRef(
        id=artifact_id, name=name, media_type=media_type, kind=kind_for(media_type), size=size
    )


def _chunks(data: bytes | IO[bytes]) -> Iterator[bytes]:
    """The object store's chunks of `data`; a file is read from its start, one chunk at a time,
    so a retried write sends it whole again."""
    if isinstance(data, bytes | bytearray | memoryview):
        view = bytes(data)
        yield from (view[i : i + _CHUNK_BYTES] for i in range(0, len(view), _CHUNK_BYTES))
        return
    data.seek(0)
    while chunk := data.read(_CHUNK_BYTES):
        yield chunk
