"""`chorus catalog` as a user runs it; `sync` talks to a local stand-in for the Hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

HUB_MODELS = [
    {
        "id": "org/popular",
        "modelId": "org/popular",
        "downloads": 5000,
        "likes": 12,
        "tags": ["transformers", "language:en", "license:apache-2.0"],
        "library_name": "transformers",
        "pipeline_tag": "text-classification",
    },
    {
        "id": "org/niche",
        "modelId": "org/niche",
        "downloads": 50,
        "likes": 1,
        "tags": [],
        "pipeline_tag": "text-classification",
    },
]


@pytest.fixture
def hub() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    asked: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            url = urlparse(self.path)
            asked.append({"path": url.path, **parse_qs(url.query)})
            body = json.dumps(HUB_MODELS if url.path == "/api/models" else {}).encode()
            self.send_response(200 if url.path == "/api/models" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", asked
    server.shutdown()


def _chorus(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "CHORUS_CATALOG": str(tmp_path / "catalog.jsonl"), **env}
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", "catalog", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_then_list(tmp_path: Path) -> None:
    p0 = tmp_path / "p0_models.jsonl"
    p0.write_text(
        json.dumps(
            {
                "id": "org/x",
                "task": "summarization",
                "downloads": "7",
                "likes": "1",
                "meta": "{'language': 'en'}",
            }
        )
        + "\n"
    )
    done = _chorus(tmp_path, "import", str(p0))
    assert done.returncode == 0, done.stderr
    assert "imported 1 models" in done.stdout
    listing = _chorus(tmp_path, "list", "--task", "summarization")
    assert listing.returncode == 0 and "org/x" in listing.stdout


def test_sync_reads_the_hub_through_huggingface_hub(
    tmp_path: Path, hub: tuple[str, list[dict[str, Any]]]
) -> None:
    endpoint, asked = hub
    env = {"HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0"}
    done = _chorus(tmp_path, "sync", "--task", "text-classification", "--limit", "2", **env)
    assert done.returncode == 0, done.stderr
    (listing,) = [a for a in asked if a["path"] == "/api/models"]
    assert listing["pipeline_tag"] == ["text-classification"] and listing["limit"] == ["2"]
    saved = [json.loads(line) for line in (tmp_path / "catalog.jsonl").read_text().splitlines()]
    popular = next(e for e in saved if e["id"] == "org/popular")
    assert (popular["downloads"], popular["languages"], popular["license"]) == (
        5000,
        ["en"],
        "apache-2.0",
    )


def test_sync_with_the_hub_down_says_so(tmp_path: Path) -> None:
    done = _chorus(
        tmp_path,
        "sync",
        "--task",
        "text-classification",
        HF_ENDPOINT="http://127.0.0.1:9",
        HF_HUB_OFFLINE="0",
    )
    assert done.returncode == 1 and "the Hub did not answer" in done.stderr
