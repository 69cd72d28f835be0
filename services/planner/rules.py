"""The planner that needs no LLM: intents from keywords, inputs from files and quotes.

Input resources are the attached files plus the paths and URLs the request mentions, typed by
extension. Each intent is a task type, the words that ask for it, and the kind of input it
works on; intents are found in the order the request states them, and a task whose input is
an earlier task's output of the right kind is chained to it ("describe this image and read it
aloud"). A request with no recognisable intent becomes an empty plan: a direct answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from chorus.v1.messages_pb2 import ArtifactRef, GeneratedRef, Kind, Task, TaskArgument

from services.common.artifact_refs import kind_for_name, media_type_for
from services.common.tasks import AUDIO, IMAGE, TEXT, task_type


@dataclass(frozen=True)
class _Intent:
    task: str
    pattern: re.Pattern[str]
    needs: Kind.ValueType  # the kind of input the intent works on


def _intent(task: str, words: str, needs: Kind.ValueType) -> _Intent:
    return _Intent(task, re.compile(rf"\b(?:{words})", re.I), needs)


_SOME = r"(?:[\w'-]+\s+){0,4}"  # up to four words between a verb and its object
# Earlier entries win where two intents match the same words.
_INTENTS = [
    _intent("canny-control", r"edges?\b|canny|outlines?\b", IMAGE),
    _intent("scribble-control", r"scribble", IMAGE),
    _intent("normal-control", r"normal.map", IMAGE),
    _intent("mlsd-control", r"straight lines?|line map|wireframe|mlsd", IMAGE),
    _intent("openpose-control", r"pose\b|skeleton|openpose", IMAGE),
    _intent("image-segmentation", r"segment", IMAGE),
    _intent("depth-estimation", r"depth", IMAGE),
    _intent(
        "object-detection",
        rf"detect|bounding box|(?:identify|find|locate|label|count|spot)\s+{_SOME}objects?\b",
        IMAGE,
    ),
    _intent("tabular-classification", r"tabl(?:e|ular)|spreadsheet", IMAGE),
    _intent("document-question-answering", r"document|invoice|receipt|form\b|scanned", IMAGE),
    _intent("image-classification", r"classif|what kind of|categor|what (?:type|breed)", IMAGE),
    _intent(
        "image-to-image",
        rf"edit|modify|transform|stylize|(?:change|turn|convert)\s+{_SOME}(?:into|to look)",
        IMAGE,
    ),
    _intent(
        "visual-question-answering",
        r"how many|what colou?r|is there|are there|who is|what is (?:the|this) \w+ doing"
        r"|answer\s+(?:\w+\s+){0,3}question",
        IMAGE,
    ),
    _intent(
        "image-to-text",
        r"describ|caption|what is in|what's in|tell me about|extract (?:the )?text|image.to.text",
        IMAGE,
    ),
    _intent(
        "automatic-speech-recognition",
        r"transcri|what does .{0,80}? say|speech.to.text|recogni",
        AUDIO,
    ),
    _intent("audio-to-audio", r"enhanc|denois|noise|separat|clean\s+up|improve", AUDIO),
    _intent("audio-classification", r"classif|what (?:sound|kind)|categor|identify", AUDIO),
    _intent("sentence-similarity", r"similar", TEXT),
    _intent(
        "question-answering", r"based on (?:the|this) (?:text|passage|paragraph|context)", TEXT
    ),
    _intent("text-classification", r"sentiment|classif|categor", TEXT),
    _intent(
        "token-classification",
        r"named.entit|entities|\bner\b|part.of.speech|\bpos\b tag",
        TEXT,
    ),
    _intent("summarization", r"summar|shorten|condense|tl;?dr", TEXT),
    _intent("translation", r"translat", TEXT),
    _intent(
        "text-to-video",
        rf"(?:generate|create|make|produce|render)\s+{_SOME}(?:video|animation|clip)|text.to.video",
        TEXT,
    ),
    _intent(
        "text-to-image",
        rf"draw|paint|sketch|(?:generate|create|make|produce|design|render)\s+{_SOME}"
        r"(?:image|picture|illustration|drawing|artwork|photo)|text.to.image",
        TEXT,
    ),
    _intent(
        "text-to-speech",
        r"read (?:it |this |that )?aloud|speak|say it|text.to.speech|(?:in)?to (?:natural )?"
        r"(?:sounding )?speech|spoken|voice|narrat|audio (?:version|file) of",
        TEXT,
    ),
    _intent(
        "text-generation",
        r"continue|complete (?:the|this|my)|write (?:a |an |the )?(?:story|poem|paragraph|essay)"
        r"|generate (?:some |a )?(?:text|story|continuation)",
        TEXT,
    ),
    _intent("conversational", r"chat|conversation|talk (?:to|with)|respond to|reply to", TEXT),
]
_QUOTED = re.compile(r"\"([^\"]+)\"|“([^”]+)”|'([^']{3,})'")
# A mention starts only where a path-like run of characters starts (the lookbehind): tried at
# every character of one long word instead, the search took time quadratic in its length.
_MENTION = re.compile(
    r"(?<![\w./\\:-])"
    r"(?:https?://[^\s'\"<>]+|[\w./\\-]*\w\.(?:jpe?g|png|gif|bmp|webp|tiff?|wav|mp3|flac|ogg|m4a"
    r"|mp4|avi|mov|mkv|webm))(?=[\s'\",.;:!?)]|$)",
    re.I,
)


def plan_by_rules(text: str, attached: dict[str, ArtifactRef]) -> list[Task]:
    """Tasks for the intents found in `text`, chained where one's output feeds the next."""
    files = _input_files(text, attached)
    quoted = [
        q
        for m in _QUOTED.finditer(text)
        if not _MENTION.fullmatch(q := next(g for g in m.groups() if g))
    ]
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


def mentioned_files(text: str) -> list[ArtifactRef]:
    """Paths and URLs the text names, typed by extension; they have no artifact id."""
    found = []
    for match in _MENTION.finditer(text):
        name = match.group(0)
        kind = kind_for_name(name)
        if kind != Kind.KIND_UNSPECIFIED:
            found.append(ArtifactRef(name=name, media_type=media_type_for(name), kind=kind))
    return found


def _input_files(text: str, attached: dict[str, ArtifactRef]) -> list[ArtifactRef]:
    """Attached files the text names, then other mentions.

    When it names none, every attached file, newest turn first: in a chat, "the image from
    before" is the latest one, whether the user sent it or an earlier answer made it.
    """
    named = [r for r in attached.values() if r.name in text] or list(attached.values())[::-1]
    names = {r.name for r in named}
    others = [m for m in mentioned_files(text) if m.name.rsplit("/", 1)[-1] not in names]
    return named + others


def _matches(text: str, files: list[ArtifactRef]) -> list[tuple[int, _Intent]]:
    """Intents found in the text whose input exists: a file, or what another intent makes."""
    kinds = {f.kind for f in files} | {TEXT}
    grown = True
    while grown:  # "draw a fox, then describe it": the image will exist
        before = len(kinds)
        for intent in _INTENTS:
            if intent.needs in kinds and intent.pattern.search(text):
                declared = task_type(intent.task)
                kinds.update(declared.outputs if declared else ())
        grown = len(kinds) > before
    found: list[tuple[int, _Intent]] = []
    claimed: list[tuple[int, int]] = []
    for intent in _INTENTS:
        match = intent.pattern.search(text) if intent.needs in kinds else None
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
    texts = iter(quoted)
    for slot in kind.slots:
        arg = TaskArgument(name=slot.name)
        source = _producer_of(slot.kind, earlier)
        file = next((f for f in files if f.kind == slot.kind), None)
        if slot.name in ("text1", "text2", "context"):
            value = next(texts, None)
            if value is None:
                return None
            arg.text = value
        elif source is not None and (slot.kind != TEXT or _reads_media(source)):
            arg.generated.CopyFrom(GeneratedRef(task_id=source.id, kind=slot.kind))
            task.deps.append(source.id)
        elif file is not None:
            if file.id:
                arg.artifact.CopyFrom(file)
            else:  # a path or URL the request mentions: passed on as written
                arg.text = file.name
        elif slot.kind == TEXT:
            arg.text = next(texts, None) or text
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
