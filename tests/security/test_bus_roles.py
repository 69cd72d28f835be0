"""The locked bus on a real NATS server: each role may do what its service does and no more.

An executor consumes only its own lanes' invocations and reads no other stream or bucket; no
role but the selector writes invocations or run state, none but executors publishes results;
no service role can delete a stream, subscribe to everything or overhear another's replies;
the integrator sends requests and reads events. Each refusal is checked in the server's log,
not only as the client's timeout.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from chorus.v1.messages_pb2 import ChatMessage, ChatRequest, TaskResult
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, KeyValueConfig, StreamConfig
from nats.js.errors import NotFoundError
from prometheus_client import REGISTRY

from services.common import bus, subjects
from services.common.roles import ROLES, STREAM_SETTINGS_OWNER, local_roles
from services.common.workers import open_worker_bucket
from tests.integration.stack import CANNY_ONLY
from tests.locked_bus import LockedBus, locked_bus

SERVICES_DIR = Path(__file__).resolve().parents[2] / "services"
OWN_LANE = ("canny-control", "builtin:canny")  # what the CANNY_ONLY executor serves
OTHER_LANE = ("summarization", "llm")
SHORT = 0.5  # seconds a refused request waits for the answer that never comes


def _lane(task: str, route: str) -> tuple[str, str]:
    """A lane's durable consumer name and its invocation subject."""
    return subjects.consumer_name("executor", task, route), subjects.invoke(task, route)


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[LockedBus]:
    with locked_bus(tmp_path / "jetstream", CANNY_ONLY) as locked:
        yield locked


@pytest.fixture
async def as_role(locked: LockedBus) -> AsyncIterator[dict[str, NATS]]:
    """A connection per role (and the tests' admin), the streams and buckets made by the
    services that make them."""
    users = ("admin", "gateway", "planner", "selector", "executor", "responder", "integrator")
    connections = {user: await locked.connect(user) for user in users}
    selector = connections["selector"].jetstream()
    await bus.ensure_streams(selector)
    await bus.open_key_value(selector, KeyValueConfig(bucket=subjects.RUN_STATE_BUCKET))
    await open_worker_bucket(connections["executor"].jetstream(), 10.0, 1)
    yield connections
    for nc in connections.values():
        await nc.close()


def _js(nc: NATS) -> nats.js.JetStreamContext:
    return nc.jetstream(timeout=SHORT)


async def test_an_executor_consumes_only_its_own_lanes(
    locked: LockedBus, as_role: dict[str, NATS]
) -> None:
    js, admin = _js(as_role["executor"]), as_role["admin"].jetstream()
    own_name, own_subject = _lane(*OWN_LANE)
    other_name, other_subject = _lane(*OTHER_LANE)
    await admin.publish(other_subject, b"another user's task inputs")

    def named(name: str, subject: str) -> ConsumerConfig:
        return ConsumerConfig(
            name=name, durable_name=name, filter_subject=subject, ack_policy=AckPolicy.EXPLICIT
        )

    work = subjects.WORK_STREAM
    # Its own lane: created, as the executor's consumer creates it.
    await as_role["executor"].jetstream().add_consumer(work, named(own_name, own_subject))
    # Another task type's subject, under its own name or the other lane's.
    for name in (own_name, other_name):
        with pytest.raises(nats.errors.TimeoutError):
            await js.add_consumer(work, named(name, other_subject))
        await locked.refused(
            "executor", "Publish", f"$JS.API.CONSUMER.CREATE.{work}.{name}.{other_subject}"
        )
    # The forms whose subject names no filter: the durable and the ephemeral create.
    with pytest.raises(nats.errors.TimeoutError):
        await js.add_consumer(work, durable_name="spy", filter_subject=other_subject)
    await locked.refused("executor", "Publish", f"$JS.API.CONSUMER.DURABLE.CREATE.{work}.spy")
    with pytest.raises(nats.errors.TimeoutError):
        await js.add_consumer(work, filter_subject=other_subject)
    await locked.refused("executor", "Publish", f"$JS.API.CONSUMER.CREATE.{work}")
    # Its own create subject with another filter in the request: the server refuses it.
    body = {"stream_name": work, "config": {**named(own_name, other_subject).as_dict()}}
    reply = await as_role["executor"].request(
        f"$JS.API.CONSUMER.CREATE.{work}.{own_name}.{own_subject}",
        json.dumps(body).encode(),
        timeout=5,
    )
    assert json.loads(reply.data)["error"]["err_code"] == 10131  # filter does not match
    # Nor can it pull from another role's consumer.
    selector = as_role["selector"].jetstream()
    await selector.add_consumer(work, named("selector-results", subjects.RESULT))
    with pytest.raises(nats.errors.TimeoutError):
        sub = await js.pull_subscribe_bind("selector-results", stream=work)
        await sub.fetch(1, timeout=SHORT)
    await locked.refused(
        "executor", "Publish", f"$JS.API.CONSUMER.MSG.NEXT.{work}.selector-results"
    )
    consumers = {c.name: c.config.filter_subject for c in await admin.consumers_info(work)}
    assert consumers == {own_name: own_subject, "selector-results": subjects.RESULT}


async def test_an_executor_reads_no_run_state_no_other_stream_and_no_one_elses_replies(
    locked: LockedBus, as_role: dict[str, NATS]
) -> None:
    executor, js = as_role["executor"], _js(as_role["executor"])
    admin = as_role["admin"].jetstream()
    await admin.publish(subjects.PLAN, b"a plan")
    await admin.publish(subjects.event("victim"), b"an event")
    await (await admin.key_value(subjects.RUN_STATE_BUCKET)).put("victim", b"run state")
    with pytest.raises(nats.errors.TimeoutError):
        await js.key_value(subjects.RUN_STATE_BUCKET)
    await locked.refused(
        "executor", "Publish", f"$JS.API.STREAM.INFO.KV_{subjects.RUN_STATE_BUCKET}"
    )
    runs = f"KV_{subjects.RUN_STATE_BUCKET}"
    with pytest.raises(nats.errors.TimeoutError):
        await js.get_last_msg(runs, f"$KV.{subjects.RUN_STATE_BUCKET}.victim", direct=True)
    await locked.refused(
        "executor", "Publish", f"$JS.API.DIRECT.GET.{runs}.$KV.{subjects.RUN_STATE_BUCKET}.victim"
    )
    for stream in (subjects.WORK_STREAM, subjects.EVENTS_STREAM):
        with pytest.raises(nats.errors.TimeoutError):
            await js.get_msg(stream, 1)
        await locked.refused("executor", "Publish", f"$JS.API.STREAM.MSG.GET.{stream}")
        with pytest.raises(nats.errors.TimeoutError):
            await js.stream_info(stream)
        await locked.refused("executor", "Publish", f"$JS.API.STREAM.INFO.{stream}")
    # Core subscriptions: everything, the events, the run state's subjects, others' inboxes.
    for subject in (">", "chorus.event.>", f"$KV.{subjects.RUN_STATE_BUCKET}.>", "_INBOX.>"):
        await executor.subscribe(subject)
        await locked.refused("executor", "Subscription", subject)
    await executor.subscribe("_INBOX_selector.>")
    await locked.refused("executor", "Subscription", "_INBOX_selector.>")


async def test_no_service_role_deletes_purges_or_reconfigures_a_stream(
    locked: LockedBus, as_role: dict[str, NATS]
) -> None:
    work = subjects.WORK_STREAM
    for user in ("executor", "planner", "gateway", "responder", "selector"):
        js = _js(as_role[user])
        with pytest.raises(nats.errors.TimeoutError):
            await js.delete_stream(work)
        await locked.refused(user, "Publish", f"$JS.API.STREAM.DELETE.{work}")
        with pytest.raises(nats.errors.TimeoutError):
            await js.purge_stream(work)
        await locked.refused(user, "Publish", f"$JS.API.STREAM.PURGE.{work}")
    executor = _js(as_role["executor"])
    with pytest.raises(nats.errors.TimeoutError):
        await executor.update_stream(StreamConfig(name=work, subjects=[">"]))
    await locked.refused("executor", "Publish", f"$JS.API.STREAM.UPDATE.{work}")
    with pytest.raises(nats.errors.TimeoutError):
        await executor.delete_consumer(work, "selector-results")
    # Every service creates the streams at start; only the selector changes their settings:
    # another's call with other settings leaves them as they are.
    assert STREAM_SETTINGS_OWNER == "selector"
    await bus.ensure_streams(as_role["executor"].jetstream(), max_bytes=1024**2, update=False)
    info = await as_role["admin"].jetstream().stream_info(work)
    assert info.config.max_bytes != 1024**2
    await bus.ensure_streams(as_role["selector"].jetstream(), max_bytes=1024**2)
    info = await as_role["admin"].jetstream().stream_info(work)
    assert info.config.max_bytes == 1024**2


async def test_only_the_selector_writes_invocations_and_run_state(
    locked: LockedBus, as_role: dict[str, NATS]
) -> None:
    invocation = subjects.invoke(*OWN_LANE)
    run_state = f"$KV.{subjects.RUN_STATE_BUCKET}.victim"
    for user in ("planner", "gateway", "executor", "responder", "integrator"):
        for subject in (invocation, run_state):
            with pytest.raises(nats.errors.Error):
                await _js(as_role[user]).publish(subject, b"forged", timeout=SHORT)
            await locked.refused(user, "Publish", subject)
    selector = as_role["selector"].jetstream()
    await selector.publish(invocation, b"an invocation", timeout=5)
    await selector.publish(run_state, b"run state", timeout=5)


async def test_a_forged_result_plan_event_or_worker_entry_is_refused(
    locked: LockedBus, as_role: dict[str, NATS]
) -> None:
    """The attack of issue 11: a forged `chorus.result` put "FORGED" into another user's
    answer, a forged `done` event answered a `Chat`. Only executors publish results."""
    result = TaskResult(request_id="victim", task_id=0, task="x").SerializeToString()
    forged = {
        "integrator": [
            subjects.RESULT,
            subjects.PLAN,
            subjects.event("victim"),
            f"$KV.{subjects.WORKER_BUCKET}.fake-worker",
        ],
        "planner": [subjects.RESULT, f"$KV.{subjects.WORKER_BUCKET}.fake-worker"],
        "gateway": [subjects.RESULT, subjects.PLAN, subjects.REPORT],
        "responder": [subjects.RESULT, subjects.PLAN],
        "selector": [subjects.RESULT, subjects.PLAN],
        "executor": [subjects.PLAN, subjects.REPORT, subjects.event("victim")],
    }
    refused_before = REGISTRY.get_sample_value("chorus_bus_refused_total", {"operation": "publish"})
    for user, targets in forged.items():
        for subject in targets:
            with pytest.raises(nats.errors.Error):
                await _js(as_role[user]).publish(subject, result, timeout=SHORT)
            await locked.refused(user, "Publish", subject)
    # Each refusal is counted and logged by the connection that met it (as a service's is).
    refused = REGISTRY.get_sample_value("chorus_bus_refused_total", {"operation": "publish"})
    assert refused == (refused_before or 0) + sum(map(len, forged.values()))
    admin = as_role["admin"].jetstream()
    with pytest.raises(NotFoundError):
        await admin.get_last_msg(subjects.WORK_STREAM, subjects.RESULT)
    await as_role["executor"].jetstream().publish(subjects.RESULT, result, timeout=5)
    assert (await admin.get_last_msg(subjects.WORK_STREAM, subjects.RESULT)).data == result


async def test_the_integrator_sends_requests_and_reads_events_but_not_the_work(
    locked: LockedBus, as_role: dict[str, NATS]
) -> None:
    js = as_role["integrator"].jetstream()
    request = ChatRequest(request_id="mine", messages=[ChatMessage(role="user", content="Hi")])
    await js.publish(subjects.REQUEST, request.SerializeToString(), timeout=5)
    await as_role["planner"].jetstream().publish(subjects.event("mine"), b"event", timeout=5)
    events = await js.subscribe(
        subjects.event("mine"), ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    assert (await events.next_msg(timeout=5)).data == b"event"
    with pytest.raises(nats.errors.Error):  # another's task inputs: no consumer on the work
        await _js(as_role["integrator"]).pull_subscribe(
            f"{subjects.INVOKE_PREFIX}.>", durable="spy", stream=subjects.WORK_STREAM
        )
    # The services' replies (pulled work, key reads) go to inboxes it cannot subscribe to.
    await as_role["integrator"].subscribe("_INBOX_selector.>")
    await locked.refused("integrator", "Subscription", "_INBOX_selector.>")


async def test_a_wrong_password_is_refused(locked: LockedBus) -> None:
    with pytest.raises(nats.errors.Error):
        await nats.connect(
            locked.url, user="executor", password="guess", allow_reconnect=False, connect_timeout=2
        )


def test_service_roles_subscribe_to_their_own_subjects_and_call_no_wildcard_api() -> None:
    roles = local_roles([OWN_LANE])
    for name, role in roles.items():
        assert ">" not in role.subscribe and "$JS.API.>" not in role.publish, name
        assert not any(
            p.startswith(("$JS.API.STREAM.DELETE", "$JS.API.STREAM.PURGE")) for p in role.publish
        )
        if name != "integrator":
            assert all(s.startswith((f"_INBOX_{name}.", "chorus.")) for s in role.subscribe), name
    assert not any(p.startswith("$JS.API.STREAM.UPDATE") for p in roles["executor"].publish)
    executor_reads = [p for p in roles["executor"].publish if ".GET." in p or ".INFO." in p]
    assert all(
        f"OBJ_{subjects.ARTIFACT_BUCKET}" in p
        or "KV_chorus_workers" in p
        or p.startswith("$JS.API.CONSUMER.INFO.CHORUS_WORK.executor-")
        for p in executor_reads
    ), executor_reads


@pytest.mark.parametrize("service", ["planner", "selector", "responder"])
def test_each_durable_a_service_creates_is_in_its_role(service: str) -> None:
    """The durable names in the code and in the role table are the same."""
    text = (SERVICES_DIR / service / "service.py").read_text()
    durables = set(re.findall(r'durable\s*=\s*"([^"]+)"', text))
    prefix = "$JS.API.CONSUMER.MSG.NEXT.CHORUS_WORK."
    in_role = {p.removeprefix(prefix) for p in ROLES[service].publish if p.startswith(prefix)}
    assert durables and durables == in_role


async def test_every_stream_and_bucket_is_bounded_and_full_work_is_refused_not_dropped(
    nats_url: str,
) -> None:
    from services.common.artifacts import ArtifactStore
    from services.gateway.owners import RequestOwners

    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        await bus.ensure_streams(js, max_bytes=64 * 1024)
        await ArtifactStore.open(js)
        await RequestOwners.open(js)
        await open_worker_bucket(js, 10.0, 1)
        streams = await js.streams_info()
        assert len(streams) == 6
        assert all((s.config.max_bytes or -1) > 0 for s in streams), [
            s.config.name for s in streams if not s.config.max_bytes
        ]
        with pytest.raises(nats.js.errors.APIError):
            for n in range(100):  # 100 KB into a 64 KB work stream
                await js.publish(subjects.PLAN, b"x" * 1000, headers={"Nats-Msg-Id": str(n)})
        first = await js.get_msg(subjects.WORK_STREAM, 1)
        assert first.data == b"x" * 1000  # the oldest work is still there
    finally:
        await nc.close()
