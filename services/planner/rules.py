"""The planner that needs no LLM: intents from keywords, inputs from the attached files.

It handles single tasks and simple chains ("describe this image and read it aloud"); anything
it does not recognise becomes an empty plan, which the responder answers directly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from chorus.v1.messages_pb2 import ArtifactRef, GeneratedRef, Kind, Task, TaskArgument

from services.common.tasks import AUDIO, IMAGE, TEXT, task_type


@dataclass(frozen=True)
class _Intent:
    task: str
    pattern: re.Pattern[str]
    needs: Kind.ValueType  # the kind of input the intent works on


def _intent(task: str, words: str, needs: Kind.ValueType) -> _Intent:
    return _Intent(task, re.compile(rf"\b(?:{words})", re.I), needs)


# Earlier entries win when two intents match the same words.
_INTENTS = [
    _intent("canny-control", r"edges?\b|canny|outlines?\b", IMAGE),
    _intent("object-detection", r"detect|objects?\b|bounding box", IMAGE),
    _intent("image-segmentation", r"segment", IMAGE),
    _intent("depth-estimation", r"depth", IMAGE),
    _intent("image-classification", r"classif|what kind of|categor", IMAGE),
    _intent("visual-question-answering", r"how many|what colou?r|is there", IMAGE),
    _intent("image-to-text", r"describ|caption|what is in|what's in|tell me about", IMAGE),
    _intent("automatic-speech-recognition", r"transcri|what does .* say|speech to text", AUDIO),
    _intent("audio-classification", r"classif|what (?:sound|kind)", AUDIO),
    _intent("sentence-similarity", r"similar", TEXT),
    _intent("text-classification", r"sentiment|classif", TEXT),
    _intent("token-classification", r"entit|named", TEXT),
    _intent("summarization", r"summar", TEXT),
    _intent("translation", r"translat", TEXT),
    _intent(
        "text-to-image", r"draw|paint|(?:generate|create|make) (?:an? )?(?:image|picture)", TEXT
    ),
    _intent("text-to-speech", r"read (?:it |this )?aloud|speak|say it|text to speech", TEXT),
]
_QUOTED = re.compile(r"\"([^\"]+)\"|“([^”]+)”|'([^']{3,})'")


def plan_by_rules(text: str, resources: dict[str, ArtifactRef]) -> list[Task]:
    """Tasks for the intents found in `text`, chained where one's output feeds the next."""
    files = [r for r in resources.values() if r.name in text] or list(resources.values())
    quoted = [next(g for g in m.groups() if g) for m in _QUOTED.finditer(text)]
    tasks: list[Task] = []
    used: set[str] = set()
    for _position, intent in sorted(_matches(text, files), key=lambda m: m[0]):
        if intent.task in used:
            continue
        task = _build(len(tasks), intent, files, quoted, text, tasks)
        if task is not None:
            tasks.append(task)
            used.add(intent.task)
    return tasks


def _matches(text: str, files: list[ArtifactRef]) -> list[tuple[int, _Intent]]:
    kinds = {f.kind for f in files}
    found: list[tuple[int, _Intent]] = []
    claimed: list[tuple[int, int]] = []
    for intent in _INTENTS:
        usable = intent.needs == TEXT or intent.needs in kinds
        match = intent.pattern.search(text) if usable else None
        if match and not any(a <= match.start() < b for a, b in claimed):
            found.append((match.start(), intent))
            claimed.append(match.span())
    return found


def _build(
    task_id: int,
    intent: _Intent,
    files: list[ArtifactRef],
    quoted: list[str],
    text: str,
    earlier: list[Task],
) -> Task | None:
    kind = task_type(intent.task)
    assert kind is not None, intent.task
    task = Task(id=task_id, task=intent.task)
    for slot in kind.slots:
        arg = TaskArgument(name=slot.name)
        source = _producer_of(slot.kind, earlier)
        file = next((f for f in files if f.kind == slot.kind), None)
        if slot.kind == TEXT and slot.name in ("text1", "text2"):
            index = int(slot.name[-1]) - 1
            if len(quoted) <= index:
                return None
            arg.text = quoted[index]
        elif source is not None and (slot.kind != TEXT or _reads_media(source)):
            arg.generated.CopyFrom(GeneratedRef(task_id=source.id, kind=slot.kind))
            task.deps.append(source.id)
        elif file is not None:
            arg.artifact.CopyFrom(file)
        elif slot.kind == TEXT:
            arg.text = quoted[0] if quoted else text
        elif slot.required:
            return None
        else:
            continue
        task.args.append(arg)
    return task


def _reads_media(task: Task) -> bool:
    """Text made from an image or audio is what "read it aloud" means by "it"."""
    declared = task_type(task.task)
    return declared is not None and any(s.kind != TEXT for s in declared.slots)


def _producer_of(kind: Kind.ValueType, earlier: list[Task]) -> Task | None:
    """The latest earlier task whose output has this kind: the link of a chain."""
    for task in reversed(earlier):
        declared = task_type(task.task)
        if declared is not None and kind in declared.outputs:
            return task
    return None
