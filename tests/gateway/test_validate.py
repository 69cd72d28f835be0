"""The front door's check of a request's files: each is its caller's, and what the store holds
under its id, learnt from one read of the store."""

from __future__ import annotations

from typing import Any

import pytest
from chorus.v1.messages_pb2 import ArtifactRef, ChatMessage, ChatRequest, ErrorCode, Kind

from services.gateway.errors import RequestError
from services.gateway.frontdoor import FrontDoor


def _asking_about(ref: ArtifactRef) -> ChatRequest:
    claimed = ArtifactRef(id=ref.id, name="claimed.txt", media_type="text/plain", size=1)
    return ChatRequest(messages=[ChatMessage(role="user", content="Edges?", artifacts=[claimed])])


async def test_a_file_is_checked_and_described_with_one_read_of_the_store(
    door: FrontDoor, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = await door.put_artifact(b"\x89PNG" + bytes(60), "photo.png", "image/png", "alice")
    nc: Any = door.store._js._nc
    reads: list[str] = []
    request = nc.request

    async def counted(subject: str, *args: Any, **kwargs: Any) -> Any:
        if ".DIRECT.GET." in subject:
            reads.append(subject)
        return await request(subject, *args, **kwargs)

    monkeypatch.setattr(nc, "request", counted)
    asked = _asking_about(ref)
    await door.validate(asked, "alice")
    assert len(reads) == 1
    stored = asked.messages[0].artifacts[0]  # as the store has it, not as the caller said
    assert (stored.name, stored.media_type, stored.kind, stored.size) == (
        "photo.png",
        "image/png",
        Kind.KIND_IMAGE,
        64,
    )
    with pytest.raises(RequestError) as other:
        await door.validate(_asking_about(ref), "mallory")
    assert other.value.code == ErrorCode.ERROR_CODE_NOT_FOUND
    assert str(other.value).startswith("messages[0].artifacts[0].id: ")
