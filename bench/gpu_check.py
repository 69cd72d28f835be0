"""`make gpu-check`: the executor's local backends on `cuda:0` in float16, against the CPU.

Runs, with no NATS and nothing downloaded, models of three families that it builds itself
with random weights: a BERT text classifier (batched, as the executor batches it), a BART
seq2seq model (summarization) and, when diffusers is installed, a tiny Stable Diffusion
(text-to-image). Each is loaded and run through the executor's own code (`models.load`, the
handler's local call and post-processing, as `LocalBackend` runs them) on the CPU in float32
and on `cuda:0` in float16, with the same inputs. Writes what ran, the device memory used and
invocations per second on each device to bench/results/gpu.json.

Imports: torch, transformers, numpy, Pillow, OpenCV (the executor's annotators) and, through
the executor's modules, nats-py and protobuf (no connection is made); diffusers if present.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.stats import write_results

RESULTS = Path("bench/results/gpu.json")
# `GPU_CHECK_DEVICE=cpu` runs the script through on a machine without a GPU (a dry run).
DEVICE = os.environ.get("GPU_CHECK_DEVICE", "cuda:0")
ROUNDS = int(os.environ.get("GPU_CHECK_ROUNDS", "5"))
WORDS = ("good", "bad", "movie", "great", "awful", "i", "the", "cat", "sat", "on", "a", "mat")


@dataclass(frozen=True)
class Family:
    name: str
    task: str
    build: Callable[[Path], Path]
    inputs: Callable[[int], list[dict[str, Any]]]
    batch: int  # invocations per call, as the executor batches this task
    calls: int  # calls per timed round
    steps: int | None = None  # diffusion steps


def _texts(n: int) -> list[dict[str, Any]]:
    return [{"text": " ".join(WORDS[(i + j) % len(WORDS)] for j in range(24))} for i in range(n)]


def _fixed_length_seq2seq(target: Path) -> Path:
    """The tiny BART, made to write exactly 32 tokens: random weights otherwise stop at a random
    length, which differs between float32 on the CPU and float16 on the GPU, and the two
    throughputs would measure different amounts of work."""
    from transformers import GenerationConfig

    from tests.executor import tiny_models

    tiny_models.seq2seq(target)
    config = GenerationConfig.from_pretrained(target)
    config.min_new_tokens = config.max_new_tokens = 32
    config.save_pretrained(target)
    return target


def _families() -> list[Family]:
    from tests.support import build_tiny_text_classifier

    families = [
        Family(
            "BERT text classifier (hidden 256, 4 layers)",
            "text-classification",
            lambda target: build_tiny_text_classifier(
                target, words=WORDS, hidden_size=256, layers=4, heads=4, max_positions=128
            ),
            _texts, batch=32, calls=8,
        ),
        Family("BART seq2seq (tiny), 32 new tokens", "summarization", _fixed_length_seq2seq, _texts, batch=1, calls=8),
    ]  # fmt: skip
    if importlib.util.find_spec("diffusers") is not None:
        from tests.executor import tiny_diffusion

        families.append(
            Family(
                "Stable Diffusion (tiny UNet, VAE, CLIP), 10 steps",
                "text-to-image",
                tiny_diffusion.stable_diffusion,
                lambda n: [{"text": "a cat on a mat"}] * n,
                batch=1,
                calls=2,
                steps=10,
            )
        )
    return families


def _run(family: Family, model_dir: Path, device: str) -> dict[str, Any]:
    from services.executor.handlers import HANDLERS
    from services.executor.models import LoadOptions, ModelSpec, load

    dtype = "float16" if device.startswith("cuda") else "float32"
    options = LoadOptions(device=device, dtype=dtype, diffusion_steps=family.steps)
    handler = HANDLERS[family.task]
    local = handler.local
    assert local is not None
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    loaded = load(ModelSpec(family.task, str(model_dir)), options)
    weights = torch.cuda.memory_allocated() if device.startswith("cuda") else 0
    batch = family.inputs(family.batch)

    def call() -> list[Any]:
        raws = local.call(loaded.model, batch)
        return [handler.post(raw, i) for raw, i in zip(raws, batch, strict=True)]

    outputs = call()  # warm-up: kernels, caches
    rounds = []
    for _ in range(ROUNDS):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(family.calls):
            call()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        rounds.append(family.calls * family.batch / (time.perf_counter() - started))
    result: dict[str, Any] = {
        "dtype": dtype,
        "invocations_per_s": round(statistics.median(rounds), 1),
        "outputs": [f"{p.name}: {type(p.image or p.text or p.data).__name__}" for p in outputs[0]],
    }
    if device.startswith("cuda"):
        result["memory_weights_bytes"] = weights
        result["memory_peak_bytes"] = torch.cuda.max_memory_allocated()
    return result


def main() -> None:
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(
            "gpu-check: no CUDA device here (torch.cuda.is_available() is False; torch "
            f"{torch.__version__}). Run it on a machine with an NVIDIA GPU and a CUDA build of torch."
        )
    import transformers

    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if DEVICE.startswith("cuda") else DEVICE,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "diffusers": None,
        "rounds": ROUNDS,
        "models": [],
    }
    if importlib.util.find_spec("diffusers") is not None:
        import diffusers

        report["diffusers"] = diffusers.__version__
    else:
        report["skipped"] = "Stable Diffusion: diffusers is not installed"
    with tempfile.TemporaryDirectory() as tmp:
        for family in _families():
            entry: dict[str, Any] = {
                "model": family.name,
                "task": family.task,
                "batch": family.batch,
            }
            try:
                model_dir = family.build(Path(tmp) / family.task)
                entry["cpu"] = _run(family, model_dir, "cpu")
                entry["gpu"] = _run(family, model_dir, DEVICE)
                entry["gpu_over_cpu"] = round(
                    entry["gpu"]["invocations_per_s"] / entry["cpu"]["invocations_per_s"], 2
                )
            except Exception as e:  # one family failing must not hide the others' figures
                entry["error"] = f"{type(e).__name__}: {e}"
            report["models"].append(entry)
            print(json.dumps(entry))
    write_results(RESULTS, report)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
