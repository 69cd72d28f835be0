"""API keys apart from any server: the keys file, the token checks, exposure without keys."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from services.common.settings import SettingsError
from services.gateway.auth import Gate
from services.gateway.config import GatewayConfig
from services.gateway.keys import ApiKeys, KeyRefused, add_key


def test_keys_add_prints_the_token_alone_and_keeps_only_its_hash(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    done = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "keys", "add", "alice"],
        env={"CHORUS_API_KEYS": str(keys_file), "PATH": ""},
        capture_output=True,
        text=True,
        check=True,
    )
    token = done.stdout.strip()
    assert done.stdout == token + "\n" and token.startswith("chorus_")
    assert token not in keys_file.read_text() and token not in done.stderr
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    assert ApiKeys(keys_file).owner(token) == "alice"


def test_a_second_key_of_the_same_name_is_refused(tmp_path: Path) -> None:
    add_key(tmp_path / "keys", "alice")
    with pytest.raises(SettingsError, match="exists already"):
        add_key(tmp_path / "keys", "alice")


@pytest.mark.parametrize(
    ("content", "match"),
    [(None, "cannot read the keys file"), ("alice not-a-hash\n", ":1: not 'NAME SHA256-HEX")],
)
def test_a_missing_or_malformed_keys_file_stops_start_up_naming_it(
    tmp_path: Path, content: str | None, match: str
) -> None:
    keys_file = tmp_path / "keys"
    if content is not None:
        keys_file.write_text(content)
    with pytest.raises(SettingsError, match=match) as refused:
        GatewayConfig.from_env({"CHORUS_API_KEYS": str(keys_file)})
    assert str(keys_file) in str(refused.value)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing"),
        ({"x-api-key": "TOKEN"}, "wrong_header"),
        ({"authorization": "TOKEN"}, "malformed"),
        ({"authorization": "Basic TOKEN"}, "malformed"),
        ({"authorization": "Bearer chorus_\r\nSet-Cookie: a=b"}, "malformed"),
        ({"authorization": "Bearer chorus_" + "A" * 43}, "unknown"),
    ],
)
def test_a_call_without_a_valid_key_is_refused_by_reason(
    tmp_path: Path, headers: dict[str, str], reason: str
) -> None:
    token = add_key(tmp_path / "keys", "alice")
    gate = Gate(ApiKeys(tmp_path / "keys"))
    values = {k: v.replace("TOKEN", token) for k, v in headers.items()}
    with pytest.raises(KeyRefused) as refused:
        gate.owner(values.get, "grpc")
    assert refused.value.reason == reason
    assert token not in str(refused.value)
    assert gate.owner({"authorization": f"Bearer {token}"}.get, "grpc") == "alice"


def test_without_keys_only_loopback_is_served_unless_told_it_is_insecure() -> None:
    config = GatewayConfig.from_env({})
    config.check_exposure({"CHORUS_GRPC_ADDR": "127.0.0.1:1", "CHORUS_OPENAI_ADDR": "[::1]:2"})
    for exposed in ("0.0.0.0:50051", ":50051", "10.0.0.5:50051", "[::]:8000"):
        with pytest.raises(SettingsError, match="CHORUS_GRPC_ADDR"):
            config.check_exposure({"CHORUS_GRPC_ADDR": exposed})
    insecure = GatewayConfig.from_env({"CHORUS_INSECURE": "1"})
    insecure.check_exposure({"CHORUS_GRPC_ADDR": "0.0.0.0:50051"})
