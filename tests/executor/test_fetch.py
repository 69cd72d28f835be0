"""Inputs named by URL or path: every refusal, and the allowed cases."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from chorus.v1.messages_pb2 import TaskArgument, TaskInvocation, TaskStatus

from services.executor.execute import execute
from services.executor.fetch import FetchPolicy, FetchRefused
from tests.support import MemoryArtifacts, local_run

ON = FetchPolicy(allow_urls=True)


def _resolves_to(*addresses: str) -> Any:
    return lambda host, port: list(addresses)


def test_urls_are_not_fetched_unless_turned_on() -> None:
    with pytest.raises(FetchRefused, match="CHORUS_FETCH_URLS=1"):
        FetchPolicy().fetch("https://example.com/cat.png", _resolves_to("93.184.215.14"))


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "192.168.0.7", "172.16.5.5", "169.254.169.254", "::1",
     "fd00::1", "::ffff:127.0.0.1", "0.0.0.0", "100.64.0.1", "224.0.0.1"],
)  # fmt: skip
def test_non_public_addresses_are_refused(address: str) -> None:
    with pytest.raises(FetchRefused, match="non-public address"):
        ON.fetch("http://images.example/cat.png", _resolves_to(address))


def test_one_private_address_among_public_ones_is_enough_to_refuse() -> None:
    with pytest.raises(FetchRefused, match=r"10\.0\.0\.5"):
        ON.fetch("http://images.example/cat.png", _resolves_to("93.184.215.14", "10.0.0.5"))


def test_literal_loopback_and_localhost_are_refused_with_the_real_resolver() -> None:
    for url in ("http://127.0.0.1:8080/x.png", "http://localhost/x.png", "http://[::1]/x.png"):
        with pytest.raises(FetchRefused, match="non-public"):
            ON.fetch(url)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.png", "gopher://x/"])
def test_only_http_urls(url: str) -> None:
    with pytest.raises(FetchRefused, match="only http and https"):
        ON.fetch(url)


class _Server:
    """A loopback HTTP server; the policies that reach it allow private addresses (tests only)."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/big.png":
                    self._send(b"x" * 5000)
                elif self.path == "/redirect.png":
                    self.send_response(302)
                    self.send_header("Location", "http://169.254.169.254/")
                    self.end_headers()
                elif self.path == "/slow.png":
                    self.send_response(200)
                    self.end_headers()
                    for _ in range(40):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(0.05)
                else:
                    self._send(b"small")

            def _send(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.http.server_port}"


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.http.shutdown()
    s.http.server_close()


def test_limits_on_size_time_and_redirects(server: _Server) -> None:
    policy = FetchPolicy(allow_urls=True, max_bytes=1000, timeout_s=0.5, allow_private=True)
    assert policy.fetch(f"{server.url}/small.png") == ("small.png", b"small")
    with pytest.raises(FetchRefused, match="over the 1000-byte input limit"):
        policy.fetch(f"{server.url}/big.png")
    with pytest.raises(FetchRefused, match="HTTP 302"):
        policy.fetch(f"{server.url}/redirect.png")
    with pytest.raises(FetchRefused, match=r"took over 0\.5 s"):
        policy.fetch(f"{server.url}/slow.png")


def _root(tmp_path: Path) -> tuple[FetchPolicy, Path]:
    root = tmp_path / "inputs"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "photo.png").write_bytes(b"png bytes")
    (tmp_path / "secret.txt").write_text("secret")
    (root / "escape.png").symlink_to(tmp_path / "secret.txt")
    (root / "inside.png").symlink_to(root / "sub" / "photo.png")
    return FetchPolicy(input_root=root), root


def test_local_paths_only_under_the_input_root(tmp_path: Path) -> None:
    policy, root = _root(tmp_path)
    assert policy.fetch("sub/photo.png") == ("photo.png", b"png bytes")
    assert policy.fetch(str(root / "sub" / "photo.png"))[1] == b"png bytes"
    assert policy.fetch("inside.png")[1] == b"png bytes"  # a link that stays inside is fine
    with pytest.raises(FetchRefused, match=r"'\.\.' is not allowed"):
        policy.fetch("sub/../../secret.txt")
    with pytest.raises(FetchRefused, match="outside the input root"):
        policy.fetch("escape.png")
    with pytest.raises(FetchRefused, match="outside the input root"):
        policy.fetch(str(tmp_path / "secret.txt"))
    with pytest.raises(FetchRefused, match="no such file"):
        policy.fetch("sub/missing.png")


def test_local_paths_are_not_read_without_a_root(tmp_path: Path) -> None:
    (tmp_path / "photo.png").write_bytes(b"x")
    with pytest.raises(FetchRefused, match="CHORUS_INPUT_ROOT is not set"):
        FetchPolicy().fetch(str(tmp_path / "photo.png"))


async def test_a_path_argument_runs_the_task_when_allowed_and_fails_clearly_when_not(
    tmp_path: Path,
) -> None:
    from PIL import Image

    root = tmp_path / "inputs"
    root.mkdir()
    Image.new("RGB", (16, 16), "white").save(root / "photo.png")
    (root / "voice.wav").write_bytes(b"RIFF")
    run = local_run("canny-control", "builtin:canny")

    def invocation(text: str) -> TaskInvocation:
        return TaskInvocation(
            request_id="r", task="canny-control", args=[TaskArgument(name="image", text=text)]
        )

    store = MemoryArtifacts()
    ok = await execute(invocation("photo.png"), run, store, "w", FetchPolicy(input_root=root))
    refused = await execute(invocation("photo.png"), run, store, "w", FetchPolicy())
    wrong = await execute(invocation("voice.wav"), run, store, "w", FetchPolicy(input_root=root))
    assert ok.status == TaskStatus.TASK_STATUS_SUCCEEDED, ok.error
    assert refused.status == TaskStatus.TASK_STATUS_FAILED
    assert "needs an uploaded image file" in refused.error and "CHORUS_INPUT_ROOT" in refused.error
    assert "needs image, but voice.wav is audio" in wrong.error
