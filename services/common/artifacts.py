"""Files that tasks read and write, kept in the NATS object store; messages carry `ArtifactRef`s."""

from __future__ import annotations

import logging
import mimetypes
import re
import secrets
from pathlib import PurePosixPath
from typing import IO

from chorus.v1.messages_pb2 import ArtifactRef, Kind
from nats.js import JetStreamContext
from nats.js.api import ObjectInfo, ObjectMeta, ObjectStoreConfig, StorageType
from nats.js.errors import (
    BadRequestError,
    NotFoundError,
    ObjectDeletedError,
    ObjectNotFoundError,
)
from nats.js.object_store import ObjectStore

from services.common import subjects
from services.common.settings import DEFAULT_ARTIFACT_MAX_BYTES

log = logging.getLogger(__name__)
ARTIFACT_TTL_S = 24 * 3600.0  # generated and uploaded files expire a day after they are written
_KIND_BY_MAJOR = {"image": Kind.KIND_IMAGE, "audio": Kind.KIND_AUDIO, "video": Kind.KIND_VIDEO}
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
# `type/subtype`, ASCII, no parameters: a media type that can be echoed in a header as it is.
MEDIA_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}/[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}")
_NAME_HEADER = "Chorus-Name"
_TYPE_HEADER = "Chorus-Media-Type"
_OWNER_HEADER = "Chorus-Owner"
_REQUEST_HEADER = "Chorus-Request-Id"
_OCTETS = "application/octet-stream"


class ArtifactNotFound(LookupError):
    """No artifact with this id (never stored, or expired)."""


class BadMediaType(ValueError):
    """A media type that is not `type/subtype` (CR/LF, parameters, non-ASCII)."""


def checked_media_type(media_type: str) -> str:
    """`media_type` if it is a plain `type/subtype`, else `BadMediaType`."""
    if not MEDIA_TYPE.fullmatch(media_type):
        raise BadMediaType(f"not a type/subtype media type: {media_type[:80]!r}")
    return media_type.lower()


def media_type_for(name: str) -> str:
    guessed, _ = mimetypes.guess_type(name)
    return guessed or "application/octet-stream"


def kind_for(media_type: str) -> Kind.ValueType:
    major = media_type.split("/", 1)[0]
    if major == "text":
        return Kind.KIND_TEXT
    return _KIND_BY_MAJOR.get(major, Kind.KIND_UNSPECIFIED)


def kind_for_name(name: str) -> Kind.ValueType:
    """The kind of a file name, path or URL, by its extension (a URL's query is ignored)."""
    return kind_for(media_type_for(name.split("?")[0]))


def safe_file_name(name: str) -> str:
    """A base name that cannot escape a directory: `../../etc/passwd` becomes `passwd`."""
    base = PurePosixPath(name.replace("\\", "/")).name
    cleaned = _SAFE_NAME.sub("_", base).lstrip(".")
    return cleaned or "file"


class ArtifactStore:
    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    @classmethod
    async def open(
        cls, js: JetStreamContext, replicas: int = 1, max_bytes: int = DEFAULT_ARTIFACT_MAX_BYTES
    ) -> ArtifactStore:
        config = ObjectStoreConfig(
            ttl=ARTIFACT_TTL_S, storage=StorageType.FILE, replicas=replicas, max_bytes=max_bytes
        )
        try:
            return cls(await js.create_object_store(subjects.ARTIFACT_BUCKET, config=config))
        except BadRequestError as e:
            log.warning("the artifact bucket exists with other settings, which are kept: %s", e)
            return cls(await js.object_store(subjects.ARTIFACT_BUCKET))

    async def put(
        self,
        data: bytes | IO[bytes],
        name: str,
        media_type: str | None = None,
        *,
        owner: str = "",
        request_id: str = "",
    ) -> ArtifactRef:
        """Stores `data` (bytes, or a file read in chunks) under a new unguessable id.

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
        meta = ObjectMeta(name=artifact_id, headers=headers)
        # Any binary file will do: it is read in chunks (the stubs say BufferedIOBase).
        info = await self._store.put(artifact_id, data, meta=meta)  # type: ignore[arg-type]
        return ArtifactRef(
            id=artifact_id,
            name=name,
            media_type=media_type,
            kind=kind_for(media_type),
            size=int(info.size or 0),
        )

    async def made_by(self, artifact_id: str) -> tuple[str, str]:
        """The owner that uploaded the artifact and the request it was made for ("" if none)."""
        headers = (await self._info(artifact_id)).headers or {}
        return headers.get(_OWNER_HEADER, ""), headers.get(_REQUEST_HEADER, "")

    async def info(self, artifact_id: str) -> ArtifactRef:
        """What is stored under this id, without fetching the bytes."""
        info = await self._info(artifact_id)
        return _ref(artifact_id, info.headers or {}, int(info.size or 0))

    async def _info(self, artifact_id: str) -> ObjectInfo:
        try:
            return await self._store.get_info(artifact_id)
        except (NotFoundError, ObjectNotFoundError, ObjectDeletedError) as e:
            raise ArtifactNotFound(f"artifact {artifact_id!r} does not exist or expired") from e

    async def get(self, artifact_id: str) -> tuple[ArtifactRef, bytes]:
        try:
            result = await self._store.get(artifact_id)
        except (NotFoundError, ObjectNotFoundError, ObjectDeletedError) as e:
            raise ArtifactNotFound(f"artifact {artifact_id!r} does not exist or expired") from e
        data = result.data or b""
        headers = (result.info.headers or {}) if result.info else {}
        return _ref(artifact_id, headers, len(data)), data


def _ref(artifact_id: str, headers: dict[str, str], size: int) -> ArtifactRef:
    # Checked again on the way out: an object written straight to the bucket is read too.
    name = safe_file_name(headers.get(_NAME_HEADER, artifact_id))
    media_type = headers.get(_TYPE_HEADER) or media_type_for(name)
    if not MEDIA_TYPE.fullmatch(media_type):
        media_type = _OCTETS
    return ArtifactRef(
        id=artifact_id, name=name, media_type=media_type, kind=kind_for(media_type), size=size
    )
