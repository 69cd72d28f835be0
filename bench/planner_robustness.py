"""How the plan parser (`services.planner.parse.parse_plan`) copes with real and corrupted replies.

    python -m bench.planner_robustness   # data: $CHORUS_SHARED_DATA or <repo>/../shared/data

Corpus:
- *clean* replies: each of the 5,571 plans that Llama-3.3-70B wrote for TaskBench's multimedia
  requests, rewritten as a HuggingGPT planning reply (a JSON list of `{"task", "id", "dep",
  "args"}`, `<node-j>` rewritten as `<GENERATED>-j`, `dep` = the tasks its arguments use, or
  `[-1]`). A tool with a Chorus counterpart (`KNOWN_TOOLS`) is written under the Chorus task
  name, its arguments put in the task's slots: a value of an evident kind (a media file by its
  extension, the output of an earlier task of known kind) in the first free slot of that kind,
  other values in slot order; values with no slot left are dropped and counted. A tool Chorus
  does not have keeps its TaskBench name (and slots named after its TaskBench input types), and
  the parser must reject it: "rejected: unknown tool". The requests' media file names are
  passed as attached resources. Also HuggingGPT's own few-shot plans (the assistant turns of
  `jarvis/demo_parse_task.json`), verbatim, with their real defects.
- *corrupted* replies: every corruption in `CORRUPTIONS` that applies, once, to every clean
  TaskBench reply (deterministic: one seeded RNG per reply and corruption). Only the replies
  the parser accepts clean are the table's base, so that each figure measures that one
  corruption; the corruptions of the rejected clean replies are still parsed, for crashes.
  Besides the defects of HuggingGPT's era, those of today's LLMs: a reasoning model's
  `<think>` block (inline, with only its closing tag, or never closed), JSON5 habits (comments,
  bare keys, single-quoted keys, typographic quotes, Python's True/False/None), prose with
  brackets after the JSON, ids as strings, `arguments`/`parameters` for `args`, and replies cut
  off: by the token limit (the server says `finish_reason: "length"`) inside the last task, where
  the right answer is the tasks before it, or inside the first, where it is a rejection; and
  cut inside a string of the last task by a server that does not say so.

Outcomes: `exact` (parsed, no normalization), `normalized` (parsed, with a named liberty),
`rejected` (`PlanError` with a reason), `crashed` (any other exception: must be 0). For a
corruption whose right answer is known, `equal` counts the recovered plans whose graph is the
expected one: the same task types, argument slots, generated links, file and text values and
dependencies, compared up to task numbering (the expected graph is the clean parse, or for
`two-refs-one-arg` HuggingGPT's own unfold). `links_equal` is the same without the dependency
lists. The outcome-only corruptions (no right answer but rejection, or none that can be
compared): `self-ref`, `missing-ref`, `cycle`, `extra-dep`, `think-unclosed`,
`cut-off-in-first-task`.

Latency is `parse_plan` alone (no LLM), per reply, by `time.perf_counter`.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chorus.v1.messages_pb2 import ArtifactRef, Task

from bench.stats import write_results
from bench.taskbench_rules import data_dir, resources_in
from services.common.tasks import KIND_NAMES, TASK_TYPES
from services.planner.parse import PlanError, normalize_task_name, parse_plan

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "planner_robustness.json"
MULTIMEDIA = Path("taskbench") / "multimedia"
PREDICTIONS = MULTIMEDIA / "predictions_llama-3.3-70b.jsonl"
TOOL_DESC = MULTIMEDIA / "tool_desc.json"
DEMOS = Path("jarvis") / "demo_parse_task.json"
SEED = 2023

Plan = list[dict[str, Any]]

# TaskBench multimedia tools that have a Chorus task type. The text rewriters all become
# `text2text-generation` ("rewrite a text"); downloaders, searches, video tools, audio mixing
# and image compositing have no Chorus counterpart.
KNOWN_TOOLS: dict[str, str] = {
    "Text-to-Image": "text-to-image",
    "Text-to-Video": "text-to-video",
    "Text-to-Audio": "text-to-speech",
    "Image-to-Text": "image-to-text",
    "Audio-to-Text": "automatic-speech-recognition",
    "Audio Noise Reduction": "audio-to-audio",
    "Text Summarizer": "summarization",
    "Text Translator": "translation",
    "Text Sentiment Analysis": "text-classification",
    "Keyword Extractor": "token-classification",
    "Topic Generator": "text-generation",
    "Text Grammar Checker": "text2text-generation",
    "Text Simplifier": "text2text-generation",
    "Text Expander": "text2text-generation",
    "Text Paraphraser": "text2text-generation",
    "Article Spinner": "text2text-generation",
    "Text Rewriter": "text2text-generation",
    "Text-to-Text": "text2text-generation",
    "Image Colorizer": "image-to-image",
    "Image-to-Image": "image-to-image",
}

# Other names an LLM writes for a task type; chosen for the benchmark, not read off the parser.
SPELLINGS: dict[str, tuple[str, ...]] = {
    "image-to-text": ("image captioning", "Image Caption", "caption generation"),
    "automatic-speech-recognition": (
        "speech recognition",
        "Speech-to-Text",
        "ASR",
        "transcription",
    ),
    "text-to-speech": ("TTS", "speech synthesis", "Text-to-Audio"),
    "text-classification": ("sentiment analysis", "Sentiment-Analysis"),
    "token-classification": ("named entity recognition", "NER"),
    "summarization": ("summarize", "text summarization", "summarisation"),
    "translation": ("translate", "machine translation", "text translation"),
    "text-to-image": ("image generation", "text2image"),
    "text-to-video": ("video generation", "text2video"),
    "text2text-generation": ("text-to-text generation", "text rewriting"),
    "text-generation": ("text completion", "Text Gen"),
    "audio-to-audio": ("speech enhancement", "noise reduction", "audio enhancement"),
    "image-to-image": ("image editing", "image transformation"),
}

FILE_KINDS: dict[str, str] = {
    **dict.fromkeys(("jpg", "jpeg", "png", "gif", "bmp", "webp"), "image"),
    **dict.fromkeys(("wav", "mp3", "flac", "ogg", "m4a"), "audio"),
    **dict.fromkeys(("mp4", "avi", "mov", "mkv"), "video"),
}
_MEDIA = ("image", "audio", "video")
_NODE_REF = re.compile(r"<node-(\d+)>")
_REF = re.compile(r"<GENERATED>-(\d+)")
_FILE_EXT = re.compile(r"\.([A-Za-z0-9]{2,4})$")


# --- the clean corpus --------------------------------------------------------------------------


@dataclass
class Clean:
    """One clean reply; `plan` is None where the reply is not JSON (HuggingGPT's demos)."""

    source: str
    reply: str
    resources: dict[str, ArtifactRef]
    plan: Plan | None = None
    tools: tuple[str, ...] = ()  # the TaskBench names, by task position
    dropped_args: int = 0
    request: str = ""  # the user's request, where known


def file_kind(value: str) -> str | None:
    """`image`, `audio` or `video` for a media file name or URL, by its extension."""
    stripped = value.strip()
    match = _FILE_EXT.search(stripped.split("?")[0])
    if match is None or " " in stripped:
        return None
    return FILE_KINDS.get(match.group(1).lower())


def refs_in(value: str) -> list[int]:
    return [int(m) for m in _REF.findall(value)]


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _slot_names(kinds: Iterable[str]) -> list[tuple[str, str]]:
    """(name, kind) for TaskBench input types: `text`, or `audio1`, `audio2` when repeated."""
    listed = [k.lower() if k.lower() in _MEDIA else "text" for k in kinds]
    counts = Counter(listed)
    seen: Counter[str] = Counter()
    named = []
    for kind in listed:
        seen[kind] += 1
        named.append((kind if counts[kind] == 1 else f"{kind}{seen[kind]}", kind))
    return named


def assign_slots(
    values: list[str], slots: list[tuple[str, str]], kinds: list[str | None]
) -> tuple[dict[str, str], int]:
    """Arguments to slots: an evident media kind to the first free slot of that kind, the rest
    in slot order. Returns the args in slot order and how many values found no slot."""
    filled: dict[str, str] = {}
    dropped = 0
    for evident in (True, False):
        for value, kind in zip(values, kinds, strict=True):
            if (kind in _MEDIA) != evident:
                continue
            free = [n for n, k in slots if n not in filled and (not evident or k == kind)]
            if free:
                filled[free[0]] = value
            else:
                dropped += 1
    order = [n for n, _ in slots]
    return {n: filled[n] for n in order if n in filled}, dropped


def convert(
    nodes: list[Any], outputs: dict[str, str], inputs: dict[str, list[str]]
) -> tuple[Plan, tuple[str, ...], int]:
    """A TaskBench `task_nodes` list as a HuggingGPT reply's task list."""
    tools = [str(n.get("task", "")) if isinstance(n, dict) else "" for n in nodes]

    def produced(j: int) -> str | None:
        if not 0 <= j < len(tools):
            return None
        chorus = KNOWN_TOOLS.get(tools[j])
        if chorus is not None:
            return KIND_NAMES[TASK_TYPES[chorus].outputs[0]]
        kind = outputs.get(tools[j])
        return None if kind is None else (kind if kind in _MEDIA else "text")

    plan: Plan = []
    dropped = 0
    for i, node in enumerate(nodes):
        raw = node.get("arguments", []) if isinstance(node, dict) else []
        values = [
            _NODE_REF.sub(r"<GENERATED>-\1", _as_text(v))
            for v in (raw if isinstance(raw, list) else [raw])
        ]
        kinds = [
            produced(refs_in(v)[0]) if refs_in(v) else (file_kind(v) or "text") for v in values
        ]
        chorus = KNOWN_TOOLS.get(tools[i])
        if chorus is not None:
            slots = [(s.name, KIND_NAMES[s.kind]) for s in TASK_TYPES[chorus].slots]
        elif tools[i] in inputs:
            slots = _slot_names(inputs[tools[i]])
        else:
            slots = _slot_names(k if k in _MEDIA else "text" for k in kinds)
        args, lost = assign_slots(values, slots, kinds)
        dropped += lost
        deps = sorted({r for v in args.values() for r in refs_in(v)})
        plan.append({"task": chorus or tools[i], "id": i, "dep": deps or [-1], "args": args})
    return plan, tuple(tools), dropped


def load_corpus(data: Path) -> tuple[list[Clean], list[Clean]]:
    """The TaskBench replies and HuggingGPT's demo replies."""
    desc = json.loads((data / TOOL_DESC).read_text())["nodes"]
    outputs = {n["id"]: str(n["output-type"][0]).lower() for n in desc}
    inputs = {n["id"]: list(n["input-type"]) for n in desc}
    taskbench: list[Clean] = []
    for line in (data / PREDICTIONS).read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        result = record.get("result")
        nodes = result.get("task_nodes") if isinstance(result, dict) else None
        plan, tools, dropped = convert(nodes if isinstance(nodes, list) else [], outputs, inputs)
        taskbench.append(
            Clean(
                source=f"taskbench:{record.get('id')}",
                reply=json.dumps(plan),
                resources=resources_in(str(record.get("user_request", ""))),
                plan=plan,
                tools=tools,
                dropped_args=dropped,
                request=str(record.get("user_request", "")),
            )
        )
    demos: list[Clean] = []
    turns = json.loads((data / DEMOS).read_text())
    for n, turn in enumerate(turns):
        if turn["role"] == "assistant":
            asked = turns[n - 1]["content"] if n > 0 else ""
            demos.append(Clean(f"demo:{len(demos)}", turn["content"], resources_in(asked)))
    return taskbench, demos


# --- corruptions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    kind: str
    reply: str
    expected: Plan | None  # the plan a correct reading gives; None: outcome only
    cut_off: bool = False  # the server said the reply stopped at its token limit


def dump(value: Any, quote: str = '"', trailing: bool = False) -> str:
    """JSON as LLMs write it: `quote="'"` quotes strings naively (no escaping), `trailing`
    leaves a comma after the last item of every list and object."""
    if isinstance(value, str):
        return json.dumps(value) if quote == '"' else f"'{value}'"
    if isinstance(value, bool | int | float) or value is None:
        return json.dumps(value)
    if isinstance(value, dict):
        items = [f"{dump(k, quote)}: {dump(v, quote, trailing)}" for k, v in value.items()]
    else:
        items = [dump(v, quote, trailing) for v in value]
    opening, closing = ("{", "}") if isinstance(value, dict) else ("[", "]")
    comma = "," if trailing and items else ""
    return opening + ", ".join(items) + comma + closing


def _copy(plan: Plan) -> Plan:
    return json.loads(json.dumps(plan))  # type: ignore[no-any-return]


def _deps(task: dict[str, Any]) -> list[int]:
    return [d for d in task["dep"] if d >= 0]


def _set_deps(task: dict[str, Any], deps: Iterable[int]) -> None:
    task["dep"] = sorted(set(deps)) or [-1]


def _ref_args(plan: Plan) -> list[tuple[int, str, int]]:
    """(task position, slot, referenced id) for every argument that is one generated ref."""
    return [
        (p, slot, refs_in(v)[0])
        for p, t in enumerate(plan)
        if isinstance(t["args"], dict)
        for slot, v in t["args"].items()
        if _REF.fullmatch(v)
    ]


def _rewrite_refs(plan: Plan, form: Callable[[int], str]) -> Plan:
    out = _copy(plan)
    for task in out:
        task["args"] = {
            k: _REF.sub(lambda m: form(int(m.group(1))), v) for k, v in task["args"].items()
        }
    return out


def _renumber(plan: Plan, new: Callable[[int], int]) -> Plan:
    out = _rewrite_refs(plan, lambda n: f"<GENERATED>-{new(n)}")
    for task in out:
        task["id"] = new(task["id"])
        _set_deps(task, (new(d) for d in _deps(task)))
    return out


def _with_names(plan: Plan, name: Callable[[str], str]) -> Plan:
    out = _copy(plan)
    for task in out:
        task["task"] = name(task["task"])
    return out


def _title(name: str, rng: random.Random) -> str:
    words = [w[:1].upper() + w[1:] for w in name.split("-")]
    return rng.choice((" ", "-")).join(words)


Corruption = Callable[[Clean, random.Random], Variant | None]


def _prose(clean: Clean, rng: random.Random) -> Variant | None:
    before, after = rng.choice(
        [
            ("Here is the plan for your request:\n", ""),
            ("Sure! The tasks are: ", "\nLet me know if you need anything else."),
            ("", "\n\nThis plan first handles the inputs, then builds on their results."),
            ("Based on your request, I've parsed the following tasks.\n\n", "\n\nHope this helps!"),
        ]
    )
    return Variant("prose", before + clean.reply + after, clean.plan)


def _fence(clean: Clean, rng: random.Random) -> Variant | None:
    lead = rng.choice(["", "Here is the task list:\n"])
    return Variant("code-fence", f"{lead}```json\n{clean.reply}\n```", clean.plan)


def _wrap(clean: Clean, rng: random.Random) -> Variant | None:
    return Variant("wrapped-object", json.dumps({"tasks": clean.plan}), clean.plan)


def _missing_open(clean: Clean, rng: random.Random) -> Variant | None:
    if not clean.plan:
        return None
    return Variant("missing-open-bracket", clean.reply[1:], clean.plan)


def _missing_close(clean: Clean, rng: random.Random) -> Variant | None:
    if not clean.plan:
        return None
    return Variant("missing-close-bracket", clean.reply[:-1], clean.plan)


def _missing_brace(clean: Clean, rng: random.Random) -> Variant | None:
    if not clean.plan:  # the last task loses the brace that closes it: `...}}]` -> `...}]`
        return None
    return Variant("missing-brace", clean.reply[:-2] + "]", clean.plan)


def _stray_braces(clean: Clean, rng: random.Random) -> Variant | None:
    if not clean.plan:  # the first demo's defect: ` }}` after a task
        return None
    parts = [json.dumps(t) for t in clean.plan]
    k = rng.randrange(len(parts))
    parts[k] += " }}"
    return Variant("stray-braces", "[" + ", ".join(parts) + "]", clean.plan)


def _stray_bracket(clean: Clean, rng: random.Random) -> Variant | None:
    if not clean.plan:
        return None
    return Variant("stray-bracket", clean.reply + "]", clean.plan)


def _trailing_commas(clean: Clean, rng: random.Random) -> Variant | None:
    return Variant("trailing-commas", dump(clean.plan, trailing=True), clean.plan)


def _python_repr(clean: Clean, rng: random.Random) -> Variant | None:
    return Variant("python-repr", repr(clean.plan), clean.plan)


def _python_apostrophe(clean: Clean, rng: random.Random) -> Variant | None:
    """Naive single quotes with an apostrophe inside a text: `'don't ...'`."""
    assert clean.plan is not None
    texts = [
        (p, slot)
        for p, t in enumerate(clean.plan)
        for slot, v in t["args"].items()
        if not refs_in(v) and file_kind(v) is None and slot.rstrip("12") in ("text", "context")
    ]
    if not texts:
        return None
    plan = _copy(clean.plan)
    p, slot = rng.choice(texts)
    template = rng.choice(["don't change this: {}", "{} (it's important)", "what's {}"])
    plan[p]["args"][slot] = template.format(plan[p]["args"][slot])
    return Variant("python-apostrophe", dump(plan, quote="'"), plan)


def _name_title(clean: Clean, rng: random.Random) -> Variant | None:
    plan = _with_names(_copy_plan(clean), lambda n: _title(n, rng))
    return Variant("name-title-case", json.dumps(plan), clean.plan)


def _name_snake(clean: Clean, rng: random.Random) -> Variant | None:
    plan = _with_names(_copy_plan(clean), lambda n: n.replace("-", "_"))
    return Variant("name-snake-case", json.dumps(plan), clean.plan)


def _name_synonym(clean: Clean, rng: random.Random) -> Variant | None:
    assert clean.plan is not None
    candidates = [p for p, t in enumerate(clean.plan) if t["task"] in SPELLINGS]
    if not candidates:
        return None
    plan = _copy(clean.plan)
    p = rng.choice(candidates)
    plan[p]["task"] = rng.choice(SPELLINGS[plan[p]["task"]])
    return Variant("name-synonym", json.dumps(plan), clean.plan)


def _name_taskbench(clean: Clean, rng: random.Random) -> Variant | None:
    """The TaskBench tool names the LLM itself wrote, where they differ from Chorus's."""
    assert clean.plan is not None
    if not clean.tools or all(
        normalize_task_name(tool) == task["task"]
        for tool, task in zip(clean.tools, clean.plan, strict=True)
    ):
        return None
    plan = _copy(clean.plan)
    for tool, task in zip(clean.tools, plan, strict=True):
        task["task"] = tool
    return Variant("name-taskbench", json.dumps(plan), clean.plan)


def _ids_from_1(clean: Clean, rng: random.Random) -> Variant | None:
    if not clean.plan:
        return None
    return Variant(
        "ids-from-1", json.dumps(_renumber(_copy_plan(clean), lambda n: n + 1)), clean.plan
    )


def _ids_gaps(clean: Clean, rng: random.Random) -> Variant | None:
    assert clean.plan is not None
    if len(clean.plan) < 2:
        return None
    new: dict[int, int] = {}
    next_id = 0
    for task in clean.plan:
        new[task["id"]] = next_id
        next_id += rng.randint(2, 4)
    plan = _renumber(clean.plan, lambda n: new.get(n, n + 1000))
    return Variant("ids-skipping", json.dumps(plan), clean.plan)


def _gen_form(kind: str, form: Callable[[int], str]) -> Corruption:
    def corrupt(clean: Clean, rng: random.Random) -> Variant | None:
        assert clean.plan is not None
        if not _ref_args(clean.plan):
            return None
        return Variant(kind, json.dumps(_rewrite_refs(clean.plan, form)), clean.plan)

    return corrupt


def _gen_in_text(clean: Clean, rng: random.Random) -> Variant | None:
    assert clean.plan is not None
    refs = _ref_args(clean.plan)
    if not refs:
        return None
    p, slot, _ = rng.choice(refs)
    plan = _copy(clean.plan)
    template = rng.choice(["the output of {}", "{} from the previous step", "use {} as input"])
    plan[p]["args"][slot] = template.format(plan[p]["args"][slot])
    return Variant("generated-in-text", json.dumps(plan), clean.plan)


def _two_refs(clean: Clean, rng: random.Random) -> Variant | None:
    """`"<GENERATED>-a, <GENERATED>-b"` in one argument; expected: HuggingGPT's unfold (one
    copy of the task per input, each depending on the tasks its own arguments use)."""
    assert clean.plan is not None
    options = []
    for p, slot, a in _ref_args(clean.plan):
        task_type = TASK_TYPES.get(clean.plan[p]["task"])
        slot_def = task_type.slot(slot) if task_type else None
        if slot_def is None:
            continue
        for b_task in clean.plan[:p]:
            b_type = TASK_TYPES.get(b_task["task"])
            if b_task["id"] != a and b_type and slot_def.kind in b_type.outputs:
                options.append((p, slot, a, b_task["id"]))
    if not options:
        return None
    p, slot, a, b = rng.choice(options)
    corrupted = _copy(clean.plan)
    corrupted[p]["args"][slot] = f"<GENERATED>-{a}, <GENERATED>-{b}"
    _set_deps(corrupted[p], [*_deps(corrupted[p]), b])
    expected = _copy(clean.plan)
    copy = _copy([expected[p]])[0]
    copy["id"] = max(t["id"] for t in expected) + 1
    copy["args"][slot] = f"<GENERATED>-{b}"
    _set_deps(copy, (r for v in copy["args"].values() for r in refs_in(v)))
    expected.insert(p + 1, copy)
    return Variant("two-refs-one-arg", json.dumps(corrupted), expected)


def _dep_without_arg(clean: Clean, rng: random.Random) -> Variant | None:
    """A declared dependency whose output no argument names: the slot is left out."""
    assert clean.plan is not None
    by_id = {t["id"]: t for t in clean.plan}
    options = []
    for p, slot, _ in _ref_args(clean.plan):
        task_type = TASK_TYPES.get(clean.plan[p]["task"])
        slot_def = task_type.slot(slot) if task_type else None
        if slot_def is None or not slot_def.required:
            continue
        producers = [
            d
            for d in _deps(clean.plan[p])
            if d in by_id
            and (t := TASK_TYPES.get(by_id[d]["task"])) is not None
            and slot_def.kind in t.outputs
        ]
        if len(producers) == 1:  # unambiguous: one dependency makes that kind
            options.append((p, slot))
    if not options:
        return None
    p, slot = rng.choice(options)
    plan = _copy(clean.plan)
    del plan[p]["args"][slot]
    return Variant("dep-without-arg", json.dumps(plan), clean.plan)


def _extra_dep(clean: Clean, rng: random.Random) -> Variant | None:
    assert clean.plan is not None
    options = [
        (p, e["id"])
        for p, t in enumerate(clean.plan)
        for e in clean.plan[:p]
        if e["id"] not in _deps(t)
    ]
    if not options:
        return None
    p, extra = rng.choice(options)
    plan = _copy(clean.plan)
    _set_deps(plan[p], [*_deps(plan[p]), extra])
    return Variant("extra-dep", json.dumps(plan), None)


def _self_ref(clean: Clean, rng: random.Random) -> Variant | None:
    assert clean.plan is not None
    options = [(p, s) for p, t in enumerate(clean.plan) for s in t["args"]]
    if not options:
        return None
    p, slot = rng.choice(options)
    plan = _copy(clean.plan)
    own = plan[p]["id"]
    plan[p]["args"][slot] = f"<GENERATED>-{own}"
    _set_deps(plan[p], [*_deps(plan[p]), own])
    return Variant("self-ref", json.dumps(plan), None)


def _self_dep(clean: Clean, rng: random.Random) -> Variant | None:
    if not clean.plan:
        return None
    plan = _copy(clean.plan)
    task = rng.choice(plan)
    _set_deps(task, [*_deps(task), task["id"]])
    return Variant("self-dep", json.dumps(plan), clean.plan)


def _missing_ref(clean: Clean, rng: random.Random) -> Variant | None:
    assert clean.plan is not None
    options = [(p, s) for p, t in enumerate(clean.plan) for s in t["args"]]
    if not options:
        return None
    p, slot = rng.choice(options)
    plan = _copy(clean.plan)
    ghost = max(t["id"] for t in plan) + rng.randint(1, 5)
    plan[p]["args"][slot] = f"<GENERATED>-{ghost}"
    _set_deps(plan[p], [*_deps(plan[p]), ghost])
    return Variant("missing-ref", json.dumps(plan), None)


def _missing_dep(clean: Clean, rng: random.Random) -> Variant | None:
    if not clean.plan:
        return None
    plan = _copy(clean.plan)
    task = rng.choice(plan)
    _set_deps(task, [*_deps(task), max(t["id"] for t in plan) + rng.randint(1, 5)])
    return Variant("missing-dep", json.dumps(plan), clean.plan)


def _forward_ref(clean: Clean, rng: random.Random) -> Variant | None:
    assert clean.plan is not None
    if not any(_deps(t) for t in clean.plan):
        return None
    return Variant("forward-ref", json.dumps(_copy(clean.plan)[::-1]), clean.plan)


def _cycle(clean: Clean, rng: random.Random) -> Variant | None:
    assert clean.plan is not None
    links = [(p, a) for p, _, a in _ref_args(clean.plan) if a != clean.plan[p]["id"]]
    positions = {t["id"]: p for p, t in enumerate(clean.plan)}
    links = [(p, a) for p, a in links if a in positions]
    if not links:
        return None
    p, a = rng.choice(links)
    plan = _copy(clean.plan)
    producer = plan[positions[a]]
    _set_deps(producer, [*_deps(producer), plan[p]["id"]])
    return Variant("cycle", json.dumps(plan), None)


def _wrong_kind(clean: Clean, rng: random.Random) -> Variant | None:
    """A media file under another kind's slot name: an audio file given as "image"."""
    assert clean.plan is not None
    options = []
    for p, task in enumerate(clean.plan):
        for slot, value in task["args"].items():
            kind = file_kind(value)
            if kind is None and value in clean.resources:
                kind = KIND_NAMES.get(clean.resources[value].kind)
            if kind in _MEDIA:
                options += [(p, slot, k) for k in _MEDIA if k != kind and k not in task["args"]]
    if not options:
        return None
    p, slot, wrong = rng.choice(options)
    plan = _copy(clean.plan)
    plan[p]["args"] = {(wrong if k == slot else k): v for k, v in plan[p]["args"].items()}
    return Variant("wrong-kind-slot", json.dumps(plan), clean.plan)


def _bare_string(clean: Clean, rng: random.Random) -> Variant | None:
    assert clean.plan is not None
    options = [p for p, t in enumerate(clean.plan) if len(t["args"]) == 1]
    if not options:
        return None
    plan = _copy(clean.plan)
    task = plan[rng.choice(options)]
    task["args"] = next(iter(task["args"].values()))
    return Variant("args-bare-string", json.dumps(plan), clean.plan)


# --- the defects of today's LLMs: reasoning models, JSON5 habits, the token limit -----------


def styled(
    value: Any,
    key: Callable[[str], str] = json.dumps,
    text: Callable[[str], str] = json.dumps,
    word: Callable[[Any], str] = json.dumps,
) -> str:
    """JSON with object keys written by `key`, strings by `text`, numbers and words by `word`."""
    if isinstance(value, str):
        return text(value)
    if isinstance(value, bool | int | float) or value is None:
        return word(value)
    if isinstance(value, dict):
        items = [f"{key(k)}: {styled(v, key, text, word)}" for k, v in value.items()]
        return "{" + ", ".join(items) + "}"
    return "[" + ", ".join(styled(v, key, text, word) for v in value) + "]"


def _reasoning(clean: Clean, rng: random.Random) -> str:
    """What a reasoning model thinks before it answers: brackets, braces and JSON drafts."""
    assert clean.plan is not None
    draft = json.dumps(clean.plan[0])
    return rng.choice(
        [
            "The user wants [several steps]. Let me map each to a tool {type, args}.",
            f"Okay, so I need a list of tasks. Maybe: [{draft[: len(draft) // 2]}... no, wait.",
            f"Draft:\n```json\n[{draft}]\n```\nHmm, check the deps [-1] and ids {{0, 1}} first.",
        ]
    )


def _think_inline(clean: Clean, rng: random.Random) -> Variant | None:
    reply = f"<think>\n{_reasoning(clean, rng)}\n</think>\n\n{clean.reply}"
    return Variant("think-inline", reply, clean.plan)


def _think_unopened(clean: Clean, rng: random.Random) -> Variant | None:
    """The chat template opened the block in the prompt: the reply only closes it."""
    return Variant(
        "think-unopened", f"{_reasoning(clean, rng)}\n</think>\n\n{clean.reply}", clean.plan
    )


def _think_unclosed(clean: Clean, rng: random.Random) -> Variant | None:
    """Reasoning that never reached an answer: the right outcome is a rejection."""
    reply = (
        f"<think>\n{_reasoning(clean, rng)}\nSo the plan is {clean.reply[: len(clean.reply) // 2]}"
    )
    return Variant("think-unclosed", reply, None)


def _comments(clean: Clean, rng: random.Random) -> Variant | None:
    assert clean.plan is not None
    steps = [f"/* step [{i}] */ {json.dumps(t)}" for i, t in enumerate(clean.plan)]
    reply = "[\n  // the tasks, in {order}\n  " + ",\n  ".join(steps) + "  // done [end]\n]"
    return Variant("json5-comments", reply, clean.plan)


def _bare_keys(clean: Clean, rng: random.Random) -> Variant | None:
    return Variant("json5-bare-keys", styled(clean.plan, key=str), clean.plan)


def _typographic(clean: Clean, rng: random.Random) -> Variant | None:
    def curly(s: str) -> str:
        return f"\u201c{json.dumps(s)[1:-1]}\u201d"

    return Variant("typographic-quotes", styled(clean.plan, curly, curly), clean.plan)


def _single_quoted_keys(clean: Clean, rng: random.Random) -> Variant | None:
    return Variant("single-quoted-keys", styled(clean.plan, key="'{}'".format), clean.plan)


def _python_none(clean: Clean, rng: random.Random) -> Variant | None:
    """`"dep": None` for a task that needs none, and Python's True where JSON says true."""
    assert clean.plan is not None
    plan = _copy(clean.plan)
    for task in plan:
        if not _deps(task):
            task["dep"] = None
    reply = styled([{**t, "done": False} for t in plan], word=repr)
    return Variant("python-literals", reply, clean.plan)


def _prose_brackets(clean: Clean, rng: random.Random) -> Variant | None:
    after = rng.choice(
        [
            "\n\nNote: task [1] uses the output of task [0].",
            "\n\nThe steps are {first the inputs, then the results} [as you asked].",
            '\n\n(Each task\'s "args" come from [your request]; "dep" lists what it needs.)',
        ]
    )
    return Variant("prose-after-brackets", clean.reply + after, clean.plan)


def _ids_as_strings(clean: Clean, rng: random.Random) -> Variant | None:
    plan = _copy_plan(clean)
    for task in plan:
        task["id"] = str(task["id"])
        task["dep"] = [str(d) for d in task["dep"]]
    return Variant("ids-as-strings", json.dumps(plan), clean.plan)


def _args_named(key: str) -> Corruption:
    def corrupt(clean: Clean, rng: random.Random) -> Variant | None:
        plan = [{(key if k == "args" else k): v for k, v in t.items()} for t in _copy_plan(clean)]
        return Variant(f"args-named-{key}", json.dumps(plan), clean.plan)

    return corrupt


def _last_task_span(clean: Clean) -> tuple[int, int]:
    """Where the last task's object starts and ends (past its `}`) in the clean reply."""
    assert clean.plan is not None
    last = json.dumps(clean.plan[-1])
    start = clean.reply.rindex(last)
    return start, start + len(last)


def _cut_after_a_task(clean: Clean, rng: random.Random) -> Variant | None:
    """Stopped by the token limit inside the last task: the tasks before it are complete."""
    if not clean.plan or len(clean.plan) < 2:
        return None
    start, end = _last_task_span(clean)
    reply = clean.reply[: rng.randrange(start + 1, end - 1)]
    return Variant("cut-off-after-a-task", reply, clean.plan[:-1], cut_off=True)


def _cut_in_first_task(clean: Clean, rng: random.Random) -> Variant | None:
    """Stopped by the token limit before one task was complete: ask again, never run it."""
    if not clean.plan:
        return None
    reply = clean.reply[: rng.randrange(2, len(json.dumps(clean.plan[0])))]
    return Variant("cut-off-in-first-task", reply, None, cut_off=True)


def _cut_unreported(clean: Clean, rng: random.Random) -> Variant | None:
    """Cut inside a string of the last task, by a server that does not say so."""
    if not clean.plan or len(clean.plan) < 2:
        return None
    start, end = _last_task_span(clean)
    last = clean.reply[start:end]
    inside = [
        m.start() + 1 + k for m in re.finditer(r'"[^"]+"', last) for k in range(len(m.group()) - 2)
    ]
    if not inside:
        return None
    reply = clean.reply[: start + rng.choice(inside) + 1]
    return Variant("cut-unreported", reply, clean.plan[:-1])


def _copy_plan(clean: Clean) -> Plan:
    assert clean.plan is not None
    return _copy(clean.plan)


CORRUPTIONS: dict[str, Corruption] = {
    "prose": _prose,
    "code-fence": _fence,
    "wrapped-object": _wrap,
    "missing-open-bracket": _missing_open,
    "missing-close-bracket": _missing_close,
    "missing-brace": _missing_brace,
    "stray-braces": _stray_braces,
    "stray-bracket": _stray_bracket,
    "trailing-commas": _trailing_commas,
    "python-repr": _python_repr,
    "python-apostrophe": _python_apostrophe,
    "name-title-case": _name_title,
    "name-snake-case": _name_snake,
    "name-synonym": _name_synonym,
    "name-taskbench": _name_taskbench,
    "ids-from-1": _ids_from_1,
    "ids-skipping": _ids_gaps,
    "generated-dash-inside": _gen_form("generated-dash-inside", lambda n: f"<GENERATED-{n}>"),
    "generated-lowercase": _gen_form("generated-lowercase", lambda n: f"<generated>-{n}"),
    "generated-in-text": _gen_in_text,
    "two-refs-one-arg": _two_refs,
    "dep-without-arg": _dep_without_arg,
    "extra-dep": _extra_dep,
    "self-ref": _self_ref,
    "self-dep": _self_dep,
    "missing-ref": _missing_ref,
    "missing-dep": _missing_dep,
    "forward-ref": _forward_ref,
    "cycle": _cycle,
    "wrong-kind-slot": _wrong_kind,
    "args-bare-string": _bare_string,
    "think-inline": _think_inline,
    "think-unopened": _think_unopened,
    "think-unclosed": _think_unclosed,
    "json5-comments": _comments,
    "json5-bare-keys": _bare_keys,
    "typographic-quotes": _typographic,
    "single-quoted-keys": _single_quoted_keys,
    "python-literals": _python_none,
    "prose-after-brackets": _prose_brackets,
    "ids-as-strings": _ids_as_strings,
    "args-named-arguments": _args_named("arguments"),
    "args-named-parameters": _args_named("parameters"),
    "cut-off-after-a-task": _cut_after_a_task,
    "cut-off-in-first-task": _cut_in_first_task,
    "cut-unreported": _cut_unreported,
}
OUTCOME_ONLY = (
    "self-ref",
    "missing-ref",
    "cycle",
    "extra-dep",
    "think-unclosed",
    "cut-off-in-first-task",
)


def variants(clean: Clean, kinds: Iterable[str] = CORRUPTIONS) -> list[Variant]:
    """One variant per corruption that applies; each corruption has its own seeded RNG."""
    if clean.plan is None:
        return []
    found = []
    for kind in kinds:
        variant = CORRUPTIONS[kind](clean, random.Random(f"{SEED}:{clean.source}:{kind}"))
        if variant is not None and variant.reply != clean.reply:  # "summarization" in snake_case
            found.append(variant)
    return found


# --- reading and comparing ---------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    outcome: str  # exact | normalized | rejected | crashed
    seconds: float
    tasks: list[Task] = field(default_factory=list)
    reason: str = ""  # the PlanError, or the crash


def attempt(reply: str, resources: dict[str, ArtifactRef], cut_off: bool = False) -> Result:
    start = time.perf_counter()
    try:
        parsed = parse_plan(reply, resources, cut_off=cut_off)
    except PlanError as e:
        return Result("rejected", time.perf_counter() - start, reason=str(e))
    except Exception as e:  # anything else is a crash: reported, never raised
        return Result("crashed", time.perf_counter() - start, reason=f"{type(e).__name__}: {e}")
    seconds = time.perf_counter() - start
    return Result("normalized" if parsed.normalizations else "exact", seconds, parsed.tasks)


def signature(tasks: list[Task], with_deps: bool = True) -> tuple[str, ...]:
    """The graph up to numbering: each task by its type, its arguments (slot and value, a
    generated input by its producer's signature) and its dependencies' signatures."""
    by_id = {t.id: t for t in tasks}
    memo: dict[int, str] = {}

    def sig(task_id: int, trail: frozenset[int]) -> str:
        if task_id in memo:
            return memo[task_id]
        if task_id in trail or task_id not in by_id:
            return f"?{task_id}"
        task = by_id[task_id]
        inner = trail | {task_id}
        args = []
        for arg in task.args:
            which = arg.WhichOneof("value")
            if which == "generated":
                value = "gen:" + sig(arg.generated.task_id, inner)
            elif which == "artifact":
                value = "file:" + arg.artifact.name
            else:
                value = "text:" + arg.text
            args.append(f"{arg.name}={value}")
        deps = sorted(sig(d, inner) for d in task.deps) if with_deps else []
        text = json.dumps([task.task, sorted(args), deps])
        memo[task_id] = hashlib.blake2b(text.encode(), digest_size=12).hexdigest()
        return memo[task_id]

    return tuple(sorted(sig(t.id, frozenset()) for t in tasks))


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def reason_key(reason: str) -> str:
    """A rejection reason with its particulars (positions, ids, quoted values) blanked."""
    key = _QUOTED.sub("'…'", reason)
    key = re.sub(r"task #\d+", "task #N", key)
    key = re.sub(r"\[[\d, ]*\]", "[…]", key)
    return re.sub(r"\b\d+\b", "N", key)


_UNKNOWN = re.compile(r"unknown task type ('.*'|\".*\")$")


# --- tallies -----------------------------------------------------------------------------------


@dataclass
class Tally:
    variants: int = 0
    exact: int = 0
    normalized: int = 0
    rejected: int = 0
    crashed: int = 0
    unknown_tool: int = 0
    known: int = 0  # recovered with a known right answer
    equal: int = 0
    links_equal: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    unknown_names: Counter[str] = field(default_factory=Counter)

    def add(self, result: Result) -> None:
        self.variants += 1
        setattr(self, result.outcome, getattr(self, result.outcome) + 1)
        if result.outcome == "rejected":
            self.reasons[reason_key(result.reason)] += 1
            unknown = _UNKNOWN.search(result.reason)
            if unknown is not None:
                self.unknown_tool += 1
                self.unknown_names[unknown.group(1)[1:-1]] += 1

    def row(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "variants": self.variants,
            "exact": self.exact,
            "normalized": self.normalized,
            "rejected": self.rejected,
            "crashed": self.crashed,
        }
        if self.unknown_tool:
            row["rejected_unknown_tool"] = self.unknown_tool
        if self.known:
            row |= {"known": self.known, "equal": self.equal, "links_equal": self.links_equal}
        if self.reasons:
            row["top_reasons"] = dict(self.reasons.most_common(5))
        if self.unknown_names:
            row["unknown_names"] = dict(self.unknown_names.most_common(20))
        return row


def percentile_us(seconds: list[float], q: float) -> float:
    if not seconds:
        return 0.0
    ordered = sorted(seconds)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return round(ordered[index] * 1e6, 1)


def latency(seconds: list[float]) -> dict[str, float]:
    return {
        "n": len(seconds),
        "median_us": round(statistics.median(seconds) * 1e6, 1) if seconds else 0.0,
        "p99_us": percentile_us(seconds, 0.99),
        "max_us": percentile_us(seconds, 1.0),
    }


def hostile_replies() -> dict[str, str]:
    big = "x" * 1_000_000
    one_mb = json.dumps([{"task": "summarization", "id": 0, "dep": [-1], "args": {"text": big}}])
    chain = [
        {
            "task": "summarization",
            "id": i,
            "dep": [i - 1],
            "args": {"text": f"<GENERATED>-{i - 1}" if i else "a text"},
        }
        for i in range(500)
    ]
    thoughts = "Let me see: [a] then {b}. " * 40_000  # 1 MB of reasoning, brackets and all
    plan = json.dumps(chain[:2])
    return {
        "1 MB reply": one_mb,
        "500-task plan": json.dumps(chain),
        "10,000-deep nesting": "[" * 10_000 + "]" * 10_000,
        "1 MB <think> that never closes": f"<think>{thoughts}{plan}",
        "only reasoning, no answer": f"<think>{thoughts[:4000]}</think>",
        "1 MB of reasoning, then a plan": f"<think>{thoughts}</think>\n{plan}",  # read, not rejected
    }


def edge_probes() -> dict[str, str]:
    """Odd but well-bounded replies (under every size and depth limit): each must be read or
    rejected, never crash."""

    def one(args: str, extra: str = "") -> str:
        return f'[{{"task": "summarization", "id": 0, "dep": [-1], "args": {args}{extra}}}]'

    digits = "9" * 5000
    return {
        "a 5,000-digit number": one('{"text": "a"}', f', "x": {digits}'),
        "a 5,000-digit generated ref": one(f'{{"text": "<GENERATED>-{digits}"}}'),
        "a lone surrogate escape in a text": one('{"text": "\\ud800"}'),
        "an emoji as a surrogate pair": one('{"text": "\\ud83d\\ude00"}'),
        "NaN as an id": '[{"task": "summarization", "id": NaN, "args": {"text": "a"}}]',
        "a list as the task name": '[{"task": ["summarization"], "id": 0, "args": {"text": "a"}}]',
        "an object as an argument": one('{"text": {"a": {"b": [1, 2]}}}'),
        "a Python set literal": "[{'task': 'summarization', 'id': 0, 'args': {'text': {1, 2}}}]",
        "duplicate ids": '[{"task": "summarization", "id": 0, "args": {"text": "a"}}, '
        '{"task": "summarization", "id": 0, "args": {"text": "<GENERATED>-0"}}]',
        "prose only": "I am sorry, I cannot help with that.",
        "24-deep nesting": "[" * 24 + "]" * 24,
    }


def probe() -> dict[str, dict[str, str]]:
    probed = {}
    for name, reply in edge_probes().items():
        result = attempt(reply, {})
        probed[name] = {"outcome": result.outcome, "reason": result.reason[:160]}
    return probed


def time_hostile(repeats: int = 5) -> dict[str, dict[str, Any]]:
    timed: dict[str, dict[str, Any]] = {}
    for name, reply in hostile_replies().items():
        results = [attempt(reply, {}) for _ in range(repeats)]
        timed[name] = {
            "chars": len(reply),
            "outcome": results[0].outcome,
            "reason": results[0].reason[:160],
            "median_us": round(statistics.median(r.seconds for r in results) * 1e6, 1),
        }
    return timed


# --- main --------------------------------------------------------------------------------------


@dataclass
class Run:
    clean: Tally = field(default_factory=Tally)
    demos: dict[str, dict[str, Any]] = field(default_factory=dict)
    kinds: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    sweep: Tally = field(default_factory=Tally)  # corruptions of clean replies the parser rejects
    clean_seconds: list[float] = field(default_factory=list)
    corrupted_seconds: list[float] = field(default_factory=list)
    crashes: list[dict[str, str]] = field(default_factory=list)
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    spellings: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    dropped_args: int = 0


def _crash(run: Run, source: str, kind: str, reply: str, result: Result) -> None:
    if result.outcome == "crashed" and len(run.crashes) < 20:
        run.crashes.append({"source": source, "kind": kind, "error": result.reason, "reply": reply})


def evaluate(taskbench: list[Clean], demos: list[Clean]) -> Run:
    run = Run()
    for demo in demos:
        result = attempt(demo.reply, demo.resources)
        run.clean_seconds.append(result.seconds)
        _crash(run, demo.source, "clean", demo.reply, result)
        outcome: dict[str, Any] = {"outcome": result.outcome, "tasks": len(result.tasks)}
        if result.reason:
            outcome["reason"] = result.reason
        else:
            outcome["normalizations"] = parse_plan(demo.reply, demo.resources).normalizations
        run.demos[demo.source] = outcome
    for clean in taskbench:
        run.dropped_args += clean.dropped_args
        result = attempt(clean.reply, clean.resources)
        run.clean.add(result)
        run.clean_seconds.append(result.seconds)
        _crash(run, clean.source, "clean", clean.reply, result)
        accepted = result.outcome in ("exact", "normalized")
        # expected plan (as JSON) -> (signature, signature without dependencies)
        expected = {clean.reply: (signature(result.tasks), signature(result.tasks, False))}
        for variant in variants(clean):
            got = attempt(variant.reply, clean.resources, variant.cut_off)
            run.corrupted_seconds.append(got.seconds)
            _crash(run, clean.source, variant.kind, variant.reply, got)
            if accepted:
                _score(run, clean, variant, got, expected)
            else:
                run.sweep.add(got)
    return run


def _score(
    run: Run,
    clean: Clean,
    variant: Variant,
    got: Result,
    expected: dict[str, tuple[tuple[str, ...], tuple[str, ...]]],
) -> None:
    tally = run.kinds[variant.kind]
    tally.add(got)
    if variant.kind == "name-synonym":
        written = next(t["task"] for t in json.loads(variant.reply) if t["task"] not in TASK_TYPES)
        run.spellings[written][got.outcome] += 1
    if variant.expected is None:
        return
    examples = run.examples[variant.kind]
    if got.outcome == "rejected":
        if len(examples) < 3:
            examples.append({"source": clean.source, "reason": got.reason, "reply": variant.reply})
        return
    key = json.dumps(variant.expected)
    if key not in expected:
        reference = attempt(key, clean.resources).tasks
        expected[key] = (signature(reference), signature(reference, False))
    full, links = expected[key]
    tally.known += 1
    tally.equal += signature(got.tasks) == full
    tally.links_equal += signature(got.tasks, False) == links
    if signature(got.tasks) != full and len(examples) < 3:
        examples.append({"source": clean.source, "not_equal": True, "reply": variant.reply})


def report(
    run: Run, hostile: dict[str, dict[str, Any]], probes: dict[str, dict[str, str]], seconds: float
) -> dict[str, Any]:
    total = Tally()
    for tally in run.kinds.values():
        for name in ("variants", "exact", "normalized", "rejected", "crashed"):
            setattr(total, name, getattr(total, name) + getattr(tally, name))
        total.known += tally.known
        total.equal += tally.equal
        total.links_equal += tally.links_equal
        total.reasons.update(tally.reasons)
    weakness = Counter[str]()
    for kind, tally in run.kinds.items():
        if kind not in OUTCOME_ONLY:
            weakness.update({f"[{kind}] {r}": n for r, n in tally.reasons.items()})
    clean_reasons = Counter(
        {r: n for r, n in run.clean.reasons.items() if "unknown task type" not in r}
    )
    return {
        "data": str(data_dir()),
        "seed": SEED,
        "run_seconds": round(seconds, 1),
        "known_tools": KNOWN_TOOLS,
        "clean_taskbench": run.clean.row()
        | {"arguments_dropped_no_slot": run.dropped_args, "reasons_other": dict(clean_reasons)},
        "clean_hugginggpt_demos": run.demos,
        "corrupted": {kind: run.kinds[kind].row() for kind in CORRUPTIONS if kind in run.kinds},
        "corrupted_total": total.row(),
        "corrupted_of_rejected_clean": run.sweep.row(),
        "rejections_where_the_answer_is_known": dict(weakness.most_common(15)),
        "synonyms": {k: dict(v) for k, v in sorted(run.spellings.items())},
        "examples_rejected_or_not_equal": dict(run.examples),
        "latency_parse_plan": {
            "clean": latency(run.clean_seconds),
            "corrupted": latency(run.corrupted_seconds),
        },
        "hostile": hostile,
        "edge_probes": probes,
        "crashes": run.crashes,
    }


def print_table(results: dict[str, Any]) -> None:
    header = f"{'':24} {'n':>6} {'exact':>6} {'norm':>6} {'reject':>6} {'crash':>5} {'equal':>11} {'links':>11}"
    print(header)

    def line(name: str, row: dict[str, Any]) -> None:
        equal = f"{row['equal']}/{row['known']}" if "known" in row else ""
        links = f"{row['links_equal']}/{row['known']}" if "known" in row else ""
        print(
            f"{name:24} {row['variants']:>6} {row['exact']:>6} {row['normalized']:>6} "
            f"{row['rejected']:>6} {row['crashed']:>5} {equal:>11} {links:>11}"
        )

    clean = results["clean_taskbench"]
    line("clean (TaskBench)", clean)
    print(f"{'  rejected: unknown tool':24} {clean.get('rejected_unknown_tool', 0):>6}")
    for kind, row in results["corrupted"].items():
        line(kind + (" *" if kind in OUTCOME_ONLY else ""), row)
    line("corrupted, all", results["corrupted_total"])
    line("corrupted, base rejected", results["corrupted_of_rejected_clean"])
    print("* outcome only: no right answer to compare (a rejection is right for all but extra-dep)")
    print("\nHuggingGPT demo plans:")
    for source, outcome in results["clean_hugginggpt_demos"].items():
        detail = outcome.get("reason") or "; ".join(outcome.get("normalizations", []))
        print(f"  {source}: {outcome['outcome']} ({outcome['tasks']} tasks) {detail}")
    print("\nTop rejection reasons, clean (besides unknown tools):")
    for reason, n in Counter(results["clean_taskbench"]["reasons_other"]).most_common(6):
        print(f"  {n:6}  {reason}")
    print("Top rejection reasons where the right answer is known:")
    for reason, n in list(results["rejections_where_the_answer_is_known"].items())[:10]:
        print(f"  {n:6}  {reason}")
    timing = results["latency_parse_plan"]
    for name in ("clean", "corrupted"):
        t = timing[name]
        print(
            f"parse_plan, {name}: median {t['median_us']} us, p99 {t['p99_us']} us "
            f"over {t['n']} replies"
        )
    for name, t in results["hostile"].items():
        print(f"hostile {name}: {t['outcome']} in {t['median_us']} us ({t['reason'][:70]})")
    for name, t in results["edge_probes"].items():
        if t["outcome"] == "crashed":
            print(f"CRASH on edge probe {name!r}: {t['reason'][:110]}")
    print(f"crashes in the corpus: {len(results['crashes'])}")


def main() -> int:
    data = data_dir()
    if not (data / PREDICTIONS).is_file() or not (data / DEMOS).is_file():
        print(f"skipped: no TaskBench predictions or HuggingGPT demos under {data}")
        return 0
    start = time.perf_counter()
    taskbench, demos = load_corpus(data)
    run = evaluate(taskbench, demos)
    hostile = time_hostile()
    results = report(run, hostile, probe(), time.perf_counter() - start)
    write_results(RESULTS, results)
    print_table(results)
    print(f"wrote {RESULTS.relative_to(ROOT)} in {results['run_seconds']} s")
    crashed = len(results["crashes"]) + sum(
        t["outcome"] == "crashed" for t in results["edge_probes"].values()
    )
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
