"""The data model of a task handler: what it reads and writes, how it runs, and its checks.

A handler's local `call` gets the loaded model and a batch of decoded inputs (text as `str`,
images as PIL, audio as `Audio`) and returns one raw result per input; `post` turns a raw
result (from a local model or from remote inference, which answer in the same shapes) into
`Produced` outputs, which `execute` stores as artifacts and messages.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from chorus.v1.messages_pb2 import Kind
from PIL import Image

from services.common.tasks import AUDIO, IMAGE, LLM_TASKS, TASK_TYPES, TEXT, VIDEO, Slot
from services.executor.media import Audio

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


class Loader(StrEnum):
    """How a task's model is loaded (each has its loader in `models.py`)."""

    PIPELINE = "pipeline"  # a transformers pipeline, named by `Local.pipeline_task`
    SEQ2SEQ = "seq2seq"  # an encoder-decoder model with its tokenizer
    EXTRACTIVE_QA = "extractive-qa"  # a span-prediction model with its tokenizer
    SENTENCE_TRANSFORMERS = "sentence-transformers"
    BUILTIN = "builtin"  # an operation in this package, named `builtin:<name>`
    DIFFUSERS = "diffusers"  # a diffusers pipeline (the optional `diffusers` extra)
    CONTROLNET = "controlnet"  # a ControlNet under a Stable Diffusion base
    ANNOTATOR = "annotator"  # an annotator network (HED, M-LSD, OpenPose), `annotators.py`


# A batch of decoded inputs for the loaded model -> one raw result per input.
LocalCall = Callable[[Any, Sequence[Inputs]], list[Any]]
# Remote inference: (InferenceClient, model URL, inputs) -> a raw result in `post`'s shape.
Remote = Callable[[Any, str, Inputs], Any]
PostProcess = Callable[[Any, Inputs], list[Produced]]
Operation = Callable[[Image.Image], Image.Image]


@dataclass(frozen=True)
class Local:
    """How a task runs on local weights."""

    loader: Loader
    call: LocalCall
    # The transformers pipeline, for `Loader.PIPELINE`; the diffusers pipeline's task, for
    # `Loader.DIFFUSERS` (empty: the class the model's repo names); the annotator's task,
    # for `Loader.ANNOTATOR`.
    pipeline_task: str = ""
    batchable: bool = False  # several inputs in one forward pass give the same answers


@dataclass(frozen=True)
class Handler:
    task: str
    outputs: tuple[Output, ...]
    post: PostProcess
    local: Local | None = None
    remote: Remote | None = None
    llm_instruction: str = ""  # set for the text tasks the LLM itself can do
    # Why the task cannot run locally, when `local` is None: said to whoever asks for it.
    needs: str = ""
    # `builtin:<name>` operations that serve the task with no weights (beside the network,
    # for a handler whose loader is not `Loader.BUILTIN`).
    builtins: Mapping[str, Operation] = field(default_factory=dict)

    @property
    def inputs(self) -> tuple[Slot, ...]:
        """The argument slots, as the task type declares them (`services/common/tasks.py`)."""
        return TASK_TYPES[self.task].slots


class HandlerError(ValueError):
    """A handler declaration is inconsistent; raised when the registry is built."""


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
        if handler.local.loader == Loader.PIPELINE and not handler.local.pipeline_task:
            raise HandlerError(f"{handler.task}: a pipeline handler names no pipeline task")
        if handler.local.loader == Loader.BUILTIN and not handler.builtins:
            raise HandlerError(f"{handler.task}: the builtin loader names no built-in operation")
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
