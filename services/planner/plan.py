"""Stage 1, task planning: `ChatRequest` in, `TaskPlan` out. No NATS, no gRPC here.

With an LLM: HuggingGPT's prompt, a lenient parse, one repair round on an invalid plan, and
then a direct answer (no tasks) rather than a wrong plan. Without one: the rules planner.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from chorus.v1.messages_pb2 import ArtifactRef, ChatRequest, PlanSource, TaskPlan
from prometheus_client import Counter

from services.common.lenient_json import answer_text
from services.common.llm import ChatTurn, Completion, ReportingLLM
from services.common.offload import run_small_on_loop
from services.common.prompts import load_prompt
from services.common.resources import request_text, resources_of
from services.planner.parse import ParsedPlan, PlanError, UnfinishedPlan, parse_plan
from services.planner.prompt import planning_prompt
from services.planner.rules import plan_by_rules

log = logging.getLogger(__name__)

RULES_NOTE = "planned without an LLM (offline rules planner)"
PLANS = Counter(
    "chorus_planner_plans_total",
    "Plans by how they came about: exact, normalized, repaired, rejected (answered directly), "
    "rules (no LLM).",
    ["outcome"],
)
REPLIES = Counter(
    "chorus_planner_replies_total",
    "LLM planning replies by how they were read: read, read_cut_off (the tasks completed before "
    "the token limit), cut_off or unfinished (no complete task: asked again with more room), "
    "invalid.",
    ["outcome"],
)
# Reading a long request or reply runs in a thread, so the gateway and HTTP in this process
# stay responsive; its regular expressions are linear, and this bounds what is left. A short
# one (most plans) is read on the loop: that takes less than the hand-off to a thread.
PARSE_TIME_LIMIT_S = 5.0
ON_LOOP_CHARS = 4096
T = TypeVar("T")
_ECHO_CHARS = 4000  # how much of an invalid reply goes back to the LLM in the repair round
MIN_ROOM_TOKENS = 4096  # the repair round's token limit after a reply that was cut off
MAX_PLAN_TOKENS = 16_384


async def plan(request: ChatRequest, llm: ReportingLLM | None) -> TaskPlan:
    """Plans with the LLM when there is one, else with the rules planner.

    An LLM that cannot be reached raises `LLMError`: the caller must learn of it.
    """
    started = time.perf_counter()
    result = TaskPlan(request_id=request.request_id)
    result.request.CopyFrom(request)
    if llm is None:
        try:
            text = request_text(request)
            tasks = await _off_loop(len(text), plan_by_rules, text, resources_of(request))
        except TimeoutError:
            log.warning("the rules planner gave up after %.0f s", PARSE_TIME_LIMIT_S)
            result.notes.append(
                f"the request took over {PARSE_TIME_LIMIT_S:.0f} s to plan: answering directly"
            )
            tasks = []
        result.tasks.extend(tasks)
        result.source = PlanSource.PLAN_SOURCE_RULES
        result.notes.append(RULES_NOTE)
        PLANS.labels("rules").inc()
    else:
        parsed, outcome, notes = await _plan_with_llm(request, llm)
        result.tasks.extend(parsed.tasks)
        result.source = PlanSource.PLAN_SOURCE_LLM
        result.notes.extend(notes)
        PLANS.labels(outcome).inc()
    result.planning_seconds = time.perf_counter() - started
    return result


async def _plan_with_llm(
    request: ChatRequest, llm: ReportingLLM
) -> tuple[ParsedPlan, str, list[str]]:
    """The parsed plan, how it came about, and what the response should say about it."""
    resources = resources_of(request)
    prompt = planning_prompt(request)
    reply = await llm.completion(prompt, json_mode=True)
    try:
        parsed = await _read_off_loop(reply, resources)
        outcome = "normalized" if parsed.normalizations else "exact"
        return parsed, outcome, _cut_off_notes(reply, parsed) + _normalization_notes(parsed)
    except PlanError as e:
        first = e
    # A reply that ended before its first task gets room to finish; others the server's.
    room = _more_room(reply) if isinstance(first, UnfinishedPlan) else None
    log.warning("the LLM's plan is invalid, asking it to repair: %s", first)
    instruction = load_prompt("services.planner", "repair_plan.txt").replace("{reason}", str(first))
    echo = ChatTurn("assistant", answer_text(reply.text)[:_ECHO_CHARS])
    repair = [*prompt, echo, ChatTurn("user", instruction)]
    second_reply = await llm.completion(repair, json_mode=True, max_tokens=room)
    asked = f"asked again{f' with room for {room} tokens' if room else ''}"
    try:
        parsed = await _read_off_loop(second_reply, resources)
        notes = [f"the LLM's first plan was invalid ({first}); {asked}; it repaired it"]
        notes += _cut_off_notes(second_reply, parsed)
        return parsed, "repaired", notes + _normalization_notes(parsed)
    except PlanError as second:
        log.warning("the repaired plan is invalid too; answering directly: %s", second)
        note = (
            f"the LLM's plan could not be used ({first}; {asked}: {second}); "
            "answering directly, without models"
        )
        return ParsedPlan([], []), "rejected", [note]


async def _off_loop(chars: int, work: Callable[..., T], *args: object) -> T:
    """`work(*args)` on a text of `chars` characters: in a thread, `TimeoutError` past
    `PARSE_TIME_LIMIT_S`, unless the text is short enough to read on the loop."""
    return await run_small_on_loop(
        chars <= ON_LOOP_CHARS, work, *args, timeout_s=PARSE_TIME_LIMIT_S
    )


async def _read_off_loop(reply: Completion, resources: dict[str, ArtifactRef]) -> ParsedPlan:
    try:
        return await _off_loop(len(reply.text), _read, reply, resources)
    except TimeoutError as e:
        REPLIES.labels("invalid").inc()
        raise PlanError(f"reading the reply took over {PARSE_TIME_LIMIT_S:.0f} s") from e


def _read(reply: Completion, resources: dict[str, ArtifactRef]) -> ParsedPlan:
    """The plan in a reply, counted by how the reply was read."""
    try:
        if not reply.text.strip() and reply.reasoning:
            raise UnfinishedPlan(
                f"the reply is only reasoning ({len(reply.reasoning)} characters), with no answer"
            )
        parsed = parse_plan(reply.text, resources, cut_off=reply.cut_off)
    except UnfinishedPlan:
        REPLIES.labels("cut_off" if reply.cut_off else "unfinished").inc()
        raise
    except PlanError:
        REPLIES.labels("invalid").inc()
        raise
    REPLIES.labels("read_cut_off" if reply.cut_off else "read").inc()
    return parsed


def _more_room(reply: Completion) -> int:
    used = reply.completion_tokens or 0
    return min(MAX_PLAN_TOKENS, max(2 * used, MIN_ROOM_TOKENS))


def _cut_off_notes(reply: Completion, parsed: ParsedPlan) -> list[str]:
    if not reply.cut_off:
        return []
    return [
        f"the LLM's reply was cut off by its token limit: planned only the {len(parsed.tasks)} "
        "tasks it completed"
    ]


def _normalization_notes(parsed: ParsedPlan) -> list[str]:
    if not parsed.normalizations:
        return []
    return ["the plan was normalized: " + "; ".join(parsed.normalizations)]
