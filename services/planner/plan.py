"""Stage 1, task planning: `ChatRequest` in, `TaskPlan` out. No NATS, no gRPC here.

With an LLM: HuggingGPT's prompt, a lenient parse, one repair round on an invalid plan, and
then a direct answer (no tasks) rather than a wrong plan. Without one: the rules planner.
"""

from __future__ import annotations

import logging
import time

from chorus.v1.messages_pb2 import ChatRequest, PlanSource, TaskPlan
from prometheus_client import Counter

from services.common.llm import LLM, ChatTurn
from services.common.prompts import load_prompt
from services.common.resources import request_text, resources_of
from services.planner.parse import ParsedPlan, PlanError, parse_plan
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
_ECHO_CHARS = 4000  # how much of an invalid reply goes back to the LLM in the repair round


async def plan(request: ChatRequest, llm: LLM | None) -> TaskPlan:
    """Plans with the LLM when there is one, else with the rules planner.

    An LLM that cannot be reached raises `LLMError`: the caller must learn of it.
    """
    started = time.perf_counter()
    result = TaskPlan(request_id=request.request_id)
    result.request.CopyFrom(request)
    if llm is None:
        result.tasks.extend(plan_by_rules(request_text(request), resources_of(request)))
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


async def _plan_with_llm(request: ChatRequest, llm: LLM) -> tuple[ParsedPlan, str, list[str]]:
    """The parsed plan, how it came about, and what the response should say about it."""
    resources = resources_of(request)
    prompt = planning_prompt(request)
    reply = await llm.complete(prompt, json_mode=True)
    try:
        parsed = parse_plan(reply, resources)
        outcome = "normalized" if parsed.normalizations else "exact"
        return parsed, outcome, _normalization_notes(parsed)
    except PlanError as e:
        first = str(e)
    log.warning("the LLM's plan is invalid, asking it to repair: %s", first)
    instruction = load_prompt("services.planner", "repair_plan.txt").replace("{reason}", first)
    repair = [*prompt, ChatTurn("assistant", reply[:_ECHO_CHARS]), ChatTurn("user", instruction)]
    second_reply = await llm.complete(repair, json_mode=True)
    try:
        parsed = parse_plan(second_reply, resources)
        notes = [f"the LLM's first plan was invalid ({first}); it repaired it"]
        return parsed, "repaired", notes + _normalization_notes(parsed)
    except PlanError as second:
        log.warning("the repaired plan is invalid too; answering directly: %s", second)
        note = f"the LLM's plan could not be used ({second}); answering directly, without models"
        return ParsedPlan([], []), "rejected", [note]


def _normalization_notes(parsed: ParsedPlan) -> list[str]:
    if not parsed.normalizations:
        return []
    return ["the plan was normalized: " + "; ".join(parsed.normalizations)]
