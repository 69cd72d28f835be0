"""The artifact store on a real NATS server: round trips, its format, and what a read costs."""

from __future__ import annotations

import os

import nats
import pytest

from services.common import subjects
from services.common.artifact_refs import ArtifactNotFound
from services.common.artifacts import ArtifactStore


async def test_round_trip_in_nats_object_store_format(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    store = await ArtifactStore.open(js)
    data = os.urandom(300 * 1024)  # three chunks
    ref = await store.put(data, "../photo.png")
    assert (ref.name, ref.media_type, ref.size) == ("photo.png", "image/png", len(data))
    assert (await store.get(ref.id))[1] == data
    assert (await store.info(ref.id)).size == len(data)
    # Reads open no consumer: nothing for the server to keep or scan (nats-py's `get` does).
    info = await js.stream_info(f"OBJ_{subjects.ARTIFACT_BUCKET}")
    assert info.state.consumer_count == 0
    # nats-py's own client reads what the store wrote, and the store reads what it writes.
    objects = await js.object_store(subjects.ARTIFACT_BUCKET)
    assert (await objects.get(ref.id)).data == data
    await objects.put("theirs.txt", b"written by nats-py")
    assert (await store.get("theirs.txt"))[1] == b"written by nats-py"
    with pytest.raises(ArtifactNotFound):
        await store.get("no-such-artifact")
    with pytest.raises(ArtifactNotFound):
        await store.info("no-such-artifact")
    await nc.close()


async def test_an_empty_file(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    store = await ArtifactStore.open(nc.jetstream())
    ref = await store.put(b"", "empty.txt")
    assert (await store.get(ref.id))[1] == b""
    await nc.close()


async def test_a_stream_reads_each_part_only_when_the_one_before_is_taken(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    store = await ArtifactStore.open(js)
    data = os.urandom(3 * 1024 * 1024 + 5)
    ref = await store.put(data, "big.bin")
    info, parts = await store.stream(ref.id)
    assert (info.ref.name, info.ref.size) == ("big.bin", len(data))
    received = [await anext(parts)]
    # The rest is not read yet: take the stored parts away, and the next read finds none.
    await js.purge_stream(f"OBJ_{subjects.ARTIFACT_BUCKET}", subject="$O.*.C.>")
    with pytest.raises(ArtifactNotFound, match="lost a part"):
        await anext(parts)
    assert len(received[0]) == 128 * 1024
    await nc.close()


async def test_a_stream_brings_every_part_and_checks_the_digest(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    store = await ArtifactStore.open(nc.jetstream())
    data = os.urandom(3 * 1024 * 1024 + 5)
    ref = await store.put(data, "big.bin")
    _, parts = await store.stream(ref.id)
    received = [part async for part in parts]
    assert len(received) == 25 and max(map(len, received)) == 128 * 1024  # 24 whole + 5 bytes
    assert b"".join(received) == data
    await nc.close()
