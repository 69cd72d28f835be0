from __future__ import annotations

import pytest

from services.common.settings import Settings, SettingsError
from services.selector.config import SelectorConfig


def test_defaults() -> None:
    config = SelectorConfig.from_settings(Settings.from_env({}))
    assert (config.top_k, config.llm_choice, config.task_retries) == (5, True, 1)
    assert (config.task_deadline_s, config.capacity_wait_s) == (300.0, 60.0)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"CHORUS_SELECT_TOP_K": "0"}, "CHORUS_SELECT_TOP_K"),
        ({"CHORUS_SELECT_TOP_K": "many"}, "CHORUS_SELECT_TOP_K"),
        ({"CHORUS_SELECT_LLM": "maybe"}, "CHORUS_SELECT_LLM"),
        ({"CHORUS_TASK_RETRIES": "-1"}, "CHORUS_TASK_RETRIES"),
        ({"CHORUS_TASK_DEADLINE": "0"}, "CHORUS_TASK_DEADLINE"),
        ({"CHORUS_CAPACITY_WAIT": "soon"}, "CHORUS_CAPACITY_WAIT"),
    ],
)
def test_a_bad_value_names_its_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        SelectorConfig.from_settings(Settings.from_env(env))
