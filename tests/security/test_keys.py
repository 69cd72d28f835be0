"""API keys apart from any server: the keys file, the token checks, exposure without keys."""

from __future__ import annotations

import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.common.settings import SettingsError
from services.gateway import keys
from services.gateway.auth import Gate
from services.gateway.config import GatewayConfig
from services.gateway.keys import ApiKeys, KeyRefused, add_key, expiry, revoke_key, token_hash


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


def _chorus(*args: str, keys_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        env={"CHORUS_API_KEYS": str(keys_file), "PATH": ""},
        capture_output=True,
        text=True,
    )


def test_keys_list_shows_expiry_and_revoke_removes_a_key(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# the team's keys\n")
    temp = _chorus("keys", "add", "temp", "--expires", "30d", keys_file=keys_file)
    assert temp.returncode == 0 and "expiring at" in temp.stderr
    assert _chorus("keys", "add", "ops", keys_file=keys_file).returncode == 0
    listed = _chorus("keys", "list", keys_file=keys_file).stdout.splitlines()
    in_30_days = (datetime.now(UTC) + timedelta(days=30)).strftime("%Y-%m-%d")
    assert listed[0].split()[:3] == ["temp", "valid", "expires"] and in_30_days in listed[0]
    assert listed[1].split() == ["ops", "valid", "expires", "never"]
    assert temp.stdout.strip() not in keys_file.read_text()

    assert _chorus("keys", "revoke", "ops", keys_file=keys_file).returncode == 0
    assert [
        line.split()[0] for line in _chorus("keys", "list", keys_file=keys_file).stdout.splitlines()
    ] == ["temp"]
    assert keys_file.read_text().startswith("# the team's keys\n")  # comments are kept
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    gone = _chorus("keys", "revoke", "ops", keys_file=keys_file)
    assert gone.returncode == 2 and "no key called 'ops'" in gone.stderr
    past = _chorus("keys", "add", "late", "--expires", "2001-01-01", keys_file=keys_file)
    assert past.returncode == 2 and "not in the future" in past.stderr


def test_an_expired_key_is_refused_saying_so_without_the_token(tmp_path: Path) -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    token = add_key(tmp_path / "keys", "temp", expires=expiry("30d", now))
    api_keys = ApiKeys(tmp_path / "keys")
    assert api_keys.owner(token, now + timedelta(days=29)) == "temp"
    with pytest.raises(KeyRefused) as refused:
        api_keys.owner(token, now + timedelta(days=30))
    assert refused.value.reason == "expired"
    assert str(refused.value).startswith("the API key 'temp' expired at 2030-01-31T00:00:00Z")
    assert token not in str(refused.value)


def test_a_key_of_the_first_format_never_expires(tmp_path: Path) -> None:
    token = "chorus_" + "k" * 43
    (tmp_path / "keys").write_text(f"old {token_hash(token)}\n")
    assert ApiKeys(tmp_path / "keys").owner(token, datetime(9999, 1, 1, tzinfo=UTC)) == "old"


@pytest.mark.parametrize(
    ("text", "expires"),
    [
        ("12h", datetime(2030, 1, 1, 12, tzinfo=UTC)),
        ("2w", datetime(2030, 1, 15, tzinfo=UTC)),
        ("2030-02-01", datetime(2030, 2, 1, tzinfo=UTC)),
        ("2030-02-01T12:00:00+02:00", datetime(2030, 2, 1, 10, tzinfo=UTC)),
    ],
)
def test_an_expiry_is_a_lifetime_or_an_iso_date(text: str, expires: datetime) -> None:
    assert expiry(text, datetime(2030, 1, 1, tzinfo=UTC)) == expires


@pytest.mark.parametrize("text", ["soon", "0d", "30 days", "2029-12-31", "30m"])
def test_a_bad_or_past_expiry_is_refused(text: str) -> None:
    with pytest.raises(SettingsError, match="--expires"):
        expiry(text, datetime(2030, 1, 1, tzinfo=UTC))


def test_a_running_gateway_sees_keys_added_and_revoked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(keys, "RELOAD_CHECK_S", 0.0)
    keys_file = tmp_path / "keys"
    alice = add_key(keys_file, "alice")
    api_keys = ApiKeys(keys_file)
    bob = add_key(keys_file, "bob")
    assert api_keys.owner(bob) == "bob"
    revoke_key(keys_file, "alice")
    with pytest.raises(KeyRefused, match="not known"):
        api_keys.owner(alice)
    keys_file.write_text("bob not-a-hash\n")  # a bad edit: the keys read before still hold
    assert api_keys.owner(bob) == "bob"
    assert "kept the API keys read before" in caplog.text
