"""Files that tasks read and write, kept in the NATS object store; messages carry `ArtifactRef`s."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from chorus.v1.messages_pb2 import ArtifactRef
from nats.js import JetStreamContext
from nats.js.api import ObjectStoreConfig, StorageType
from nats.js.errors import BadRequestError, NotFoundError

from services.common import subjects
from services.common.artifact_refs import (
    ArtifactNotFound,
    kind_for,
    media_type_for,
    safe_file_name,
)
from services.common.outage import retrying

log = logging.getLogger(__name__)
ARTIFACT_TTL_S = 24 * 3600.0  # generated and uploaded files expire a day after they are written
_NAME_HEADER = "Chorus-Name"
_TYPE_HEADER = "Chorus-Media-Type"
_CHUNK_BYTES = 128 * 1024  # nats-py's chunk size


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
    async def open(cls, js: JetStreamContext, replicas: int = 1) -> ArtifactStore:
        config = ObjectStoreConfig(ttl=ARTIFACT_TTL_S, storage=StorageType.FILE, replicas=replicas)
        bucket = subjects.ARTIFACT_BUCKET
        try:
            await retrying(
                "create artifact bucket", lambda: js.create_object_store(bucket, config=config)
            )
        except BadRequestError as e:
            log.warning("the artifact bucket exists with other settings, which are kept: %s", e)
            await retrying("open artifact bucket", lambda: js.object_store(bucket))
        return cls(js, bucket)

    async def put(self, data: bytes, name: str, media_type: str | None = None) -> ArtifactRef:
        name = safe_file_name(name)
        media_type = media_type or media_type_for(name)
        artifact_id = f"{uuid.uuid4().hex[:16]}-{name}"
        # Retried through a NATS outage: a second put under the same id only writes it again.
        await retrying("store artifact", lambda: self._write(artifact_id, data, name, media_type))
        return ArtifactRef(
            id=artifact_id,
            name=name,
            media_type=media_type,
            kind=kind_for(media_type),
            size=len(data),
        )

    async def _write(self, artifact_id: str, data: bytes, name: str, media_type: str) -> None:
        nuid = uuid.uuid4().hex
        chunk_subject = f"$O.{self._bucket}.C.{nuid}"
        chunks = [data[i : i + _CHUNK_BYTES] for i in range(0, len(data), _CHUNK_BYTES)]
        for chunk in chunks:
            await self._js.publish(chunk_subject, chunk)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()
        info = {
            "name": artifact_id,
            "bucket": self._bucket,
            "nuid": nuid,
            "size": len(data),
            "chunks": len(chunks),
            "digest": f"SHA-256={digest}",
            "mtime": datetime.now(UTC).isoformat(),
            "headers": {_NAME_HEADER: name, _TYPE_HEADER: media_type},
            "options": {"max_chunk_size": _CHUNK_BYTES},
        }
        rollup = {"Nats-Rollup": "sub"}  # the newest metadata replaces any earlier one
        await self._js.publish(
            self._meta_subject(artifact_id), json.dumps(info).encode(), headers=rollup
        )

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

    async def info(self, artifact_id: str) -> ArtifactRef:
        """What is stored under this id, without fetching the bytes."""
        meta = await self._meta(artifact_id)
        return _ref(artifact_id, meta.get("headers") or {}, int(meta.get("size") or 0))

    async def get(self, artifact_id: str) -> tuple[ArtifactRef, bytes]:
        meta = await self._meta(artifact_id)
        subject = f"$O.{self._bucket}.C.{meta['nuid']}"
        parts: list[bytes] = []
        seq = 0
        for _ in range(int(meta.get("chunks") or 0)):
            try:
                after = functools.partial(
                    self._js.get_msg, self._stream, seq + 1, subject, direct=True, next=True
                )
                msg = await retrying("read artifact", after)
            except NotFoundError as e:
                raise ArtifactNotFound(f"artifact {artifact_id!r} lost a part (expired)") from e
            parts.append(msg.data or b"")
            seq = msg.seq or seq + 1
        data = b"".join(parts)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()
        if str(meta.get("digest", "")).removeprefix("SHA-256=") != digest:
            raise ArtifactNotFound(f"artifact {artifact_id!r} is damaged (its digest differs)")
        return _ref(artifact_id, meta.get("headers") or {}, len(data)), data


def _ref(artifact_id: str, headers: dict[str, str], size: int) -> ArtifactRef:
    name = headers.get(_NAME_HEADER, artifact_id)
    media_type = headers.get(_TYPE_HEADER, media_type_for(name))
    return ArtifactRef(
        id=artifact_id, name=name, media_type=media_type, kind=kind_for(media_type), size=size
    )
