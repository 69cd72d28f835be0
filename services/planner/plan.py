"""Stage 1, task planning: `ChatRequest` in, `TaskPlan` out. No NATS, no gRPC here."""

from __future__ import annotations

import logging
import time

from chorus.v1.messages_pb2 import ChatRequest, PlanSource, TaskPlan

from services.common.llm import LLM
from services.common.resources import request_text, resources_of
from services.planner.parse import PlanError, parse_plan
from services.planner.prompt import planning_prompt
from services.planner.rules import plan_by_rules

log = logging.getLogger(__name__)

RULES_NOTE = "planned without an LLM (offline rules planner)"


async def plan(request: ChatRequest, llm: LLM | None) -> TaskPlan:
    """Plans with the LLM when there is one, else with the rules planner.

    An LLM that cannot be reached raises `LLMError` (the caller must learn of it); a reply
    that is no valid plan falls back to the rules planner, and the plan says so.
    """
    started = time.perf_counter()
    resources = resources_of(request)
    result = TaskPlan(request_id=request.request_id)
    result.request.CopyFrom(request)
    if llm is None:
        result.tasks.extend(plan_by_rules(request_text(request), resources))
        result.source = PlanSource.PLAN_SOURCE_RULES
        result.notes.append(RULES_NOTE)
    else:
        reply = await llm.complete(planning_prompt(request))
        try:
            result.tasks.extend(parse_plan(reply, resources))
            result.source = PlanSource.PLAN_SOURCE_LLM
        except PlanError as e:
            log.warning("LLM plan rejected: %s", e)
            result.tasks.extend(plan_by_rules(request_text(request), resources))
            result.source = PlanSource.PLAN_SOURCE_RULES
            result.notes.append(f"the LLM's plan was rejected ({e}); {RULES_NOTE}")
    result.planning_seconds = time.perf_counter() - started
    return result
