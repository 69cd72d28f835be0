"""Turns an LLM's planning reply (HuggingGPT's JSON task list) into a valid task graph.

Real replies are read as leniently as is safe, and every liberty taken is named: a task type
spelt another way, ids that count from 1 or written as strings, `arguments` for `args`,
`<GENERATED-0>` for `<GENERATED>-0`, two generated inputs in one argument, a dependency on a
task that is not there. What cannot be made into a valid graph is rejected with the precise
reason (`PlanError`), for the repair round; a reply that stops before its first task is
complete (`UnfinishedPlan`) is worth asking again with more room.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, replace
from typing import Any

from chorus.v1.messages_pb2 import ArtifactRef, GeneratedRef, Kind, Task, TaskArgument

from services.common.artifacts import kind_for_name
from services.common.lenient_json import (
    CutBeforeAnyItem,
    JSONRepairError,
    ReasoningOnly,
    load_lenient,
)
from services.common.resources import find_resource
from services.common.tasks import KIND_NAMES, TASK_TYPES, TEXT, Slot, TaskType

MAX_TASKS = 64

_GENERATED = re.compile(
    r"<\s*GENERATED\s*>\s*[-_]\s*(\d+)|<\s*GENERATED\s*[-_]\s*(\d+)\s*>|<\s*node\s*[-_]\s*(\d+)\s*>",
    re.I,
)
_CANONICAL_REF = re.compile(r"<GENERATED>-(\d+)")
_ID_TEXT = re.compile(r"(?:(?:task|id|t|#)[\s_#-]*)?(-?\d+)", re.I)
_ARGS_KEYS = ("args", "arguments", "parameters", "params", "inputs")
_FILE = re.compile(r"\.([A-Za-z0-9]{2,4})$")
_SYNONYMS = {
    "image-captioning": "image-to-text",
    "caption-generation": "image-to-text",
    "text-rewriting": "text2text-generation",
    "text-rewriter": "text2text-generation",
    "paraphrasing": "text2text-generation",
    "text-completion": "text-generation",
    "text-gen": "text-generation",
    "text-generator": "text-generation",
    "text2image": "text-to-image",
    "text2video": "text-to-video",
    "text-summarization": "summarization",
    "text-summarizer": "summarization",
    "machine-translation": "translation",
    "text-translation": "translation",
    "text-translator": "translation",
    "image-transformation": "image-to-image",
    "speech-enhancement": "audio-to-audio",
    "audio-enhancement": "audio-to-audio",
    "noise-reduction": "audio-to-audio",
    "audio-noise-reduction": "audio-to-audio",
    "transcription": "automatic-speech-recognition",
    "audio-to-text": "automatic-speech-recognition",
    "image-caption": "image-to-text",
    "captioning": "image-to-text",
    "speech-recognition": "automatic-speech-recognition",
    "speech-to-text": "automatic-speech-recognition",
    "asr": "automatic-speech-recognition",
    "tts": "text-to-speech",
    "text-to-audio": "text-to-speech",
    "speech-synthesis": "text-to-speech",
    "ner": "token-classification",
    "named-entity-recognition": "token-classification",
    "sentiment-analysis": "text-classification",
    "image-generation": "text-to-image",
    "video-generation": "text-to-video",
    "vqa": "visual-question-answering",
    "summarize": "summarization",
    "translate": "translation",
    "chat": "conversational",
    "dialogue": "conversational",
    "image-editing": "image-to-image",
    "segmentation": "image-segmentation",
    "detection": "object-detection",
}


class PlanError(ValueError):
    """The reply cannot be made into a valid plan; the message says exactly why."""


class UnfinishedPlan(PlanError):
    """The reply stops before its first task is complete (cut off by the token limit, or
    reasoning that never reached an answer): asking again with more room may help."""


@dataclass(frozen=True)
class ParsedPlan:
    tasks: list[Task]
    normalizations: list[str]  # empty: the reply was a valid plan exactly as written


@dataclass
class _Draft:
    """One task as the reply wrote it, before ids are settled."""

    position: int
    raw_id: int | None
    type: TaskType
    declared_deps: list[int]
    args: list[tuple[str, str]]  # (slot name as written, value as written)


def parse_plan(
    reply: str, resources: dict[str, ArtifactRef], *, cut_off: bool = False
) -> ParsedPlan:
    """`cut_off`: the server stopped the reply at its token limit. Only the tasks that were
    complete before the cut are read; an unfinished task is never completed by guesswork."""
    try:
        loaded = load_lenient(reply, cut_off=cut_off)
    except CutBeforeAnyItem as e:
        raise UnfinishedPlan("the reply was cut off before its first task was complete") from e
    except ReasoningOnly as e:
        raise UnfinishedPlan(str(e)) from e
    except JSONRepairError as e:
        raise PlanError(str(e)) from e
    notes = list(loaded.repairs)
    items = _task_items(loaded.value, notes)
    if len(items) > MAX_TASKS:
        raise PlanError(f"the plan has {len(items)} tasks, more than {MAX_TASKS}")
    drafts = _unfold([_draft(i, item, notes) for i, item in enumerate(items)], notes)
    return ParsedPlan(_Linker(drafts, resources, notes).tasks(), notes)


def normalize_task_name(name: str) -> str:
    return re.sub(r"[\s_-]+", "-", name.strip().lower()).strip("-")


def _task_items(value: Any, notes: list[str]) -> list[Any]:
    if isinstance(value, dict):
        if isinstance(value.get("tasks"), list):
            if set(value) != {"tasks"}:
                notes.append("read the task list out of a wrapping object")
            return list(value["tasks"])
        if "task" in value:
            notes.append("read a single task object as a plan of one task")
            return [value]
        raise PlanError("the reply is an object without a task list")
    if not isinstance(value, list):
        raise PlanError(f"the reply is a JSON {type(value).__name__}, not a list of tasks")
    return value


def _draft(position: int, item: Any, notes: list[str]) -> _Draft:
    where = f"task #{position}"
    if not isinstance(item, dict):
        raise PlanError(f"{where} is not an object")
    task_type = _task_type(_clean(str(item.get("task", ""))), where, notes)
    raw_id = _optional_int(item.get("id"), f"{where}: id", notes)
    deps = [
        d
        for d in (_optional_int(v, f"{where}: dep", notes) for v in _deps_list(item.get("dep")))
        if d is not None and d >= 0
    ]
    return _Draft(position, raw_id, task_type, deps, _arguments(item, task_type, where, notes))


def _task_type(name: str, where: str, notes: list[str]) -> TaskType:
    if name in TASK_TYPES:
        return TASK_TYPES[name]
    normalized = normalize_task_name(name)
    found = normalized if normalized in TASK_TYPES else _SYNONYMS.get(normalized)
    if found is None:
        close = difflib.get_close_matches(normalized, list(TASK_TYPES), n=1, cutoff=0.88)
        found = close[0] if close else None
    if found is None:
        raise PlanError(f"{where}: unknown task type {name!r}")
    notes.append(f"read task type {name!r} as {found!r}")
    return TASK_TYPES[found]


def _optional_int(value: Any, what: str, notes: list[str]) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = _id_in_text(value, what, notes)
    try:
        number = int(str(value).strip())
    except ValueError as e:
        raise PlanError(f"{what} is not a number: {value!r}") from e
    if abs(number) > 10_000:
        raise PlanError(f"{what} is out of range: {number}")
    return number


def _id_in_text(text: str, what: str, notes: list[str]) -> str:
    """The number in an id or dependency written as a string: "1", "task-1", "#1"."""
    match = _ID_TEXT.fullmatch(text.strip())
    if match is None:
        raise PlanError(f"{what} is not a number: {text!r}")
    note = "read task ids or dependencies written as strings"
    if note not in notes:
        notes.append(note)
    return match.group(1)


def _deps_list(value: Any) -> list[Any]:
    """A task's dependencies; one string may list several ("0, 1")."""
    if isinstance(value, str) and _ID_TEXT.fullmatch(value.strip()) is None:
        return [v for v in re.split(r"[,;\s]+", value.strip()) if v]
    return _as_list(value)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _arguments(
    item: dict[str, Any], task_type: TaskType, where: str, notes: list[str]
) -> list[tuple[str, str]]:
    """The (slot, value) pairs, from an `args` object, a bare string, or a list in slot order."""
    key = next((k for k in _ARGS_KEYS if k in item), "args")
    if key != "args":
        notes.append(f"{where}: read its {key!r} as 'args'")
    raw = item.get(key, {})
    if isinstance(raw, dict):
        return [(_clean(str(k)), _text(v)) for k, v in raw.items()]
    values = [_text(v) for v in _as_list(raw)]
    if values:
        notes.append(f"{where}: gave unnamed arguments to {task_type.name}'s slots in order")
    return [("", v) for v in values]


def _text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return " ".join(_text(v) for v in value)
    return "" if value is None else _clean(str(value))


def _clean(text: str) -> str:
    """Valid UTF-8 only: JSON may carry a lone surrogate (`\\ud800`) that protobuf refuses."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _unfold(drafts: list[_Draft], notes: list[str]) -> list[_Draft]:
    """One task per generated input where an argument names several (HuggingGPT's unfold)."""
    unfolded: list[_Draft] = []
    for draft in drafts:
        multi = [(i, refs) for i, (_, v) in enumerate(draft.args) if len(refs := _refs(v)) > 1]
        if not multi:
            unfolded.append(draft)
            continue
        index, refs = multi[0]
        slot = draft.args[index][0]
        notes.append(f"split task #{draft.position} into {len(refs)}, one per generated input")
        for n, ref in enumerate(refs):
            args = list(draft.args)
            args[index] = (slot, f"<GENERATED>-{ref}")
            # The first copy keeps the id, so references to the task still find it.
            unfolded.append(replace(draft, raw_id=draft.raw_id if n == 0 else None, args=args))
    for position, draft in enumerate(unfolded):
        draft.position = position
    return unfolded


def _refs(value: str) -> list[int]:
    digits = [next(g for g in m.groups() if g) for m in _GENERATED.finditer(value)]
    return [int(d) if len(d) <= 6 else 10**6 for d in digits]  # a huge id names no task


class _Linker:
    """Settles ids, resolves references and arguments, and checks the graph."""

    def __init__(
        self, drafts: list[_Draft], resources: dict[str, ArtifactRef], notes: list[str]
    ) -> None:
        self._drafts = drafts
        self._resources = resources
        self._notes = notes
        explicit = [d.raw_id for d in drafts]
        self._ids_given = any(i is not None for i in explicit)

    def tasks(self) -> list[Task]:
        deps: dict[int, set[int]] = {}
        args: dict[int, list[TaskArgument]] = {}
        for draft in self._drafts:
            deps[draft.position] = self._declared_deps(draft)
            args[draft.position] = self._resolve_args(draft, deps[draft.position])
        order = _topological(deps)
        if order is None:
            cycle = sorted(p for p, d in deps.items() if d)
            raise PlanError(f"the dependencies form a cycle among tasks {cycle}")
        if order != sorted(order):
            self._notes.append("reordered the tasks so that each comes after its inputs")
        self._note_renumbering(order)
        new_id = {position: i for i, position in enumerate(order)}
        tasks = []
        for position in order:
            task = Task(id=new_id[position], task=self._drafts[position].type.name)
            task.deps.extend(sorted(new_id[d] for d in deps[position]))
            for arg in args[position]:
                if arg.WhichOneof("value") == "generated":
                    arg.generated.task_id = new_id[arg.generated.task_id]
                task.args.append(arg)
            tasks.append(task)
        return tasks

    def _position_of(self, raw_id: int, referrer: int) -> int | None:
        """The task an id names: the latest with that id before the referrer, else the first."""
        if not self._ids_given:
            return raw_id if 0 <= raw_id < len(self._drafts) else None
        matches = [d.position for d in self._drafts if d.raw_id == raw_id]
        before = [p for p in matches if p < referrer]
        return before[-1] if before else (matches[0] if matches else None)

    def _declared_deps(self, draft: _Draft) -> set[int]:
        found = set()
        for raw in draft.declared_deps:
            position = self._position_of(raw, draft.position)
            if position == draft.position:
                self._notes.append(f"task #{draft.position}: dropped its dependency on itself")
            elif position is None:
                self._notes.append(
                    f"task #{draft.position}: dropped a dependency on task {raw}, "
                    "which is not in the plan"
                )
            else:
                found.add(position)
        return found

    def _resolve_args(self, draft: _Draft, deps: set[int]) -> list[TaskArgument]:
        where = f"task #{draft.position} ({draft.type.name})"
        filled: dict[str, TaskArgument] = {}
        for slot_name, value in draft.args:
            arg, kind = self._value(value, draft, deps, where)
            if arg.WhichOneof("value") == "generated" and draft.type.slot(slot_name):
                kind = None  # a named slot takes a generated input; its kind is checked below
            slot = self._slot_for(slot_name, kind, draft.type, filled, where)
            if arg.WhichOneof("value") == "generated":
                arg.generated.kind = slot.kind
                self._check_producer(arg.generated.task_id, slot.kind, draft, where)
            arg.name = slot.name
            filled[slot.name] = arg
        for slot in draft.type.slots:
            if slot.required and slot.name not in filled:
                filled[slot.name] = self._fill_missing(slot.name, slot.kind, deps, draft, where)
        order = [s.name for s in draft.type.slots]
        return sorted(filled.values(), key=lambda a: order.index(a.name))

    def _value(
        self, value: str, draft: _Draft, deps: set[int], where: str
    ) -> tuple[TaskArgument, Kind.ValueType | None]:
        """The argument a value makes, and its kind when the value itself shows it."""
        refs = _refs(value)
        if refs:
            position = self._position_of(refs[0], draft.position)
            if position is None:
                raise PlanError(
                    f"{where} uses the output of task {refs[0]}, which is not in the plan"
                )
            if position == draft.position:
                raise PlanError(f"{where} uses its own output")
            if not _CANONICAL_REF.fullmatch(value.strip()):
                self._notes.append(f"{where}: read {value.strip()[:60]!r} as <GENERATED>-{refs[0]}")
            deps.add(position)
            produced = self._drafts[position].type.outputs
            return TaskArgument(generated=GeneratedRef(task_id=position)), produced[0]
        artifact = find_resource(value, self._resources)
        if artifact is not None:
            return TaskArgument(artifact=artifact), artifact.kind
        file_kind = _file_kind(value)
        return TaskArgument(text=value), file_kind

    def _slot_for(
        self,
        name: str,
        kind: Kind.ValueType | None,
        task_type: TaskType,
        filled: dict[str, TaskArgument],
        where: str,
    ) -> Slot:
        slot = task_type.slot(name)
        if slot is not None and slot.name not in filled and (kind is None or kind == slot.kind):
            return slot
        # A value of a known kind goes to the free slot of that kind (an audio file given as
        # "image" to a speech task); an unnamed or misnamed text to the first free text slot.
        wanted = kind if kind is not None else TEXT
        free = [s for s in task_type.slots if s.name not in filled and s.kind == wanted]
        if not free:
            shown = KIND_NAMES.get(wanted, "value")
            raise PlanError(
                f"{where}: no free argument slot for {'a' if name == '' else repr(name) + ','} "
                f"{shown} input (slots: {', '.join(s.name for s in task_type.slots)})"
            )
        if name:
            self._notes.append(f"{where}: moved argument {name!r} to slot {free[0].name!r}")
        return free[0]

    def _check_producer(
        self, position: int, kind: Kind.ValueType, draft: _Draft, where: str
    ) -> None:
        producer = self._drafts[position].type
        if kind not in producer.outputs and not (kind == TEXT and producer.outputs):
            makes = ", ".join(KIND_NAMES[k] for k in producer.outputs)
            raise PlanError(
                f"{where} wants {KIND_NAMES.get(kind)} from task #{position} ({producer.name}), "
                f"which makes {makes}"
            )

    def _fill_missing(
        self, slot: str, kind: Kind.ValueType, deps: set[int], draft: _Draft, where: str
    ) -> TaskArgument:
        producers = [p for p in sorted(deps) if kind in self._drafts[p].type.outputs]
        if len(producers) == 1:
            self._notes.append(
                f"{where}: filled {slot!r} from task #{producers[0]}, its dependency"
            )
            return TaskArgument(name=slot, generated=GeneratedRef(task_id=producers[0], kind=kind))
        files = [r for r in self._resources.values() if r.kind == kind]
        if len(files) == 1:
            self._notes.append(f"{where}: filled {slot!r} with the attached {files[0].name}")
            return TaskArgument(name=slot, artifact=files[0])
        raise PlanError(f"{where}: missing argument {slot!r}")

    def _note_renumbering(self, order: list[int]) -> None:
        written = [self._drafts[p].raw_id for p in order]
        if self._ids_given and written != list(range(len(order))):
            self._notes.append(f"renumbered task ids {written} as 0..{len(order) - 1}")


def _file_kind(value: str) -> Kind.ValueType | None:
    """The kind of a file name or URL, by its extension; None for plain text."""
    match = _FILE.search(value.strip().split("?")[0])
    if not match or " " in value.strip():
        return None
    kind = kind_for_name("x." + match.group(1).lower())
    return kind if kind != Kind.KIND_UNSPECIFIED and kind != TEXT else None


def _topological(deps: dict[int, set[int]]) -> list[int] | None:
    """Positions in an order that respects dependencies (stable), or None on a cycle."""
    order: list[int] = []
    placed: set[int] = set()
    while len(order) < len(deps):
        ready = [p for p in sorted(deps) if p not in placed and deps[p] <= placed]
        if not ready:
            return None
        order.append(ready[0])
        placed.add(ready[0])
    return order
