"""Files that tasks read and write, kept in the NATS object store; messages carry `ArtifactRef`s."""

from __future__ import annotations

import logging
import uuid

from chorus.v1.messages_pb2 import ArtifactRef
from nats.js import JetStreamContext
from nats.js.api import ObjectMeta, ObjectStoreConfig, StorageType
from nats.js.errors import (
    BadRequestError,
    NotFoundError,
    ObjectDeletedError,
    ObjectNotFoundError,
)
from nats.js.object_store import ObjectStore

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


class ArtifactStore:
    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    @classmethod
    async def open(cls, js: JetStreamContext, replicas: int = 1) -> ArtifactStore:
        config = ObjectStoreConfig(ttl=ARTIFACT_TTL_S, storage=StorageType.FILE, replicas=replicas)
        try:
            return cls(
                await retrying(
                    "create artifact bucket",
                    lambda: js.create_object_store(subjects.ARTIFACT_BUCKET, config=config),
                )
            )
        except BadRequestError as e:
            log.warning("the artifact bucket exists with other settings, which are kept: %s", e)
            return cls(
                await retrying(
                    "open artifact bucket", lambda: js.object_store(subjects.ARTIFACT_BUCKET)
                )
            )

    async def put(self, data: bytes, name: str, media_type: str | None = None) -> ArtifactRef:
        name = safe_file_name(name)
        media_type = media_type or media_type_for(name)
        artifact_id = f"{uuid.uuid4().hex[:16]}-{name}"
        meta = ObjectMeta(name=artifact_id, headers={_NAME_HEADER: name, _TYPE_HEADER: media_type})
        # Retried through a NATS outage: a second put under the same id only writes it again.
        await retrying("store artifact", lambda: self._store.put(artifact_id, data, meta=meta))
        return ArtifactRef(
            id=artifact_id,
            name=name,
            media_type=media_type,
            kind=kind_for(media_type),
            size=len(data),
        )

    async def info(self, artifact_id: str) -> ArtifactRef:
        """What is stored under this id, without fetching the bytes."""
        try:
            info = await retrying("read artifact", lambda: self._store.get_info(artifact_id))
        except (NotFoundError, ObjectNotFoundError, ObjectDeletedError) as e:
            raise ArtifactNotFound(f"artifact {artifact_id!r} does not exist or expired") from e
        return _ref(artifact_id, info.headers or {}, int(info.size or 0))

    async def get(self, artifact_id: str) -> tuple[ArtifactRef, bytes]:
        try:
            result = await retrying("read artifact", lambda: self._store.get(artifact_id))
        except (NotFoundError, ObjectNotFoundError, ObjectDeletedError) as e:
            raise ArtifactNotFound(f"artifact {artifact_id!r} does not exist or expired") from e
        data = result.data or b""
        headers = (result.info.headers or {}) if result.info else {}
        return _ref(artifact_id, headers, len(data)), data


def _ref(artifact_id: str, headers: dict[str, str], size: int) -> ArtifactRef:
    name = headers.get(_NAME_HEADER, artifact_id)
    media_type = headers.get(_TYPE_HEADER, media_type_for(name))
    return ArtifactRef(
        id=artifact_id, name=name, media_type=media_type, kind=kind_for(media_type), size=size
    )
