"""Who may publish what on the bus: one NATS user per role, with subject permissions.

Only a role's own hand-offs are publishable by it: only executors publish `chorus.result` and
write the worker registry, only the selector writes run state and invocations, and an
integrator may publish `chorus.request` and read events and responses, nothing else. `chorus
up` starts its NATS with these users; `deploy/` has the same table for a NATS of its own.

Service roles keep the JetStream API (`$JS.API.>`: every service creates the streams it needs
and its own consumers), so a stolen service password still reads more than it should; what it
cannot do is speak for another stage. The integrator has only what reading events needs.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common import subjects

_JS = ("$JS.API.>", "$JS.ACK.>", "$JS.FC.>")  # the JetStream API, acks, flow control
_EVENTS = ("chorus.event.>", "chorus.response.>")
_DEADLETTER = ("chorus.deadletter.>",)
_ARTIFACTS = (f"$O.{subjects.ARTIFACT_BUCKET}.>",)
_FRONT_DOOR = (
    subjects.REQUEST,
    f"{subjects.CANCEL_PREFIX}.>",
    *_EVENTS,
    *_ARTIFACTS,
    f"$KV.{subjects.REQUEST_OWNER_BUCKET}.>",
)


@dataclass(frozen=True)
class Role:
    name: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...] = (">",)


ROLES = {
    role.name: role
    for role in (
        Role("gateway", (*_JS, *_FRONT_DOOR)),
        # The planner hosts the gateway unless it runs apart (CHORUS_PLANNER_HOSTS_GATEWAY=0).
        Role("planner", (*_JS, *_FRONT_DOOR, subjects.PLAN, *_DEADLETTER)),
        Role(
            "selector",
            (
                *_JS,
                f"{subjects.INVOKE_PREFIX}.>",
                subjects.REPORT,
                *_EVENTS,
                *_DEADLETTER,
                f"$KV.{subjects.RUN_STATE_BUCKET}.>",
            ),
        ),
        Role(
            "executor",
            (
                *_JS,
                subjects.RESULT,
                *_ARTIFACTS,
                *_DEADLETTER,
                f"$KV.{subjects.WORKER_BUCKET}.>",
            ),
        ),
        Role("responder", (*_JS, *_EVENTS, *_DEADLETTER)),
        # Reads events with an ordered consumer on CHORUS_EVENTS; publishes requests alone.
        Role(
            "integrator",
            (
                subjects.REQUEST,
                "$JS.API.STREAM.NAMES",  # which stream holds a subject (names alone)
                f"$JS.API.STREAM.INFO.{subjects.EVENTS_STREAM}",
                f"$JS.API.CONSUMER.CREATE.{subjects.EVENTS_STREAM}.>",
                f"$JS.API.CONSUMER.CREATE.{subjects.EVENTS_STREAM}",
                f"$JS.API.CONSUMER.DELETE.{subjects.EVENTS_STREAM}.>",
                f"$JS.API.STREAM.MSG.GET.{subjects.EVENTS_STREAM}",
                f"$JS.API.DIRECT.GET.{subjects.EVENTS_STREAM}.>",
                "$JS.FC.>",
            ),
            ("_INBOX.>", *_EVENTS),
        ),
    )
}


def nats_authorization(passwords: dict[str, str]) -> str:
    """The `authorization` block of a NATS server config: one user per role in `passwords`."""
    users = []
    for name, password in passwords.items():
        role = ROLES[name]
        users.append(
            f"    {{user: {_quoted(name)}, password: {_quoted(password)}, permissions: {{"
            f"publish: {{allow: {_list(role.publish)}}}, "
            f"subscribe: {{allow: {_list(role.subscribe)}}}}}}}"
        )
    return "authorization {\n  users: [\n" + ",\n".join(users) + "\n  ]\n}\n"


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(_quoted(v) for v in values) + "]"
