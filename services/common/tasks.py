"""The task types Chorus knows: each type's argument slots and output kinds, declared once.

The planner uses these to prompt and validate, the selector to resolve `<GENERATED>` inputs,
the executor to look up a handler. Names follow Hugging Face pipeline tags as HuggingGPT does.
"""

from __future__ import annotations

from dataclasses import dataclass

from chorus.v1.messages_pb2 import Kind, TaskStatus

TEXT, IMAGE, AUDIO, VIDEO = Kind.KIND_TEXT, Kind.KIND_IMAGE, Kind.KIND_AUDIO, Kind.KIND_VIDEO
KIND_NAMES = {TEXT: "text", IMAGE: "image", AUDIO: "audio", VIDEO: "video"}
# The most tasks one plan may hold: the planner refuses a longer plan, and the selector refuses
# one published to `chorus.plan` by anyone else.
MAX_PLAN_TASKS = 64


@dataclass(frozen=True)
class Slot:
    name: str
    kind: Kind.ValueType
    required: bool = True


@dataclass(frozen=True)
class TaskType:
    name: str
    slots: tuple[Slot, ...]
    outputs: tuple[Kind.ValueType, ...]
    summary: str

    def slot(self, name: str) -> Slot | None:
        return next((s for s in self.slots if s.name == name), None)


def _t(name: str, slots: str, outputs: str, summary: str) -> TaskType:
    """Compact declaration: slots as "text,image?" (`?` optional), outputs as "image"."""
    by_name = {"text": TEXT, "image": IMAGE, "audio": AUDIO, "video": VIDEO}

    def slot(spec: str) -> Slot:
        optional = spec.endswith("?")
        slot_name = spec.rstrip("?")
        kind = by_name.get(slot_name.rstrip("0123456789"), TEXT)
        return Slot(slot_name, kind, required=not optional)

    return TaskType(
        name=name,
        slots=tuple(slot(s) for s in slots.split(",")),
        outputs=tuple(by_name[o] for o in outputs.split(",")),
        summary=summary,
    )


_CONTROL = ("canny", "hed", "mlsd", "normal", "openpose", "scribble", "seg", "depth")

TASK_TYPES: dict[str, TaskType] = {
    t.name: t
    for t in [
        _t("text-classification", "text", "text", "label a text (sentiment, topic)"),
        _t("token-classification", "text", "text", "tag entities in a text"),
        _t("text2text-generation", "text", "text", "rewrite a text"),
        _t("summarization", "text", "text", "summarize a text"),
        _t("translation", "text", "text", "translate a text"),
        _t("question-answering", "text,context", "text", "answer a question from a context"),
        _t("conversational", "text", "text", "reply in a conversation"),
        _t("text-generation", "text", "text", "continue a text"),
        _t("sentence-similarity", "text1,text2", "text", "score how alike two texts are"),
        _t("tabular-classification", "image", "text", "classify rows of a table image"),
        _t("object-detection", "image", "image,text", "find and box objects in an image"),
        _t("image-classification", "image", "text", "label an image"),
        _t("image-to-image", "image,text?", "image", "transform an image"),
        _t("image-to-text", "image", "text", "caption an image"),
        _t("text-to-image", "text", "image", "draw an image from a text"),
        _t("text-to-video", "text", "video", "make a video from a text"),
        _t("visual-question-answering", "image,text", "text", "answer a question on an image"),
        _t("document-question-answering", "image,text", "text", "answer from a document"),
        _t("image-segmentation", "image", "image,text", "segment an image into masks"),
        _t("depth-estimation", "image", "image", "estimate depth from an image"),
        _t("text-to-speech", "text", "audio", "read a text aloud"),
        _t("automatic-speech-recognition", "audio", "text", "transcribe speech"),
        _t("audio-to-audio", "audio", "audio", "enhance or separate audio"),
        _t("audio-classification", "audio", "text", "label an audio clip"),
        *[_t(f"{c}-control", "image", "image", f"make a {c} control map") for c in _CONTROL],
        *[
            _t(f"{c}-text-to-image", "text,image", "image", f"draw from a text and {c} map")
            for c in _CONTROL
        ],
    ]
}


# Text tasks that HuggingGPT hands to the LLM itself rather than to a Hub model.
LLM_TASKS = frozenset(
    {"summarization", "translation", "conversational", "text-generation", "text2text-generation"}
)


def task_type(name: str) -> TaskType | None:
    return TASK_TYPES.get(name)


def status_name(status: TaskStatus.ValueType) -> str:
    """`TASK_STATUS_SUCCEEDED` -> `succeeded`, as users and metrics see it."""
    return TaskStatus.Name(status).removeprefix("TASK_STATUS_").lower()
