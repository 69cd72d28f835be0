"""Who may do what on the bus: one NATS user per role, allowed exactly what its service does.

Each role may publish only its own hand-offs (only executors publish `chorus.result` and the
worker registry, only the selector writes run state and invocations, an integrator publishes
`chorus.request` and reads events and responses), and may call only the JetStream API it uses:

- Streams. Every service creates the three streams at start (`STREAM.CREATE`, idempotent: a
  stream that exists with other settings is left as it is); the selector alone may change
  their settings (`STREAM.UPDATE`). Each creates, or binds to, the buckets it uses. No role
  may delete or purge a stream, list streams' contents, or read a stream it does not use.
- Work. A role consumes only through its own durable consumers on `CHORUS_WORK`, each named
  with its filter subject in the create subject (`CONSUMER.CREATE.<stream>.<name>.<filter>`,
  which the server refuses when the request's filter differs), so a role can neither read
  another's subjects nor re-point another role's consumer. An executor's consumers are those
  of the (task, route) lanes it serves: its permissions are made from them (`executor_role`).
- Replies. Every service uses an inbox prefix of its own, `_INBOX_<user>` (set by
  `bus.connect`), and may subscribe to nothing else but what it reads (no `>`), so one role
  cannot overhear the replies, pulled messages and key reads of another. The integrator keeps
  the usual `_INBOX.>`, which no service uses.

`chorus up` starts its NATS with these users; `deploy/nats/users.yaml` is rendered from this
table (`make nats-users`), and `tests/test_deploy.py` checks the two agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from services.common import subjects

Lane = tuple[str, str]  # what an executor serves: (task, route); route is a model or a route

WORK = subjects.WORK_STREAM
EVENTS = subjects.EVENTS_STREAM
DEADLETTER = subjects.DEADLETTER_STREAM
STREAMS = (WORK, EVENTS, DEADLETTER)
# The role whose settings (sizes, replicas) the streams take: the others only create them.
STREAM_SETTINGS_OWNER = "selector"
INTEGRATOR_INBOXES = "_INBOX.>"  # the prefix clients use unless told otherwise


INTEGRATOR = "integrator"


def inbox_prefix(user: str) -> str:
    """The inbox prefix of a service connecting as `user`: replies to it go there only."""
    return f"_INBOX_{user}"


def login_inbox_prefix(user: str) -> str | None:
    """The inbox prefix a login as `user` takes: a service role's own, or for the integrator
    the client's usual one (None), which is what its role allows."""
    return None if user == INTEGRATOR else inbox_prefix(user)


@dataclass(frozen=True)
class Role:
    name: str  # the NATS user
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]

    def permissions(self) -> dict[str, dict[str, list[str]]]:
        """As a NATS server config and a user JWT write them."""
        return {
            "publish": {"allow": list(self.publish)},
            "subscribe": {"allow": list(self.subscribe)},
        }


def _api(*calls: str) -> tuple[str, ...]:
    return tuple(f"$JS.API.{call}" for call in calls)


def _unique(*groups: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(s for group in groups for s in group))


def _service(
    name: str, publish: Iterable[str], subscribe: Iterable[str] = (), *, owns_streams: bool = False
) -> Role:
    """A service's role: its own subjects, the three streams, its own inboxes."""
    streams = _api(*(f"STREAM.CREATE.{s}" for s in STREAMS))
    if owns_streams:
        streams += _api(*(f"STREAM.UPDATE.{s}" for s in STREAMS))
    return Role(name, _unique(streams, publish), _unique((f"{inbox_prefix(name)}.>",), subscribe))


def _durable(name: str, filter_subject: str, stream: str = WORK) -> tuple[str, ...]:
    """Creating (or updating) one durable pull consumer with that filter, pulling and acking."""
    return (
        *_api(
            f"CONSUMER.CREATE.{stream}.{name}.{filter_subject}",
            f"CONSUMER.MSG.NEXT.{stream}.{name}",
            f"CONSUMER.INFO.{stream}.{name}",
        ),
        f"$JS.ACK.{stream}.{name}.>",
    )


def _bucket(stream: str) -> tuple[str, ...]:
    """Creating a bucket's stream, or binding to it as it is."""
    return _api(f"STREAM.CREATE.{stream}", f"STREAM.INFO.{stream}")


def _get_messages(stream: str) -> tuple[str, ...]:
    """Reading single messages of a stream (direct gets, the last of a subject or by sequence)."""
    return _api(f"DIRECT.GET.{stream}", f"DIRECT.GET.{stream}.>", f"STREAM.MSG.GET.{stream}")


def _follow(stream: str) -> tuple[str, ...]:
    """Ordered (ephemeral) consumers on a stream: a KV watch, a replay of events."""
    return (
        *_api(
            "STREAM.NAMES",  # which stream holds a subject (names alone)
            f"STREAM.INFO.{stream}",
            f"CONSUMER.CREATE.{stream}",
            f"CONSUMER.CREATE.{stream}.>",
            f"CONSUMER.INFO.{stream}.>",
            f"CONSUMER.DELETE.{stream}.>",
        ),
        f"$JS.FC.{stream}.>",
    )


def _kv(bucket: str) -> str:
    return f"KV_{bucket}"


_ARTIFACTS = (
    *_bucket(f"OBJ_{subjects.ARTIFACT_BUCKET}"),
    *_get_messages(f"OBJ_{subjects.ARTIFACT_BUCKET}"),
    f"$O.{subjects.ARTIFACT_BUCKET}.>",  # chunks and metadata of a new file
)
# The worker registry, read: the selector ranks replicas, the gateway lists models.
_WORKERS_READ = (*_bucket(_kv(subjects.WORKER_BUCKET)), *_follow(_kv(subjects.WORKER_BUCKET)))
_EVENT_SUBJECTS = ("chorus.event.*", "chorus.response.*")
# Following a request: its events live (a core subscription or an ordered consumer on
# CHORUS_EVENTS) and replayed, and its last event.
_READ_EVENTS = (*_follow(EVENTS), *_get_messages(EVENTS))


def _gateway_publish() -> tuple[str, ...]:
    owners = _kv(subjects.REQUEST_OWNER_BUCKET)
    return _unique(
        (subjects.REQUEST, f"{subjects.CANCEL_PREFIX}.*"),
        _EVENT_SUBJECTS,  # a cancelled request's ending
        _READ_EVENTS,
        _ARTIFACTS,
        _bucket(owners),
        _get_messages(owners),
        (f"$KV.{subjects.REQUEST_OWNER_BUCKET}.*",),
        _WORKERS_READ,
    )


_EVENTS_SUBSCRIBE = ("chorus.event.>", "chorus.response.>")


def gateway_role() -> Role:
    """The front door: sends requests and cancels, follows events, stores uploads."""
    return _service("gateway", _gateway_publish(), _EVENTS_SUBSCRIBE)


def planner_role(hosts_gateway: bool = True) -> Role:
    """The planner; with the gateway in its process (`CHORUS_PLANNER_HOSTS_GATEWAY`, the
    default and how `chorus up` runs it), the gateway's permissions too."""
    publish = _unique(
        _durable("planner", subjects.REQUEST),
        (subjects.PLAN, *_EVENT_SUBJECTS, subjects.deadletter("planner")),
        _gateway_publish() if hosts_gateway else (),
    )
    return _service("planner", publish, _EVENTS_SUBSCRIBE if hosts_gateway else ())


def selector_role() -> Role:
    runs = _kv(subjects.RUN_STATE_BUCKET)
    publish = _unique(
        _durable("selector-plans", subjects.PLAN),
        _durable("selector-results", subjects.RESULT),
        _durable("selector-cancels", f"{subjects.CANCEL_PREFIX}.>"),
        (f"{subjects.INVOKE_PREFIX}.>", subjects.REPORT, *_EVENT_SUBJECTS),
        (subjects.deadletter("selector"),),
        _bucket(runs),
        _get_messages(runs),
        _follow(runs),  # listing the runs in flight
        (f"$KV.{subjects.RUN_STATE_BUCKET}.*",),
        _WORKERS_READ,
    )
    return _service("selector", publish, owns_streams=True)


def responder_role() -> Role:
    publish = _unique(
        _durable("responder", subjects.REPORT),
        (*_EVENT_SUBJECTS, subjects.deadletter("responder")),
    )
    return _service("responder", publish)


def executor_role(lanes: Iterable[Lane], name: str = "executor") -> Role:
    """An executor (or a pool of replicas serving the same lanes): it consumes only the
    invocations of its own (task, route) lanes, reads cancels, and publishes results, files
    and its registry entry; it reads no other stream and no bucket but the files."""
    consumers = [
        _durable(subjects.consumer_name("executor", task, route), subjects.invoke(task, route))
        for task, route in sorted(set(lanes))
    ]
    publish = _unique(
        *consumers,
        (subjects.RESULT, subjects.deadletter("executor")),
        _ARTIFACTS,
        _bucket(_kv(subjects.WORKER_BUCKET)),
        (f"$KV.{subjects.WORKER_BUCKET}.>",),  # its entry (a host name may hold dots)
    )
    # Cancels are read without a stream consumer, so that queued work is dropped at once.
    return _service(name, publish, (f"{subjects.CANCEL_PREFIX}.>",))


def integrator_role() -> Role:
    """Outside Chorus: sends requests and reads events and responses, nothing else."""
    return Role(
        INTEGRATOR, (subjects.REQUEST, *_READ_EVENTS), (INTEGRATOR_INBOXES, *_EVENTS_SUBSCRIBE)
    )


# The roles whose permissions do not depend on configuration, as `chorus up` runs them (the
# planner hosting the gateway). An executor's role is made from the lanes it serves.
ROLES: dict[str, Role] = {
    role.name: role
    for role in (
        gateway_role(),
        planner_role(),
        selector_role(),
        responder_role(),
        integrator_role(),
    )
}


def local_roles(executor_lanes: Iterable[Lane]) -> dict[str, Role]:
    """Every role of a one-machine Chorus (`chorus up`), its executor serving those lanes."""
    return {**ROLES, "executor": executor_role(executor_lanes)}


def nats_authorization(passwords: Mapping[str, str], roles: Mapping[str, Role] = ROLES) -> str:
    """The `authorization` block of a NATS server config: a user for each role in
    `passwords` (user -> password), with the permissions `roles` gives it."""
    lines = []
    for name, password in passwords.items():
        role = roles[name]
        lines.append(
            f"    {{user: {_quoted(name)}, password: {_quoted(password)}, permissions: {{"
            f"publish: {{allow: {_list(role.publish)}}}, "
            f"subscribe: {{allow: {_list(role.subscribe)}}}}}}}"
        )
    return "authorization {\n  users: [\n" + ",\n".join(lines) + "\n  ]\n}\n"


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _list(values: Sequence[str]) -> str:
    return "[" + ", ".join(_quoted(v) for v in values) + "]"
