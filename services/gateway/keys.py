"""Client API keys: a token is shown once, when it is made; the keys file keeps only its hash.

The keys file (`CHORUS_API_KEYS`) holds one key a line, `NAME SHA256-HEX [expires=ISO-8601]`;
`#` starts a comment. A key without `expires=` never expires (the file's first format).
Tokens are 256 random bits, so one unsalted SHA-256 is as good as a slow hash here, and it
keeps checking a key to a few microseconds. A presented token is hashed and compared with
every known hash in constant time, so neither timing nor order tells which one came close.

A running gateway reads the file again when it changes (looked at no more than once a
second), so `chorus keys add` and `chorus keys revoke` take effect without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from services.common.settings import SettingsError

log = logging.getLogger(__name__)
TOKEN_PREFIX = "chorus_"
RELOAD_CHECK_S = 1.0
_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_HASH = re.compile(r"[0-9a-f]{64}")
# What a well-formed token looks like; anything else is refused before it is hashed.
_TOKEN = re.compile(rf"{TOKEN_PREFIX}[A-Za-z0-9_-]{{20,100}}")
_LIFETIME = re.compile(r"([1-9][0-9]{0,4})([hdw])")
_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}


class KeyRefused(Exception):
    """A call without a valid key; `reason` is a metric label (missing, malformed, unknown,
    expired, wrong_header)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Key:
    """One line of the keys file."""

    name: str
    digest: str  # SHA-256 of the token, hex
    expires: datetime | None = None  # UTC; None: never

    def line(self) -> str:
        tail = f" expires={stamp(self.expires)}" if self.expires else ""
        return f"{self.name} {self.digest}{tail}\n"

    def expired(self, now: datetime) -> bool:
        return self.expires is not None and now >= self.expires


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def stamp(moment: datetime) -> str:
    """A UTC time as the keys file and `chorus keys list` write it."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expiry(text: str, now: datetime) -> datetime:
    """When a key made `now` expires: a lifetime (`12h`, `30d`, `8w`) or an ISO 8601 date or
    time (`2027-01-31`, `2027-01-31T12:00:00+01:00`; no zone: UTC), not in the past."""
    text = text.strip()
    if lifetime := _LIFETIME.fullmatch(text):
        return now + int(lifetime[1]) * _UNITS[lifetime[2]]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as e:
        raise SettingsError(
            f"--expires: {text!r} is neither a lifetime (12h, 30d, 8w) nor an ISO 8601 date"
        ) from e
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    if moment <= now:
        raise SettingsError(f"--expires: {stamp(moment)} is not in the future")
    return moment.astimezone(UTC)


class ApiKeys:
    """The keys a gateway accepts, as its keys file holds them now."""

    def __init__(self, path: Path) -> None:
        """Reads `path`; a file that is missing, unreadable or malformed stops start-up."""
        self._path = path
        self._seen = _identity(path)
        self._keys = _read(path)
        self._checked = time.monotonic()

    def owner(self, token: str, now: datetime | None = None) -> str:
        """The name of the key `token` is, or `KeyRefused`."""
        if not _TOKEN.fullmatch(token):
            raise KeyRefused("malformed", f"the API key is not a {TOKEN_PREFIX}... token")
        self._reload_if_changed()
        presented = hashlib.sha256(token.encode()).digest()
        found: Key | None = None
        for key, known in self._keys:  # every entry, whether or not one matched already
            if hmac.compare_digest(presented, known):
                found = key
        if found is None:
            raise KeyRefused("unknown", "the API key is not known (revoked, or a typo)")
        if found.expires is not None and found.expired(now or datetime.now(UTC)):
            raise KeyRefused(
                "expired",
                f"the API key {found.name!r} expired at {stamp(found.expires)}; ask for a new one",
            )
        return found.name

    def _reload_if_changed(self) -> None:
        now = time.monotonic()
        if now - self._checked < RELOAD_CHECK_S:
            return
        self._checked = now
        seen = _identity(self._path)
        if seen == self._seen:
            return
        try:
            self._keys = _read(self._path)
        except SettingsError as e:  # mid-edit, or removed: the keys read last still hold
            log.warning("kept the API keys read before: %s", e)
            return
        self._seen = seen
        log.info("read the API keys again: %d keys in %s", len(self._keys), self._path)


def _identity(path: Path) -> tuple[int, int, int] | None:
    """What tells that the file changed: a rewrite (`chorus keys revoke`, a Kubernetes Secret)
    replaces it, an append (`chorus keys add`) grows it."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _read(path: Path) -> tuple[tuple[Key, bytes], ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SettingsError(f"CHORUS_API_KEYS: cannot read the keys file {path}: {e}") from e
    return tuple((key, bytes.fromhex(key.digest)) for key in parse(text, path))


def add_key(path: Path, name: str, expires: datetime | None = None) -> str:
    """Makes a key called `name` (expiring at `expires`, or never), records its hash in `path`
    (created, owner-only, if absent) and returns the token: the only time it exists anywhere."""
    if not _NAME.fullmatch(name):
        raise SettingsError(
            f"key name: 1 to 64 letters, digits, '_', '.', '@' or '-', not {name!r}"
        )
    if any(key.name == name for key in list_keys(path)):
        raise SettingsError(f"{path}: a key called {name!r} exists already")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(Key(name, token_hash(token), expires).line())
    return token


def revoke_key(path: Path, name: str) -> None:
    """Removes the key called `name` from `path`, which is replaced whole (comments kept), so
    a gateway reading it sees either the old file or the new one."""
    if not any(key.name == name for key in list_keys(path)):
        raise SettingsError(f"{path}: no key called {name!r}")
    kept = [
        raw
        for raw in path.read_text(encoding="utf-8").splitlines(keepends=True)
        if raw.split("#", 1)[0].split(maxsplit=1)[:1] != [name]
    ]
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # owner-only
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


def list_keys(path: Path) -> list[Key]:
    """The keys in `path` ([] when there is no such file)."""
    if not path.exists():
        return []
    return list(parse(path.read_text(encoding="utf-8"), path))


def parse(text: str, path: Path) -> Iterator[Key]:
    for number, raw in enumerate(text.splitlines(), 1):
        fields = raw.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"CHORUS_API_KEYS: {path}:{number}"
        if not (
            len(fields) in (2, 3) and _NAME.fullmatch(fields[0]) and _HASH.fullmatch(fields[1])
        ):
            raise SettingsError(f"{where}: not 'NAME SHA256-HEX [expires=ISO-8601]'")
        yield Key(fields[0], fields[1], _expires_field(fields[2:], where))


def _expires_field(rest: list[str], where: str) -> datetime | None:
    if not rest:
        return None
    label, _, value = rest[0].partition("=")
    try:
        if label != "expires":
            raise ValueError(rest[0])
        moment = datetime.fromisoformat(value)
    except ValueError as e:
        raise SettingsError(f"{where}: {rest[0]!r} is not 'expires=ISO-8601'") from e
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
