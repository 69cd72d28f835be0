"""Finding models: the local Hugging Face cache without the network, and devices."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from services.executor import models
from services.executor.models import LoadOptions, ModelSpec, discover_cached, load, locate
from tests.support import build_tiny_text_classifier, local_run


def _cache_with(tmp_path: Path, repo: str, tiny_classifier: Path) -> Path:
    """A Hugging Face cache laid out as `snapshot_download` leaves it."""
    cache = tmp_path / "hub"
    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / "0123456789abcdef"
    shutil.copytree(tiny_classifier, snapshot)
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0123456789abcdef")
    return cache


def test_cached_models_are_found_and_discovered_offline(
    tmp_path: Path, tiny_classifier: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    cache = _cache_with(tmp_path, "acme/tiny-sentiment", tiny_classifier)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    path = locate("acme/tiny-sentiment", allow_download=False)
    assert Path(path).name == "0123456789abcdef" and (Path(path) / "config.json").is_file()
    assert ModelSpec("text-classification", "acme/tiny-sentiment") in discover_cached()
    loaded = load(ModelSpec("text-classification", "acme/tiny-sentiment"), LoadOptions())
    assert loaded.size_bytes > 0
    with pytest.raises(models.ModelUnavailable, match="not in the local Hugging Face cache"):
        locate("acme/not-cached", allow_download=False)


def test_dtype_is_applied_per_replica(tiny_classifier: Path) -> None:
    spec = ModelSpec("text-classification", str(tiny_classifier))
    loaded = load(spec, LoadOptions(dtype="bfloat16"))
    assert loaded.model.model.dtype == torch.bfloat16
    assert models.torch_dtype(LoadOptions(device="cuda:0")) == torch.float16
    assert models.torch_dtype(LoadOptions()) == torch.float32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
async def test_text_classification_on_cuda_in_half_precision(tmp_path: Path) -> None:
    model = build_tiny_text_classifier(tmp_path / "tiny")
    options = LoadOptions("cuda:0", "float16")
    loaded = load(ModelSpec("text-classification", str(model)), options)
    assert loaded.model.model.device.type == "cuda"
    assert loaded.model.model.dtype == torch.float16
    outputs = await local_run("text-classification", str(model), options=options)({"text": "good"})
    assert outputs[0].text
