"""A real NATS server with one user per role, as `chorus up` starts it, for the tests.

Its log is kept: `LockedBus.violations()` lists what the server refused (a permission
violation is logged by the server, while the client often only sees a timeout), so a test
can show that the services, each as its own role, never asked for more than their role has.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from nats.aio.client import Client as NATS

from services.cli.cluster import start_nats_server
from services.common import bus
from services.common.roles import Role, local_roles, login_inbox_prefix
from services.common.settings import NatsAuth
from services.executor.config import lanes_from_env

# Not a role of Chorus: the tests' own observer, which may look at everything.
ADMIN = Role("admin", (">",), (">",))


@dataclass(frozen=True)
class LockedBus:
    url: str
    passwords: dict[str, str]  # user -> password
    roles: dict[str, Role]
    log: Path

    def violations(self) -> list[str]:
        """The server's log lines about refused publishes and subscriptions."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [line for line in text.splitlines() if "Violation" in line]

    async def refused(self, user: str, what: str, subject: str, wait_s: float = 3.0) -> None:
        """Waits until the server has logged refusing `user` a publish or subscription
        (`what`) on `subject`; fails if it does not."""
        line = f'"$G/user:{user}" - {what} Violation - Subject "{subject}"'
        deadline = time.monotonic() + wait_s
        while not any(line in v for v in self.violations()):
            assert time.monotonic() < deadline, f"not refused: {line}\n" + "\n".join(
                self.violations()
            )
            await asyncio.sleep(0.05)

    async def connect(self, user: str) -> NATS:
        """A connection as `user`, with its role's inbox prefix as the services connect (the
        integrator with a client's usual one)."""
        auth = NatsAuth(user, self.passwords[user], inbox_prefix=login_inbox_prefix(user))
        return await bus.connect(self.url, f"test-{user}", auth)


@contextlib.contextmanager
def locked_bus(
    store: Path, executor_env: Mapping[str, str], roles: Mapping[str, Role] | None = None
) -> Iterator[LockedBus]:
    """The server, its executor role made from the lanes an executor with `executor_env`
    serves (as `chorus up` makes it), `roles` replacing or adding some, and an `admin`."""
    roles = {**local_roles(lanes_from_env(executor_env)), **(roles or {}), "admin": ADMIN}
    passwords = {name: secrets.token_urlsafe(16) for name in roles}
    log = store.parent / f"{store.name}-nats.log"
    with log.open("ab") as stderr:
        proc, url = start_nats_server(store, stderr, passwords, roles)
    try:
        yield LockedBus(url, passwords, roles, log)
    finally:
        proc.terminate()
        proc.wait(10)
