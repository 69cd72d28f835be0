"""Stage 2b, model selection: the LLM's choice among ranked candidates, made once per plan, and
the decision at dispatch time.

HuggingGPT asks the LLM once per task with more than one candidate. Chorus asks once per
request, for every open task together, before the first dispatch; a task with one candidate,
or whose candidates leave nothing to choose, costs no call. At dispatch the LLM's choice is
taken if its model is still served; otherwise the top-ranked candidate, with the reason why.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from chorus.v1.messages_pb2 import ModelChoice, Task
from prometheus_client import Counter

from services.common.lenient_json import JSONRepairError, load_lenient
from services.common.llm import LLM, ChatTurn, LLMError
from services.common.prompts import load_prompt
from services.common.routes import BUILTIN_PREFIX
from services.selector.rank import Candidate, Where

log = logging.getLogger(__name__)
SELECTIONS = Counter(
    "chorus_selector_selections_total",
    "Models chosen, by how (only, builtin, llm_route, ranked, llm, llm_gone).",
    ["how"],
)


@dataclass(frozen=True)
class Selection:
    model: str
    route: str
    reason: str


@dataclass(frozen=True)
class OpenTask:
    """A task with more than one candidate: the LLM may choose."""

    task: Task
    candidates: Sequence[Candidate]


class NoCandidate(LookupError):
    """No live replica serves the task."""


def decide(
    task: str, candidates: Sequence[Candidate], choice: ModelChoice | None, avoid: str = ""
) -> Selection:
    """The model to dispatch to: the LLM's choice while it is served, else the top-ranked.

    `avoid` is the model a retried task failed on; another is taken when there is one.
    """
    usable = [c for c in candidates if c.model != avoid] or list(candidates)
    if not usable:
        raise NoCandidate(f"no live executor serves {task!r}")
    top = usable[0]
    retry = f"; retried away from {avoid}" if avoid and top.model != avoid else ""
    if choice and choice.model:
        chosen = next((c for c in usable if c.model == choice.model), None)
        if chosen is not None:
            SELECTIONS.labels("llm").inc()
            return Selection(chosen.model, chosen.route, f"chosen by the LLM: {choice.reason}")
        SELECTIONS.labels("llm_gone").inc()
        why = f"top-ranked; the LLM's choice {choice.model} is no longer served{retry}"
        return Selection(top.model, top.route, why)
    how, why = _rule(top, len(usable))
    SELECTIONS.labels(how).inc()
    if choice and choice.reason:
        why = f"top-ranked; {choice.reason}"
    return Selection(top.model, top.route, why + retry)


def _rule(top: Candidate, count: int) -> tuple[str, str]:
    if top.model.startswith(BUILTIN_PREFIX):
        return "builtin", "built-in annotator (HuggingGPT runs ControlNet annotators locally)"
    if top.where == Where.LLM and count == 1:
        return "llm_route", "the LLM does this text task itself (as in HuggingGPT)"
    if count == 1:
        return "only", "the only model a live replica serves for this task"
    return "ranked", (
        f"top-ranked of {count} (local first, then load, fit to the request, downloads, likes)"
    )


def open_tasks(
    tasks: Iterable[Task], candidates_of: Callable[[str], Sequence[Candidate]]
) -> list[OpenTask]:
    """The tasks with more than one candidate: those the LLM is asked about."""
    found = []
    for task in tasks:
        candidates = candidates_of(task.task)
        if len(candidates) > 1:
            found.append(OpenTask(task, candidates))
    return found


async def choose_models(
    request_text: str, open_tasks: Sequence[OpenTask], llm: LLM
) -> dict[int, ModelChoice]:
    """One LLM call for every open task of a plan. A task the reply gives no valid choice for
    gets a `ModelChoice` with no model and the reason, so the dispatch can say why."""
    if not open_tasks:
        return {}
    try:
        reply = await llm.complete(_prompt(request_text, open_tasks), json_mode=True)
    except LLMError as e:
        log.warning("the LLM could not choose models: %s", e)
        return {t.task.id: ModelChoice(reason=f"the LLM could not choose: {e}") for t in open_tasks}
    named = _parse_choices(reply, open_tasks)
    choices = {}
    for open_task in open_tasks:
        model, reason = named.get(open_task.task.id, ("", ""))
        offered = {c.model for c in open_task.candidates}
        if model in offered:
            choices[open_task.task.id] = ModelChoice(
                model=model, reason=reason or "no reason given"
            )
        elif model:
            choices[open_task.task.id] = ModelChoice(
                reason=f"the LLM named {model[:80]!r}, which is not a candidate"
            )
        else:
            choices[open_task.task.id] = ModelChoice(reason="the LLM named no candidate")
    return choices


def _prompt(request_text: str, open_tasks: Sequence[OpenTask]) -> list[ChatTurn]:
    sections = []
    for open_task in open_tasks:
        args = {a.name: _arg_text(a) for a in open_task.task.args}
        listing = "\n".join(
            "  - "
            + json.dumps(
                {
                    "id": c.model,
                    "description": c.description or "no description",
                    "downloads": c.downloads,
                    "likes": c.likes,
                    "runs": c.where.name.lower(),
                },
                ensure_ascii=False,
            )
            for c in open_task.candidates
        )
        sections.append(
            f"Task {open_task.task.id}: {open_task.task.task} {json.dumps(args)}\n{listing}"
        )
    user = f"Request: {request_text}\n\n" + "\n\n".join(sections)
    return [
        ChatTurn("system", load_prompt("services.selector", "choose_model.txt")),
        ChatTurn("user", user),
    ]


def _arg_text(arg: Any) -> str:
    which = arg.WhichOneof("value")
    if which == "generated":
        return f"<GENERATED>-{arg.generated.task_id}"
    if which == "artifact":
        return str(arg.artifact.name)
    return str(arg.text)[:200]


def _parse_choices(reply: str, open_tasks: Sequence[OpenTask]) -> dict[int, tuple[str, str]]:
    """Task id -> (model, reason) from the reply, read leniently.

    Takes `{"choices": [{"task": 0, "id": ..., "reason": ...}]}`, a bare list of those, a map
    from task id to a choice or a model id, and, for a single open task, HuggingGPT's
    `{"id": ..., "reason": ...}` or prose that names exactly one candidate.
    """
    try:
        value: Any = load_lenient(reply).value
    except JSONRepairError:
        value = None
    if isinstance(value, dict) and "choices" in value:
        value = value["choices"]
    found: dict[int, tuple[str, str]] = {}
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and (task_id := _task_id(item.get("task"))) is not None:
                found[task_id] = _model_and_reason(item)
    elif isinstance(value, dict) and len(open_tasks) == 1 and "id" in value:
        found[open_tasks[0].task.id] = _model_and_reason(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            if (task_id := _task_id(key)) is not None:
                found[task_id] = _model_and_reason(item)
    if not found and len(open_tasks) == 1:
        named = [c.model for c in open_tasks[0].candidates if c.model in reply]
        if named:
            found[open_tasks[0].task.id] = (max(named, key=len), "")
    return found


def _task_id(value: Any) -> int | None:
    text = str(value).strip().lower().removeprefix("task").strip()
    return int(text) if text.isdigit() else None


def _model_and_reason(item: Any) -> tuple[str, str]:
    if isinstance(item, dict):
        model = item.get("id") or item.get("model") or ""
        return str(model).strip(), str(item.get("reason") or "")
    return str(item).strip(), ""
