"""Whose each request is: the API key that sent it, recorded when it is accepted.

One bucket entry per request id, created once, so an id already in use is refused rather than
answered with someone else's response; any gateway replica reads it. A request published
straight to the bus has no entry: it is the anonymous owner's ("").
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from services.common import bus, subjects
from services.common.artifacts import ARTIFACT_TTL_S


class RequestOwners:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext, replicas: int = 1) -> RequestOwners:
        config = KeyValueConfig(
            bucket=subjects.REQUEST_OWNER_BUCKET,
            ttl=ARTIFACT_TTL_S,  # as long as the files a request made can be fetched
            storage=StorageType.FILE,
            replicas=replicas,
        )
        return cls(await bus.open_key_value(js, config))

    async def claim(self, request_id: str, owner: str) -> bool:
        """Records `owner` as the request's; False when the id is in use already."""
        try:
            await self._kv.create(request_id, owner.encode())
        except KeyWrongLastSequenceError:
            return False
        return True

    async def owner_of(self, request_id: str) -> str:
        try:
            entry = await self._kv.get(request_id)
        except KeyNotFoundError:
            return ""
        return (entry.value or b"").decode()
