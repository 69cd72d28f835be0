"""NATS decentralized auth for the tests: an operator, an account and user `.creds` files.

What `nsc` makes, built here from `nkeys` (nats-io's own Ed25519 key library, which nats-py
uses for `.creds` logins) and the JWT claims of NATS's v2 format: a JWT is
`base64url(header).base64url(claims).base64url(signature)`, signed by its issuer's seed
(the operator signs the account, the account signs its users).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys

from services.common.roles import Role

_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
_UNLIMITED = -1


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@dataclass(frozen=True)
class Key:
    seed: bytes

    @classmethod
    def new(cls, prefix: int) -> Key:
        return cls(nkeys.encode_seed(os.urandom(32), prefix))

    @property
    def public(self) -> str:
        return str(nkeys.from_seed(self.seed).public_key.decode())

    def sign_jwt(self, subject: str, name: str, nats_claims: dict[str, Any]) -> str:
        claims: dict[str, Any] = {
            "jti": "",
            "iat": int(time.time()),
            "iss": self.public,
            "name": name,
            "sub": subject,
            "nats": {**nats_claims, "version": 2},
        }
        # The claims' id: a hash of the claims without it, as the Go library makes it.
        digest = hashlib.new("sha512_256", json.dumps(claims).encode()).digest()
        claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
        signed = f"{_b64(json.dumps(_HEADER).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = nkeys.from_seed(self.seed).sign(signed.encode())
        return f"{signed}.{_b64(signature)}"


@dataclass(frozen=True)
class Operator:
    """An operator with one account that may use JetStream, for a server in operator mode."""

    operator: Key
    account: Key
    system: Key  # the server's own account (JetStream needs one)

    @classmethod
    def new(cls) -> Operator:
        account = nkeys.PREFIX_BYTE_ACCOUNT
        return cls(Key.new(nkeys.PREFIX_BYTE_OPERATOR), Key.new(account), Key.new(account))

    def server_config(self) -> str:
        """The part of a `nats-server` config that trusts this operator and its accounts."""
        operator_jwt = self.operator.sign_jwt(
            self.operator.public,
            "chorus",
            {"type": "operator", "system_account": self.system.public},
        )
        system_jwt = self.operator.sign_jwt(self.system.public, "SYS", {"type": "account"})
        limits = {
            key: _UNLIMITED
            for key in ("subs", "data", "payload", "imports", "exports", "conn", "leaf")
        }
        limits.update(
            wildcards=True,
            mem_storage=_UNLIMITED,
            disk_storage=_UNLIMITED,
            streams=_UNLIMITED,
            consumer=_UNLIMITED,
        )
        account_jwt = self.operator.sign_jwt(
            self.account.public, "CHORUS", {"type": "account", "limits": limits}
        )
        return (
            f"operator: {operator_jwt}\n"
            f"system_account: {self.system.public}\n"
            "resolver: MEMORY\n"
            f"resolver_preload: {{ {self.account.public}: {account_jwt}, "
            f"{self.system.public}: {system_jwt} }}\n"
        )

    def creds(self, role: Role, path: Path) -> Path:
        """A `.creds` file of a user of the account named for `role`, with its permissions."""
        user = Key.new(nkeys.PREFIX_BYTE_USER)
        permissions = role.permissions()
        claims = {
            "type": "user",
            "pub": permissions["publish"],
            "sub": permissions["subscribe"],
            "subs": _UNLIMITED,
            "data": _UNLIMITED,
            "payload": _UNLIMITED,
        }
        jwt = self.account.sign_jwt(user.public, role.name, claims)
        path.write_text(
            "-----BEGIN NATS USER JWT-----\n"
            f"{jwt}\n"
            "------END NATS USER JWT------\n\n"
            "-----BEGIN USER NKEY SEED-----\n"
            f"{user.seed.decode()}\n"
            "------END USER NKEY SEED------\n"
        )
        path.chmod(0o600)
        return path
