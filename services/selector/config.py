"""Selector settings: how many candidates, whether the LLM chooses, retries of a task."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.settings import (
    Settings,
    SettingsError,
    bool_setting,
    float_setting,
    int_setting,
)
from services.selector.rank import DEFAULT_TOP_K


@dataclass(frozen=True)
class SelectorConfig:
    top_k: int  # candidates ranked per task, and offered to the LLM
    llm_choice: bool  # let the LLM choose among several candidates (when an LLM is configured)
    task_deadline_s: float  # from dispatch, queueing included (CHORUS_TASK_DEADLINE, shared)
    task_retries: int  # further attempts after an overdue task, a lost model or an executor error
    capacity_wait_s: float  # how long a ready task waits for a replica of its type to come

    @classmethod
    def from_settings(cls, settings: Settings) -> SelectorConfig:
        env = settings.env
        top_k = int_setting(env, "CHORUS_SELECT_TOP_K", DEFAULT_TOP_K)
        if top_k < 1:
            raise SettingsError(f"CHORUS_SELECT_TOP_K must be at least 1, not {top_k}")
        return cls(
            top_k=top_k,
            llm_choice=bool_setting(env, "CHORUS_SELECT_LLM", True),
            task_deadline_s=settings.task_deadline_s,
            task_retries=int_setting(env, "CHORUS_TASK_RETRIES", 1),
            capacity_wait_s=float_setting(env, "CHORUS_CAPACITY_WAIT", 60.0),
        )
