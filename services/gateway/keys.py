"""Client API keys: a token is shown once, when it is made; the keys file keeps only its hash.

The keys file (`CHORUS_API_KEYS`) holds one key a line, `NAME SHA256-HEX`; `#` starts a comment.
Tokens are 256 random bits, so one unsalted SHA-256 is as good as a slow hash here, and it
keeps checking a key to a few microseconds. A presented token is hashed and compared with
every known hash in constant time, so neither timing nor order tells which one came close.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from services.common.settings import SettingsError

TOKEN_PREFIX = "chorus_"
_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_HASH = re.compile(r"[0-9a-f]{64}")
# What a well-formed token looks like; anything else is refused before it is hashed.
_TOKEN = re.compile(rf"{TOKEN_PREFIX}[A-Za-z0-9_-]{{20,100}}")


class KeyRefused(Exception):
    """A call without a valid key; `reason` is a metric label (missing, malformed, unknown)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKeys:
    """The keys a gateway accepts: hash -> the key's name, which owns what its calls make."""

    by_hash: tuple[tuple[bytes, str], ...]

    @classmethod
    def load(cls, path: Path) -> ApiKeys:
        """The keys in `path`; a file that is missing, unreadable or malformed stops start-up."""
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise SettingsError(f"CHORUS_API_KEYS: cannot read the keys file {path}: {e}") from e
        keys = _parse(text, path)
        return cls(tuple((bytes.fromhex(h), name) for name, h in keys.items()))

    def owner(self, token: str) -> str:
        """The name of the key `token` is, or `KeyRefused`."""
        if not _TOKEN.fullmatch(token):
            raise KeyRefused("malformed", f"the API key is not a {TOKEN_PREFIX}... token")
        presented = hashlib.sha256(token.encode()).digest()
        found = ""
        for known, name in self.by_hash:  # every entry, whether or not one matched already
            if hmac.compare_digest(presented, known):
                found = name
        if not found:
            raise KeyRefused("unknown", "the API key is not known (revoked, or a typo)")
        return found


def add_key(path: Path, name: str) -> str:
    """Makes a key called `name`, records its hash in `path` (created, owner-only, if absent)
    and returns the token: the only time it exists anywhere."""
    if not _NAME.fullmatch(name):
        raise SettingsError(
            f"key name: 1 to 64 letters, digits, '_', '.', '@' or '-', not {name!r}"
        )
    existing = _parse(path.read_text(encoding="utf-8"), path) if path.exists() else {}
    if name in existing:
        raise SettingsError(f"{path}: a key called {name!r} exists already")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(f"{name} {token_hash(token)}\n")
    return token


def _parse(text: str, path: Path) -> dict[str, str]:
    keys: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, digest = line.partition(" ")
        digest = digest.strip()
        if not _NAME.fullmatch(name) or not _HASH.fullmatch(digest):
            raise SettingsError(f"CHORUS_API_KEYS: {path}:{number}: not 'NAME SHA256-HEX'")
        keys[name] = digest
    return keys
