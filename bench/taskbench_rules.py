"""The no-LLM planner (`plan_by_rules`) on TaskBench's HuggingFace-domain requests: node F1.

    python -m bench.taskbench_rules        # data: $CHORUS_SHARED_DATA or <repo>/../shared/data

Each request is planned by `services.planner.rules.plan_by_rules`; the set of predicted task
types is scored against the gold tools, mapped to Chorus task names (`chorus_task`).

Node F1 is TaskBench's "node micro F1 [no matching]" (microsoft/JARVIS taskbench/evaluate.py,
`flatten` + `precision_recall_fscore_support(average="micro")`): per request, the *sets* of gold
and predicted names; summed over all requests, a name in both is a true positive, one only
predicted a false positive, one only gold a false negative; precision = TP/(TP+FP), recall =
TP/(TP+FN). Like TaskBench, names outside the tool vocabulary (here: the Chorus names of the 23
TaskBench tools) are dropped on both sides, so a `canny-control` or `text-classification` step
costs nothing; the "strict" figures count such predictions as false positives too.

Subsets:
- `gold_sample`: all requests of `gold_sample.jsonl` (20, with hand-checked gold graphs).
- `evident_single`: ids in `alignment_ids.json` -> `all_alignment_id` -> `single` whose text
  names exactly one TaskBench tool (case-insensitively, spaces/hyphens/underscores alike, whole
  words, longest name first so "Visual Question Answering" does not also count as "Question
  Answering"); that tool is the gold. The label is read off the text, not off the planner.

Each subset is run twice: with resources built from the file names in the text
(`resources_in`) and with `{}`, to show whether the planner finds the files by itself.
The leaderboard figures are LLM planners on TaskBench's whole HuggingFace set, for scale only.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chorus.v1.messages_pb2 import ArtifactRef, Kind, Task

from bench.stats import write_results
from services.common.tasks import TASK_TYPES

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "taskbench_rules.json"
DOMAIN = Path("taskbench") / "huggingface"
# TaskBench paper (Shen et al., 2023), HuggingFace tools, node F1 (%).
LEADERBOARD = {"gpt-4": 81.5, "gpt-3.5-turbo": 69.5}
# TaskBench tools whose normalized name is not a Chorus task type.
EXPLICIT = {"Image Editing": "image-to-image"}  # Chorus: image-to-image takes an optional prompt

Planner = Callable[[str, dict[str, ArtifactRef]], Sequence[Task]]
Resources = Callable[[str], dict[str, ArtifactRef]]


# --- names -------------------------------------------------------------------------------------


def normalize(tool: str) -> str:
    """`Automatic Speech_Recognition` -> `automatic-speech-recognition`."""
    return re.sub(r"[\s_]+", "-", tool.strip().lower())


def chorus_task(tool: str) -> str | None:
    """The Chorus task type for a TaskBench tool name, or None when there is none."""
    name = EXPLICIT.get(tool, normalize(tool))
    return name if name in TASK_TYPES else None


def map_tools(tools: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """TaskBench tool -> Chorus task for those that map, and the names that do not."""
    mapping: dict[str, str] = {}
    unmapped: list[str] = []
    for tool in tools:
        task = chorus_task(tool)
        if task is None:
            unmapped.append(tool)
        else:
            mapping[tool] = task
    return mapping, unmapped


# --- inputs ------------------------------------------------------------------------------------

_KINDS: dict[str, Kind.ValueType] = {
    **dict.fromkeys(("jpg", "jpeg", "png", "gif", "bmp", "webp"), Kind.KIND_IMAGE),
    **dict.fromkeys(("wav", "mp3", "flac", "ogg", "m4a"), Kind.KIND_AUDIO),
    **dict.fromkeys(("mp4", "avi", "mov", "mkv"), Kind.KIND_VIDEO),
}
_FILE = re.compile(rf"(?:https?://)?[\w\-./~%]+\.({'|'.join(_KINDS)})\b", re.I)


def resources_in(text: str) -> dict[str, ArtifactRef]:
    """The media files (names or URLs) a request mentions, as if they had been attached."""
    found: dict[str, ArtifactRef] = {}
    for match in _FILE.finditer(text):
        name = match.group(0)
        kind = _KINDS[match.group(1).lower()]
        found.setdefault(name, ArtifactRef(id=name, name=name, kind=kind))
    return found


def evident_tools(text: str, tools: Iterable[str]) -> set[str]:
    """The tools named in `text`; a name inside a longer tool name's match does not count."""
    claimed: list[tuple[int, int]] = []
    found: set[str] = set()
    for tool in sorted(tools, key=len, reverse=True):
        words = r"[\s\-_]+".join(re.escape(w) for w in re.split(r"[\s\-_]+", tool))
        for match in re.finditer(rf"\b{words}\b", text, re.I):
            start, end = match.span()
            if not any(start < b and a < end for a, b in claimed):
                claimed.append((start, end))
                found.add(tool)
    return found


# --- scoring -----------------------------------------------------------------------------------


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    oov_predicted: int = 0  # predicted names outside the vocabulary: dropped, as TaskBench does
    oov_gold: int = 0  # gold names outside the vocabulary (unknown tools): dropped likewise

    def add(self, other: Counts) -> None:
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.oov_predicted += other.oov_predicted
        self.oov_gold += other.oov_gold

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        return _f1(self.precision, self.recall)

    @property
    def strict_precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp + self.oov_predicted)

    @property
    def strict_f1(self) -> float:
        return _f1(self.strict_precision, self.recall)

    def as_dict(self) -> dict[str, float | int]:
        return {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "oov_predicted": self.oov_predicted,
            "oov_gold": self.oov_gold,
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
            "f1": round(self.f1, 4),
            "strict_precision": round(self.strict_precision, 4),
            "strict_f1": round(self.strict_f1, 4),
        }


def _ratio(a: int, b: int) -> float:
    return a / b if b else 0.0


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def node_counts(gold: Iterable[str], predicted: Iterable[str], vocab: set[str]) -> Counts:
    """One request's node counts: sets of names, those outside `vocab` dropped on both sides."""
    gold_set, pred_set = set(gold), set(predicted)
    g, p = gold_set & vocab, pred_set & vocab
    return Counts(
        tp=len(g & p),
        fp=len(p - g),
        fn=len(g - p),
        oov_predicted=len(pred_set - vocab),
        oov_gold=len(gold_set - vocab),
    )


@dataclass(frozen=True)
class Request:
    id: str
    text: str
    gold: tuple[str, ...]  # TaskBench tool names


@dataclass
class Outcome:
    counts: Counts = field(default_factory=Counts)
    misses: Counter[tuple[str, str]] = field(default_factory=Counter)
    examples: dict[tuple[str, str], str] = field(default_factory=dict)  # miss -> first request id
    false_positives: Counter[str] = field(default_factory=Counter)  # predicted, not gold
    errors: list[str] = field(default_factory=list)  # "id: exception" where the planner raised

    def top_misses(self, n: int) -> list[tuple[str, str, int, str]]:
        """(gold tool, predicted, count, example id), most frequent first, ties by name."""
        ranked = sorted(self.misses.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
        return [(gold, pred, count, self.examples[gold, pred]) for (gold, pred), count in ranked]


def evaluate(
    requests: Iterable[Request],
    planner: Planner,
    resources: Resources,
    mapping: Mapping[str, str],
) -> Outcome:
    """Plan every request and score its task types against the mapped gold tools."""
    vocab = set(mapping.values())
    outcome = Outcome()
    for request in requests:
        try:
            predicted = {t.task for t in planner(request.text, resources(request.text))}
        except Exception as error:  # a broken rule should show up as a score, not a crash
            outcome.errors.append(f"{request.id}: {error!r}")
            predicted = set()
        gold = {mapping.get(tool, tool) for tool in request.gold}
        outcome.counts.add(node_counts(gold, predicted, vocab))
        outcome.false_positives.update(predicted - gold)
        shown = ", ".join(sorted(predicted - gold)) or "(nothing)"
        for tool in request.gold:
            if tool in mapping and mapping[tool] not in predicted:
                outcome.misses[tool, shown] += 1
                outcome.examples.setdefault((tool, shown), request.id)
    return outcome


# --- data --------------------------------------------------------------------------------------


def data_dir() -> Path:
    return Path(os.environ.get("CHORUS_SHARED_DATA") or ROOT.parent / "shared" / "data")


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load(domain: Path) -> tuple[list[str], dict[str, str], list[dict[str, Any]], list[str]]:
    """Tool names, request texts by id, gold samples, single-structure ids."""
    tools = [n["id"] for n in json.loads((domain / "tool_desc.json").read_text())["nodes"]]
    texts = {r["id"]: r["user_request"] for r in _jsonl(domain / "user_requests.json")}
    gold = _jsonl(domain / "gold_sample.jsonl")
    single = json.loads((domain / "alignment_ids.json").read_text())["all_alignment_id"]["single"]
    return tools, texts, gold, list(single)


# --- main --------------------------------------------------------------------------------------


def main() -> int:
    domain = data_dir() / DOMAIN
    needed = ["tool_desc.json", "user_requests.json", "gold_sample.jsonl", "alignment_ids.json"]
    missing = [name for name in needed if not (domain / name).is_file()]
    if missing:
        print(f"taskbench_rules: skipped, no TaskBench data at {domain} (missing {missing});")
        print("  set CHORUS_SHARED_DATA to the folder that holds taskbench/huggingface/.")
        return 0

    from services.planner.rules import plan_by_rules  # here, so the scoring imports without it

    tools, texts, gold_rows, single_ids = load(domain)
    mapping, unmapped = map_tools(tools)
    gold_requests = [
        Request(row["id"], texts[row["id"]], tuple(n["task"] for n in row["task_nodes"]))
        for row in gold_rows
        if row["id"] in texts
    ]
    evident: list[Request] = []
    for id_ in single_ids:
        named = evident_tools(texts.get(id_, ""), tools)
        if len(named) == 1:
            evident.append(Request(id_, texts[id_], tuple(named)))
    subsets = {
        "gold_sample": (gold_requests, "all of gold_sample.jsonl, gold = its task_nodes"),
        "evident_single": (
            evident,
            "all_alignment_id.single ids whose text names exactly one TaskBench tool "
            f"({len(single_ids)} single ids, {sum(i in texts for i in single_ids)} with a text)",
        ),
    }
    modes: dict[str, Resources] = {"extracted": resources_in, "empty": lambda _text: {}}

    report: dict[str, Any] = {
        "data": str(domain),
        "metric": "TaskBench node micro F1 [no matching]: set-based, out-of-vocabulary names "
        "dropped on both sides; strict_* also count out-of-vocabulary predictions as FP",
        "leaderboard_node_f1": LEADERBOARD,
        "mapping": mapping,
        "explicit": EXPLICIT,
        "unmapped": unmapped,
        "subsets": {},
    }
    rows: list[tuple[str, str, int, Counts]] = []
    outcomes: dict[tuple[str, str], Outcome] = {}
    for subset, (requests, criterion) in subsets.items():
        entry: dict[str, Any] = {"criterion": criterion, "n": len(requests), "modes": {}}
        entry["gold_tools"] = dict(Counter(t for r in requests for t in r.gold).most_common())
        for mode, resources in modes.items():
            outcome = evaluate(requests, plan_by_rules, resources, mapping)
            outcomes[subset, mode] = outcome
            rows.append((subset, mode, len(requests), outcome.counts))
            entry["modes"][mode] = {
                **outcome.counts.as_dict(),
                "errors": outcome.errors[:20],
                "n_errors": len(outcome.errors),
                "false_positives": dict(outcome.false_positives.most_common()),
                "top_misses": [
                    {"gold": g, "predicted": p, "count": c, "example_id": e, "example": texts[e]}
                    for g, p, c, e in outcome.top_misses(10)
                ],
            }
        report["subsets"][subset] = entry

    print("TaskBench huggingface: Chorus rules planner (plan_by_rules), node F1 of task types")
    print(f"tools: {len(tools)}, mapped {len(mapping)}, explicit {EXPLICIT}, unmapped {unmapped}")
    header = f"{'subset':<16}{'resources':<11}{'n':>5}{'P':>8}{'R':>8}{'F1':>8}{'F1 strict':>11}"
    print(header)
    print("-" * len(header))
    for subset, mode, n, c in rows:
        print(
            f"{subset:<16}{mode:<11}{n:>5}{100 * c.precision:>8.1f}{100 * c.recall:>8.1f}"
            f"{100 * c.f1:>8.1f}{100 * c.strict_f1:>11.1f}"
        )
    for llm, f1 in LEADERBOARD.items():
        print(f"{'leaderboard':<16}{llm:<16}{'':>8}{'':>8}{f1:>8.1f}   (LLM, whole HF set)")
    for (subset, mode), outcome in outcomes.items():
        if outcome.errors:
            print(f"planner raised on {len(outcome.errors)} {subset}/{mode} requests, e.g.")
            print(f"  {outcome.errors[0]}")

    print("\nTop misses on evident_single (resources extracted): gold tool -> predicted")
    for gold, pred, count, example in outcomes["evident_single", "extracted"].top_misses(10):
        text = texts[example]
        print(f"{count:>4}  {gold} -> {pred}")
        print(f"      e.g. {example}: {text[:110]}{'...' if len(text) > 110 else ''}")

    write_results(RESULTS, report)
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
