from __future__ import annotations

import pytest

from services.common.settings import Settings, SettingsError, bool_setting
from services.common.subjects import invoke


def test_defaults_need_no_environment() -> None:
    settings = Settings.from_env({})
    assert settings.grpc_addr == "127.0.0.1:50051"
    assert not settings.llm.configured


def test_api_key_falls_back_to_openai_api_key() -> None:
    settings = Settings.from_env({"OPENAI_API_KEY": "sk-x"})
    assert settings.llm.api_key == "sk-x" and settings.llm.configured


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"CHORUS_LLM_BASE_URL": "localhost:8000"}, "CHORUS_LLM_BASE_URL"),
        ({"CHORUS_NATS_URL": "http://x"}, "CHORUS_NATS_URL"),
        ({"CHORUS_LLM_TIMEOUT": "soon"}, "CHORUS_LLM_TIMEOUT"),
        ({"CHORUS_METRICS_PORT": "-1"}, "CHORUS_METRICS_PORT"),
        ({"CHORUS_PLANNER": "magic"}, "CHORUS_PLANNER"),
        ({"CHORUS_LOG_LEVEL": "loud"}, "CHORUS_LOG_LEVEL"),
        ({"CHORUS_STREAM_REPLICAS": "7"}, "CHORUS_STREAM_REPLICAS"),
    ],
)
def test_bad_values_stop_start_up_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)


def test_model_ids_become_valid_distinct_subject_tokens() -> None:
    a = invoke("text-classification", "org/model.v1")
    b = invoke("text-classification", "org/model_v1")
    assert a != b
    assert all(t and "/" not in t and "." not in t for t in a.split(".")[2:])


@pytest.mark.parametrize(("raw", "value"), [("1", True), ("yes", True), ("0", False), ("", True)])
def test_a_flag_reads_one_way_everywhere(raw: str, value: bool) -> None:
    assert bool_setting({"CHORUS_X": raw}, "CHORUS_X", True) is value
    with pytest.raises(SettingsError, match="CHORUS_X must be 0 or 1, not 'off-ish'"):
        bool_setting({"CHORUS_X": "off-ish"}, "CHORUS_X", True)


def test_the_inline_limit_defaults_to_64_kib_and_stays_well_under_a_message() -> None:
    assert Settings.from_env({}).inline_max_bytes == 64 * 1024
    assert Settings.from_env({"CHORUS_INLINE_MAX_BYTES": "0"}).inline_max_bytes == 0
    with pytest.raises(SettingsError, match="CHORUS_INLINE_MAX_BYTES must be at most 262144"):
        Settings.from_env({"CHORUS_INLINE_MAX_BYTES": str(900 * 1024)})


@pytest.mark.parametrize(
    ("env", "prefix"),
    [
        ({}, None),
        ({"CHORUS_NATS_USER": "selector", "CHORUS_NATS_PASSWORD": "p"}, "_INBOX_selector"),
        ({"CHORUS_NATS_USER": "integrator", "CHORUS_NATS_PASSWORD": "p"}, None),
        (
            {
                "CHORUS_NATS_USER": "selector",
                "CHORUS_NATS_PASSWORD": "p",
                "CHORUS_NATS_INBOX_PREFIX": "_INBOX_x",
            },
            "_INBOX_x",
        ),
    ],
)
def test_replies_go_to_the_inboxes_the_login_s_role_may_read(
    env: dict[str, str], prefix: str | None
) -> None:
    # A service role reads only its own inboxes; the integrator a client's usual `_INBOX`.
    assert Settings.from_env(env).nats_auth.inbox_prefix == prefix
