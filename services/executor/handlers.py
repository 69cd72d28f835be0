"""One handler per task type, declared once: what it reads and writes, how each backend runs it,
and how the raw result is post-processed. Looked up by task type; validated when built.

A handler's local `call` gets the loaded model and a batch of decoded inputs (text as `str`,
images as PIL, audio as `Audio`) and returns one raw result per input; `post` turns a raw
result (from a local model or from remote inference, which answer in the same shapes) into
`Produced` outputs, which `execute` stores as artifacts and messages.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from chorus.v1.messages_pb2 import Kind
from PIL import Image

from services.common.routes import BUILTIN_PREFIX
from services.common.tasks import AUDIO, IMAGE, LLM_TASKS, TASK_TYPES, TEXT, VIDEO, Slot
from services.executor import imageops, render
from services.executor.media import Audio, encode_png, encode_wav

Inputs = Mapping[str, Any]
JSON = -1  # an output kind of its own: structured data (labels, boxes) sent as JSON


@dataclass(frozen=True)
class Produced:
    """One output of a task: text, structured data, or a generated file."""

    name: str
    text: str | None = None
    data: Any = None  # JSON-able structure
    image: Image.Image | None = None
    audio: Audio | None = None
    file: bytes | None = None  # an encoded file as a remote service returned it
    media_type: str = ""  # of `file`

    @property
    def kind(self) -> int:
        if self.image is not None:
            return IMAGE
        if self.audio is not None:
            return AUDIO
        if self.file is not None:
            return _KIND_BY_MAJOR.get(self.media_type.split("/")[0], JSON)
        return TEXT if self.text is not None else JSON


_KIND_BY_MAJOR = {"image": IMAGE, "audio": AUDIO, "video": VIDEO}


@dataclass(frozen=True)
class Output:
    name: str
    kind: Kind.ValueType | int


@dataclass(frozen=True)
class Local:
    """How a task runs on local weights.

    `loader` says how the model is loaded (see `models.py`): a transformers `pipeline`, a
    `seq2seq` or `extractive-qa` model with its tokenizer, `sentence-transformers`, a `builtin`
    operation, or `diffusers` / `controlnet` (the optional `diffusers` extra).
    """

    loader: str
    call: Callable[[Any, Sequence[Inputs]], list[Any]]
    pipeline_task: str = ""  # the transformers pipeline, for loader "pipeline"
    batchable: bool = False  # several inputs in one forward pass give the same answers


# Remote inference: (InferenceClient, model URL, inputs) -> a raw result in `post`'s shape.
Remote = Callable[[Any, str, Inputs], Any]


@dataclass(frozen=True)
class Handler:
    task: str
    outputs: tuple[Output, ...]
    post: Callable[[Any, Inputs], list[Produced]]
    local: Local | None = None
    remote: Remote | None = None
    llm_instruction: str = ""  # set for the text tasks the LLM itself can do
    # Why the task cannot run locally, when `local` is None: said to whoever asks for it.
    needs: str = ""
    builtins: Mapping[str, Callable[[Image.Image], Image.Image]] = field(default_factory=dict)

    @property
    def inputs(self) -> tuple[Slot, ...]:
        """The argument slots, as the task type declares them (`services/common/tasks.py`)."""
        return TASK_TYPES[self.task].slots


class HandlerError(ValueError):
    """A handler declaration is inconsistent; raised when the registry is built."""


# --- local calls -------------------------------------------------------------------------


def _pipeline(
    argument: Callable[[Inputs], Any], **kwargs: Any
) -> Callable[[Any, Sequence[Inputs]], list[Any]]:
    """Runs a transformers pipeline on a list of inputs: one raw result per input."""

    def call(pipe: Any, batch: Sequence[Inputs]) -> list[Any]:
        options = {k: v(pipe) if callable(v) else v for k, v in kwargs.items()}
        results = pipe([argument(i) for i in batch], batch_size=len(batch), **options)
        return list(results)

    return call


def _each(
    one: Callable[[Any, Inputs], Any],
) -> Callable[[Any, Sequence[Inputs]], list[Any]]:
    return lambda model, batch: [one(model, i) for i in batch]


def _max_length(pipe: Any) -> int:
    """Longest input the model takes; a tokenizer may not know it, the model's config does."""
    limits = [
        getattr(pipe.tokenizer, "model_max_length", None),
        getattr(pipe.model.config, "max_position_embeddings", None),
    ]
    return min([n for n in limits if isinstance(n, int) and n > 0] or [512])


def _seq2seq(model: Any, batch: Sequence[Inputs]) -> list[Any]:
    tokenizer, network = model
    encoded = tokenizer(
        [i["text"] for i in batch], return_tensors="pt", truncation=True, padding=True
    )
    encoded = {k: v.to(network.device) for k, v in encoded.items()}
    output = network.generate(**encoded, max_new_tokens=64)
    texts = tokenizer.batch_decode(output, skip_special_tokens=True)
    return [{"generated_text": t} for t in texts]


def _extractive_qa(model: Any, inputs: Inputs) -> dict[str, Any]:
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


def _similarity(model: Any, inputs: Inputs) -> float:
    vectors = model.encode([inputs["text1"], inputs["text2"]], normalize_embeddings=True)
    return float(np.dot(vectors[0], vectors[1]))


def _conversation(pipe: Any, inputs: Inputs) -> Any:
    """A chat model replies to the text as a user turn; a model without a chat template continues it."""
    if getattr(pipe.tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": inputs["text"]}]
        reply = pipe(messages, max_new_tokens=64)[0]["generated_text"]
        return [{"generated_text": reply[-1]["content"] if isinstance(reply, list) else reply}]
    return pipe(inputs["text"], max_new_tokens=64, return_full_text=False)


def _audio_input(inputs: Inputs) -> dict[str, Any]:
    audio: Audio = inputs["audio"]
    return {"raw": audio.samples, "sampling_rate": audio.sampling_rate}


def _diffusion(model: Any, inputs: Inputs) -> Any:
    if "image" in inputs:  # image-to-image, and ControlNet with its control map
        return model(prompt=inputs.get("text") or "", image=inputs["image"]).images[0]
    return model(prompt=inputs["text"]).images[0]


def _video(model: Any, inputs: Inputs) -> bytes:
    import tempfile

    from diffusers.utils import export_to_video

    frames = model(prompt=inputs["text"]).frames[0]
    with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
        export_to_video(frames, f.name)
        return f.read()


# --- remote calls: huggingface_hub.InferenceClient; results shaped like the pipelines' -------


def _png(inputs: Inputs, slot: str = "image") -> bytes:
    return encode_png(inputs[slot])


def _wav(inputs: Inputs) -> bytes:
    return encode_wav(inputs["audio"])


def _remote_generation(attribute: str) -> Remote:
    method = {"summary_text": "summarization", "translation_text": "translation"}.get(attribute)

    def run(client: Any, url: str, inputs: Inputs) -> Any:
        if method is None:
            return [{"generated_text": client.text_generation(inputs["text"], model=url)}]
        return [
            {
                "generated_text": getattr(
                    getattr(client, method)(inputs["text"], model=url), attribute
                )
            }
        ]

    return run


# --- post-processing ---------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    def default(v: Any) -> Any:
        if hasattr(v, "item"):
            return v.item()
        if isinstance(v, Image.Image):
            return f"<image {v.width}x{v.height}>"
        return str(v)

    return json.loads(json.dumps(value, default=default))


def _labels(result: Any, inputs: Inputs) -> list[Produced]:
    items = result if isinstance(result, list) else [result]
    if items and isinstance(items[0], list):  # some pipelines nest one list per input
        items = items[0]
    top = max(items, key=lambda r: r["score"])
    summary = f"{top['label']} ({top['score']:.2f})"
    return [Produced("text", text=summary), Produced("labels", data=_jsonable(items))]


def _entities(result: Any, inputs: Inputs) -> list[Produced]:
    words = ", ".join(f"{e['word']} ({e.get('entity_group', e.get('entity'))})" for e in result)
    return [
        Produced("text", text=words or "no entities"),
        Produced("entities", data=_jsonable(result)),
    ]


def _generated(result: Any, inputs: Inputs) -> list[Produced]:
    first = result[0] if isinstance(result, list) else result
    return [Produced("text", text=str(first["generated_text"]))]


def _answer(result: Any, inputs: Inputs) -> list[Produced]:
    first = result[0] if isinstance(result, list) else result
    return [Produced("text", text=str(first["answer"])), Produced("answer", data=_jsonable(first))]


def _score(result: Any, inputs: Inputs) -> list[Produced]:
    score = float(result[0] if isinstance(result, list) else result)
    return [Produced("text", text=f"similarity {score:.3f}"), Produced("score", data=score)]


def _detections(result: Any, inputs: Inputs) -> list[Produced]:
    found = ", ".join(f"{d['label']} ({d['score']:.2f})" for d in result) or "no objects found"
    return [
        Produced("image", image=render.draw_boxes(inputs["image"], result)),
        Produced("text", text=found),
        Produced(
            "boxes", data=_jsonable([{k: d[k] for k in ("label", "score", "box")} for d in result])
        ),
    ]


def _segments(result: Any, inputs: Inputs) -> list[Produced]:
    labels = [str(s.get("label")) for s in result]
    return [
        Produced("image", image=render.overlay_masks(inputs["image"], result)),
        Produced("text", text=", ".join(labels) or "no segments"),
        Produced(
            "segments", data=[{"label": s.get("label"), "score": s.get("score")} for s in result]
        ),
    ]


def _segment_map(result: Any, inputs: Inputs) -> list[Produced]:
    return [Produced("image", image=render.segment_map(inputs["image"].size, result))]


def _depth(result: Any, inputs: Inputs) -> list[Produced]:
    depth = result.get("predicted_depth", result.get("depth"))
    return [Produced("image", image=render.depth_image(depth, inputs["image"].size))]


def _image(result: Any, inputs: Inputs) -> list[Produced]:
    if isinstance(result, bytes | bytearray):
        result = Image.open(io.BytesIO(result))
    return [Produced("image", image=result.convert("RGB"))]


def _speech(result: Any, inputs: Inputs) -> list[Produced]:
    if isinstance(result, bytes | bytearray):  # remote: an encoded file (WAV or FLAC)
        return [Produced("audio", file=bytes(result), media_type=_audio_type(bytes(result)))]
    samples = np.asarray(result["audio"], dtype=np.float32).reshape(-1)
    return [Produced("audio", audio=Audio(samples, int(result["sampling_rate"])))]


def _audio_type(data: bytes) -> str:
    return "audio/flac" if data[:4] == b"fLaC" else "audio/wav"


def _audios(result: Any, inputs: Inputs) -> list[Produced]:
    first = result[0]
    return [Produced("audio", file=bytes(first["blob"]), media_type=str(first["content_type"]))]


def _transcript(result: Any, inputs: Inputs) -> list[Produced]:
    first = result[0] if isinstance(result, list) else result
    return [Produced("text", text=str(first["text"]))]


def _video_file(result: Any, inputs: Inputs) -> list[Produced]:
    return [Produced("video", file=bytes(result), media_type="video/mp4")]


def _control(result: Any, inputs: Inputs) -> list[Produced]:
    return [Produced("image", image=result)]


# --- the declarations --------------------------------------------------------------------

_TEXT = (Output("text", TEXT),)
_LABELS = (Output("text", TEXT), Output("labels", JSON))
_IMAGE = (Output("image", IMAGE),)
_INSTRUCTIONS = {
    "summarization": "Summarize the text the user gives. Reply with the summary only.",
    "translation": "Translate the text the user gives into English (or, when it is English, "
    "into the language the text asks for). Reply with the translation only.",
    "conversational": "Reply to the user as a helpful assistant.",
    "text-generation": "Continue the text the user gives. Reply with the continuation only.",
    "text2text-generation": "Do what the text the user gives asks. Reply with the result only.",
}


def _text_task(task: str, local: Local | None, remote: Remote, post: Any = _generated) -> Handler:
    return Handler(task, _TEXT, post, local, remote, llm_instruction=_INSTRUCTIONS.get(task, ""))


def _controls() -> list[Handler]:
    """ControlNet annotators, and drawing from a text and a control map."""
    builtin: dict[str, Callable[[Image.Image], Image.Image]] = {
        "canny": imageops.canny,
        "hed": imageops.soft_edges,
        "mlsd": imageops.straight_lines,
        "normal": imageops.normal_map,
        "scribble": imageops.scribble,
    }
    handlers = [
        Handler(
            f"{name}-control",
            _IMAGE,
            _control,
            Local("builtin", _each(lambda op, i: op(i["image"]))),
            builtins={f"{BUILTIN_PREFIX}{name}": op},
        )
        for name, op in builtin.items()
    ]
    handlers += [
        Handler(
            "depth-control",
            _IMAGE,
            _depth,
            Local("pipeline", _pipeline(lambda i: i["image"]), "depth-estimation", batchable=True),
        ),
        Handler(
            "seg-control",
            _IMAGE,
            _segment_map,
            Local("pipeline", _pipeline(lambda i: i["image"]), "image-segmentation"),
        ),
        Handler(
            "openpose-control",
            _IMAGE,
            _control,
            needs="the OpenPose network (controlnet_aux), which transformers does not provide",
        ),
    ]
    handlers += [
        Handler(f"{name}-text-to-image", _IMAGE, _image, Local("controlnet", _each(_diffusion)))
        for name in ("canny", "hed", "mlsd", "normal", "openpose", "scribble", "seg", "depth")
    ]
    return handlers


_HANDLERS = [
    Handler(
        "text-classification",
        _LABELS,
        _labels,
        Local(
            "pipeline",
            _pipeline(lambda i: i["text"], truncation=True, max_length=_max_length),
            "text-classification",
            batchable=True,
        ),
        lambda c, url, i: c.text_classification(i["text"], model=url),
    ),
    Handler(
        "token-classification",
        (Output("text", TEXT), Output("entities", JSON)),
        _entities,
        Local("pipeline", _pipeline(lambda i: i["text"]), "token-classification", batchable=True),
        lambda c, url, i: c.token_classification(i["text"], model=url),
    ),
    _text_task("summarization", Local("seq2seq", _seq2seq), _remote_generation("summary_text")),
    _text_task("translation", Local("seq2seq", _seq2seq), _remote_generation("translation_text")),
    _text_task("text2text-generation", Local("seq2seq", _seq2seq), _remote_generation("")),
    Handler(
        "question-answering",
        (Output("text", TEXT), Output("answer", JSON)),
        _answer,
        Local("extractive-qa", _each(_extractive_qa)),
        lambda c, url, i: c.question_answering(question=i["text"], context=i["context"], model=url),
    ),
    _text_task(
        "conversational",
        Local("pipeline", _each(_conversation), "text-generation"),
        _remote_generation(""),
    ),
    _text_task(
        "text-generation",
        Local(
            "pipeline",
            _pipeline(lambda i: i["text"], max_new_tokens=48, return_full_text=False),
            "text-generation",
        ),
        _remote_generation(""),
    ),
    Handler(
        "sentence-similarity",
        (Output("text", TEXT), Output("score", JSON)),
        _score,
        Local("sentence-transformers", _each(_similarity)),
        lambda c, url, i: c.sentence_similarity(
            i["text1"], other_sentences=[i["text2"]], model=url
        ),
    ),
    Handler(
        "tabular-classification",
        _LABELS,
        _labels,
        needs="reading a table out of an image (OCR), which Chorus does not have",
    ),
    Handler(
        "object-detection",
        (Output("image", IMAGE), Output("text", TEXT), Output("boxes", JSON)),
        _detections,
        Local("pipeline", _pipeline(lambda i: i["image"]), "object-detection", batchable=True),
        lambda c, url, i: c.object_detection(_png(i), model=url),
    ),
    Handler(
        "image-classification",
        _LABELS,
        _labels,
        Local("pipeline", _pipeline(lambda i: i["image"]), "image-classification", batchable=True),
        lambda c, url, i: c.image_classification(_png(i), model=url),
    ),
    Handler(
        "image-to-image",
        _IMAGE,
        _image,
        Local("diffusers", _each(_diffusion)),
        lambda c, url, i: c.image_to_image(_png(i), prompt=i.get("text") or None, model=url),
    ),
    Handler(
        "image-to-text",
        _TEXT,
        _generated,
        Local("pipeline", _pipeline(lambda i: {"images": i["image"]}), "image-text-to-text"),
        lambda c, url, i: [{"generated_text": c.image_to_text(_png(i), model=url).generated_text}],
    ),
    Handler(
        "text-to-image",
        _IMAGE,
        _image,
        Local("diffusers", _each(_diffusion)),
        lambda c, url, i: c.text_to_image(i["text"], model=url),
    ),
    Handler(
        "text-to-video",
        (Output("video", VIDEO),),
        _video_file,
        Local("diffusers", _each(_video)),
        lambda c, url, i: c.text_to_video(i["text"], model=url),
    ),
    Handler(
        "visual-question-answering",
        _TEXT,
        _generated,
        Local(
            "pipeline",
            _pipeline(lambda i: {"images": i["image"], "text": i["text"]}, max_new_tokens=32),
            "image-text-to-text",
        ),
        lambda c, url, i: [
            {"generated_text": c.visual_question_answering(_png(i), i["text"], model=url)[0].answer}
        ],
    ),
    Handler(
        "document-question-answering",
        (Output("text", TEXT), Output("answer", JSON)),
        _answer,
        Local(
            "pipeline",
            _pipeline(lambda i: {"image": i["image"], "question": i["text"]}),
            "document-question-answering",
        ),
        lambda c, url, i: c.document_question_answering(_png(i), i["text"], model=url),
    ),
    Handler(
        "image-segmentation",
        (Output("image", IMAGE), Output("text", TEXT), Output("segments", JSON)),
        _segments,
        Local("pipeline", _pipeline(lambda i: i["image"]), "image-segmentation"),
        lambda c, url, i: c.image_segmentation(_png(i), model=url),
    ),
    Handler(
        "depth-estimation",
        _IMAGE,
        _depth,
        Local("pipeline", _pipeline(lambda i: i["image"]), "depth-estimation", batchable=True),
    ),
    Handler(
        "text-to-speech",
        (Output("audio", AUDIO),),
        _speech,
        Local("pipeline", _pipeline(lambda i: i["text"]), "text-to-audio"),
        lambda c, url, i: c.text_to_speech(i["text"], model=url),
    ),
    Handler(
        "automatic-speech-recognition",
        _TEXT,
        _transcript,
        Local("pipeline", _pipeline(_audio_input), "automatic-speech-recognition"),
        lambda c, url, i: c.automatic_speech_recognition(_wav(i), model=url),
    ),
    Handler(
        "audio-to-audio",
        (Output("audio", AUDIO),),
        _audios,
        remote=lambda c, url, i: c.audio_to_audio(_wav(i), model=url),
        needs="a speech enhancement or separation library (SpeechBrain, ESPnet) outside "
        "transformers; run it remotely (CHORUS_REMOTE_INFERENCE=1)",
    ),
    Handler(
        "audio-classification",
        _LABELS,
        _labels,
        # Not batched: padded audio without an attention mask (wav2vec2-base) changes answers.
        Local("pipeline", _pipeline(_audio_input), "audio-classification"),
        lambda c, url, i: c.audio_classification(_wav(i), model=url),
    ),
    *_controls(),
]

LOADERS = frozenset(
    {
        "pipeline",
        "seq2seq",
        "extractive-qa",
        "sentence-transformers",
        "builtin",
        "diffusers",
        "controlnet",
    }
)


def _check(handler: Handler) -> None:
    declared = TASK_TYPES.get(handler.task)
    if declared is None:
        raise HandlerError(f"handler for unknown task type {handler.task!r}")
    kinds = {o.kind for o in handler.outputs}
    missing = [k for k in declared.outputs if k not in kinds]
    if missing:
        raise HandlerError(f"{handler.task}: produces no output of kind(s) {missing}")
    if handler.local is None and not handler.needs:
        raise HandlerError(f"{handler.task}: no local backend and no word on what it needs")
    if handler.local is not None:
        if handler.local.loader not in LOADERS:
            raise HandlerError(f"{handler.task}: unknown loader {handler.local.loader!r}")
        if handler.local.loader == "pipeline" and not handler.local.pipeline_task:
            raise HandlerError(f"{handler.task}: a pipeline handler names no pipeline task")
        if (handler.local.loader == "builtin") != bool(handler.builtins):
            raise HandlerError(f"{handler.task}: built-in operations go with the builtin loader")
    if (handler.task in LLM_TASKS) != bool(handler.llm_instruction):
        raise HandlerError(f"{handler.task}: LLM tasks, and only they, have an LLM instruction")


def build_registry(handlers: Sequence[Handler]) -> dict[str, Handler]:
    """Every task type's handler, checked: one per known task type, outputs of the declared kinds."""
    registry: dict[str, Handler] = {}
    for handler in handlers:
        _check(handler)
        if handler.task in registry:
            raise HandlerError(f"two handlers for {handler.task!r}")
        registry[handler.task] = handler
    unhandled = sorted(set(TASK_TYPES) - set(registry))
    if unhandled:
        raise HandlerError(f"no handler for task type(s) {', '.join(unhandled)}")
    return registry


HANDLERS = build_registry(_HANDLERS)
