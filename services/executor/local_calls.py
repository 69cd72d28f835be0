"""How each task calls a locally loaded model on a batch of decoded inputs.

Each function here is a `LocalCall` (or makes one): the loaded model and a batch of inputs
in, one raw result per input out, in the shape the transformers pipelines answer with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.executor.handler import Inputs, LocalCall
from services.executor.media import Audio


def pipeline(argument: Callable[[Inputs], Any], **kwargs: Any) -> LocalCall:
    """Runs a transformers pipeline on a list of inputs: one raw result per input.

    A keyword argument's value may be a function of the pipeline (`max_length`).
    """

    def call(pipe: Any, batch: Any) -> list[Any]:
        options = {k: v(pipe) if callable(v) else v for k, v in kwargs.items()}
        results = pipe([argument(i) for i in batch], batch_size=len(batch), **options)
        return list(results)

    return call


def each(one: Callable[[Any, Inputs], Any]) -> LocalCall:
    """A model that takes one input at a time."""
    return lambda model, batch: [one(model, i) for i in batch]


def max_length(pipe: Any) -> int:
    """Longest input the model takes; a tokenizer may not know it, the model's config does."""
    limits = [
        getattr(pipe.tokenizer, "model_max_length", None),
        getattr(pipe.model.config, "max_position_embeddings", None),
    ]
    return min([n for n in limits if isinstance(n, int) and n > 0] or [512])


def seq2seq(model: Any, batch: Any) -> list[Any]:
    tokenizer, network = model
    encoded = tokenizer(
        [i["text"] for i in batch], return_tensors="pt", truncation=True, padding=True
    )
    encoded = {k: v.to(network.device) for k, v in encoded.items()}
    output = network.generate(**encoded, max_new_tokens=64)
    texts = tokenizer.batch_decode(output, skip_special_tokens=True)
    return [{"generated_text": t} for t in texts]


def extractive_qa(model: Any, inputs: Inputs) -> dict[str, Any]:
    """The span of the context that best answers the question (start/end logits)."""
    import torch

    tokenizer, network = model
    encoded = tokenizer(
        inputs["text"],
        inputs["context"],
        return_tensors="pt",
        truncation="only_second",
        return_offsets_mapping=True,
    )
    offsets = encoded.pop("offset_mapping")[0].tolist()
    context_tokens = [i for i, s in enumerate(encoded.sequence_ids(0)) if s == 1]
    with torch.no_grad():
        out = network(**{k: v.to(network.device) for k, v in encoded.items()})
    start = out.start_logits[0].softmax(-1).cpu()
    end = out.end_logits[0].softmax(-1).cpu()
    best = (0.0, context_tokens[0], context_tokens[0])
    for i in context_tokens:
        for j in context_tokens:
            if i <= j < i + 30 and float(start[i] * end[j]) > best[0]:
                best = (float(start[i] * end[j]), i, j)
    score, i, j = best
    begin, finish = offsets[i][0], offsets[j][1]
    return {
        "answer": inputs["context"][begin:finish],
        "score": score,
        "start": begin,
        "end": finish,
    }


def similarity(model: Any, inputs: Inputs) -> float:
    vectors = model.encode([inputs["text1"], inputs["text2"]], normalize_embeddings=True)
    return float(np.dot(vectors[0], vectors[1]))


def conversation(pipe: Any, inputs: Inputs) -> Any:
    """A chat model replies to the text as a user turn; a model without a chat template continues it."""
    if getattr(pipe.tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": inputs["text"]}]
        reply = pipe(messages, max_new_tokens=64)[0]["generated_text"]
        return [{"generated_text": reply[-1]["content"] if isinstance(reply, list) else reply}]
    return pipe(inputs["text"], max_new_tokens=64, return_full_text=False)


def vision_language(default_prompt: str) -> Callable[[Any, Inputs], Any]:
    """An image-text-to-text model on the image and the text (or `default_prompt`).

    A chat model gets them as a user turn and answers with its reply alone; a model without
    a chat template (BLIP) takes the text as the start of what it writes.
    """

    def call(pipe: Any, inputs: Inputs) -> Any:
        prompt = inputs.get("text") or default_prompt
        if getattr(pipe.processor, "chat_template", None):
            content = [
                {"type": "image", "image": inputs["image"]},
                {"type": "text", "text": prompt},
            ]
            turn = [{"role": "user", "content": content}]
            return pipe(text=turn, max_new_tokens=48, return_full_text=False)
        text = prompt if "text" in inputs else ""  # a captioner captions from nothing
        return pipe(images=inputs["image"], text=text, max_new_tokens=48, return_full_text=False)

    return call


def audio_input(inputs: Inputs) -> dict[str, Any]:
    audio: Audio = inputs["audio"]
    return {"raw": audio.samples, "sampling_rate": audio.sampling_rate}


# Longest side of an image a diffusion pipeline is given to work from (and so draws): beyond
# it the latents alone outgrow any device; Stable Diffusion XL draws at 1024.
MAX_DIFFUSION_SIDE = 2048


class ImageSizeError(ValueError):
    """An input image a model cannot work from at its size."""


@dataclass(frozen=True)
class Diffusion:
    """A loaded diffusers pipeline and the denoising steps to run (None: the pipeline's own)."""

    pipe: Any
    steps: int | None = None

    def __call__(self, **arguments: Any) -> Any:
        if self.steps:
            arguments["num_inference_steps"] = self.steps
        return self.pipe(**arguments)


def _drawable(image: Any) -> Any:
    """The image as a diffusion pipeline may take it, or `ImageSizeError` saying why not."""
    width, height = image.size
    if min(width, height) < 8 or max(width, height) > MAX_DIFFUSION_SIDE:
        raise ImageSizeError(
            f"an image of {width}x{height} pixels cannot be drawn from: "
            f"each side must be 8 to {MAX_DIFFUSION_SIDE} pixels"
        )
    if width % 8 or height % 8:  # the VAE works in blocks of 8 pixels
        return image.resize((width - width % 8, height - height % 8))
    return image


def diffusion(model: Diffusion, inputs: Inputs) -> Any:
    if "image" in inputs:  # image-to-image, and ControlNet with its control map
        image = _drawable(inputs["image"])
        return model(prompt=inputs.get("text") or "", image=image).images[0]
    return model(prompt=inputs["text"]).images[0]


def video(model: Diffusion, inputs: Inputs) -> bytes:
    import tempfile

    from diffusers.utils import export_to_video  # type: ignore[attr-defined]

    frames = model(prompt=inputs["text"]).frames[0]
    with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
        export_to_video(frames, f.name)
        return f.read()


def operation(op: Any, inputs: Inputs) -> Any:
    """A built-in image operation (an annotator) on the input image."""
    return op(inputs["image"])
