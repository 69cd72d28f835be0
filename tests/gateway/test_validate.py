"""The front door's check of a caller's files (attached to a request, or downloaded): each is
its caller's, and what the store holds under its id, learnt from one read of its metadata."""

from __future__ import annotations

from typing import Any

import pytest
from chorus.v1.messages_pb2 import ArtifactRef, ChatMessage, ChatRequest, ErrorCode, Kind

from services.gateway.errors import RequestError
from services.gateway.frontdoor import FrontDoor


def _counted_store_reads(nc: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The subjects of the direct reads of the store that the client makes from now on."""
    reads: list[str] = []
    request = nc.request

    async def counted(subject: str, *args: Any, **kwargs: Any) -> Any:
        if ".DIRECT.GET." in subject:
            reads.append(subject)
        return await request(subject, *args, **kwargs)

    monkeypatch.setattr(nc, "request", counted)
    return reads


def _asking_about(ref: ArtifactRef) -> ChatRequest:
    claimed = ArtifactRef(id=ref.id, name="claimed.txt", media_type="text/plain", size=1)
    return ChatRequest(messages=[ChatMessage(role="user", content="Edges?", artifacts=[claimed])])


async def test_a_file_is_checked_and_described_with_one_read_of_the_store(
    door: FrontDoor, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = await door.put_artifact(b"\x89PNG" + bytes(60), "photo.png", "image/png", "alice")
    nc: Any = door.store._js._nc
    reads = _counted_store_reads(nc, monkeypatch)
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


async def test_a_download_is_checked_and_described_with_one_read_of_its_metadata(
    door: FrontDoor, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = await door.put_artifact(b"some text", "note.txt", "text/plain", "alice")
    reads = _counted_store_reads(door.store._js._nc, monkeypatch)
    stored, parts = await door.artifact(ref.id, "alice")
    assert (stored.name, b"".join([p async for p in parts])) == ("note.txt", b"some text")
    # The metadata once (its last message, by subject), then the one part.
    assert len(reads) == 2 and ".M." in reads[0] and ".M." not in reads[1]
    with pytest.raises(RequestError) as other:
        await door.artifact(ref.id, "mallory")
    assert other.value.code == ErrorCode.ERROR_CODE_NOT_FOUND
