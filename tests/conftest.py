from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.cli.cluster import start_nats_server
from services.common import tracing
from tests.support import ScriptedLLM, build_tiny_text_classifier

# Nothing in the tests may reach the network: the Hub is off, and so is any download.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["CHORUS_ALLOW_DOWNLOAD"] = "0"
for _var in ("CHORUS_LLM_BASE_URL", "CHORUS_LLM_API_KEY", "OPENAI_API_KEY", "CHORUS_NATS_URL"):
    os.environ.pop(_var, None)


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    """A fresh JetStream server for each test, so streams and consumers never leak between them."""
    proc, url = start_nats_server(tmp_path / "jetstream")
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def module_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One JetStream server for a module whose tests share one running stack."""
    proc, url = start_nats_server(tmp_path_factory.mktemp("jetstream"))
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def module_llm() -> Iterator[ScriptedLLM]:
    """The scripted LLM of such a module; each test sets the replies it needs."""
    llm = ScriptedLLM().start()
    yield llm
    llm.stop()


@pytest.fixture
def scripted_llm() -> Iterator[ScriptedLLM]:
    llm = ScriptedLLM(replies=["[]"]).start()
    yield llm
    llm.stop()


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_text_classifier(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Every span this process finishes, kept in memory; export is off again afterwards."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    yield exporter
    tracing.configure_tracing("test", {})
