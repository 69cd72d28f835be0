"""`ChorusClient.download` against a real gRPC server whose download breaks half-way."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from chorus.v1 import chorus_pb2_grpc
from chorus.v1.chorus_pb2 import ArtifactChunk, DownloadArtifactRequest

from services.cli.client import ChorusClient


class BreaksAfterFirstPart(chorus_pb2_grpc.ChorusServicer):
    def __init__(self, whole: bool) -> None:
        self.whole = whole

    def DownloadArtifact(
        self, request: DownloadArtifactRequest, context: grpc.ServicerContext
    ) -> Iterator[ArtifactChunk]:
        yield ArtifactChunk(name="photo.png", media_type="image/png", data=b"first part")
        if not self.whole:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the store went away")
        yield ArtifactChunk(data=b", second part")


def _download(whole: bool, out: Path) -> Path:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = BreaksAfterFirstPart(whole)  # type: ignore[abstract]  # serves one method
    chorus_pb2_grpc.add_ChorusServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    client = ChorusClient(f"127.0.0.1:{port}")
    try:
        return client.download("a" * 32, out)
    finally:
        client.close()
        server.stop(None)


def test_a_whole_download_is_saved_under_its_name(tmp_path: Path) -> None:
    saved = _download(True, tmp_path)
    assert saved == tmp_path / "photo.png"
    assert saved.read_bytes() == b"first part, second part"
    assert [p.name for p in tmp_path.iterdir()] == ["photo.png"]


def test_a_download_that_breaks_half_way_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(grpc.RpcError) as broken:
        _download(False, tmp_path)
    assert broken.value.code() == grpc.StatusCode.UNAVAILABLE
    assert list(tmp_path.iterdir()) == []
