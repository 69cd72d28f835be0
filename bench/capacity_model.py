"""The capacity model: from measured per-request costs to replicas and NATS sizing at a target
load. Pure arithmetic over what `bench/capacity.py` measures; no I/O.

A request's costs are linear in its number of tasks (`Cost`: fixed + per task), fitted from
two chain lengths measured on the same cluster. Services are Python processes: one replica is
one core at most, so a service needs `rate * CPU-s per request / busy` replicas. A stream or
KV bucket has one leader however many NATS servers there are: its messages/s are bound by one
server's core, and only partitioning the stream lifts that; those are the ceilings that adding
replicas does not move, and the lowest of them is the limit that comes first.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

SERVICES = ("gateway", "planner", "selector", "responder", "executor")


@dataclass(frozen=True)
class Cost:
    """A per-request figure that grows with the request's tasks."""

    fixed: float
    per_task: float

    def at(self, tasks: float) -> float:
        return self.fixed + self.per_task * tasks

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.fixed + other.fixed, self.per_task + other.per_task)

    @staticmethod
    def fit(tasks_a: float, value_a: float, tasks_b: float, value_b: float) -> Cost:
        """The line through two measurements (chains of `tasks_a` and `tasks_b` tasks); a
        slope that noise made negative counts as none."""
        per_task = max(0.0, (value_b - value_a) / (tasks_b - tasks_a))
        return Cost(max(0.0, value_b - per_task * tasks_b), per_task)


@dataclass(frozen=True)
class Measured:
    """Per-request costs on the bus, each a `Cost` over the request's tasks."""

    cpu_ms: Mapping[str, Cost]  # per service (all its processes) and "nats" (the server)
    stream_messages: Mapping[str, Cost]  # messages stored per stream (KV and object buckets too)
    server_bytes: Cost  # bytes into and out of the server
    # Server CPU-us per message one stream stores (publish with a dedup id, or a KV write),
    # probed on a server of its own: a stream stores one message at a time, so one core over
    # this is what a stream leader takes.
    stream_write_us: float
    kv_write_us: float

    def leader_messages_per_s(self, stream: str) -> float:
        """Messages/s one leader of `stream` takes on one core, at R1."""
        us = self.kv_write_us if stream.startswith("KV_") else self.stream_write_us
        return 1e6 / us


@dataclass(frozen=True)
class TaskProfile:
    """What one task of a type costs on its executor: seconds of a GPU (or a CPU core) per
    task, at the batch the executor runs. An assumption, stated where it is made."""

    device: str  # "gpu" or "cpu"
    seconds: float


@dataclass(frozen=True)
class Assumptions:
    """What the model takes as given rather than measured; every figure is a knob."""

    busy: float = 0.7  # target utilisation of a core, a GPU or a stream leader
    # Messages/s one stream leader takes (R1); None: one core over the probed CPU per write.
    stream_messages_per_s: float | None = None
    replication: int = 3  # stream replicas (CHORUS_STREAM_REPLICAS in production)
    # Server CPU of an R3 message against R1: the leader also sends to two followers and waits
    # for one ack (x1.5); each follower appends it (x0.5 each). Not measured here.
    leader_factor: float = 1.5
    follower_factor: float = 0.5
    nats_node_cores: int = 8
    nats_node_bytes_per_s: float = 1.25e9  # 10 Gbit/s NIC


@dataclass(frozen=True)
class StreamLoad:
    messages_per_s: float
    ceiling_rps: float  # requests/s at which its one leader is `busy`
    partitions: int  # streams it must be split into at the target


@dataclass(frozen=True)
class Capacity:
    rate: float
    tasks_per_request: float
    replicas: dict[str, int]
    executor_devices: dict[str, int]  # executor replicas by device ("gpu", "cpu") for the tasks
    executor_by_task: dict[str, float]  # devices busy per task type at the target (before busy)
    nats_cores: float
    nats_nodes: int
    server_bytes_per_s: float
    streams: dict[str, StreamLoad]
    first_limit: str  # the ceiling that adding replicas does not lift, lowest first
    first_limit_rps: float
    service_rps_per_replica: dict[str, float] = field(default_factory=dict)


# TaskBench's multimedia tools as Chorus would run them: effective seconds of one device per
# task. Assumptions, not measurements (bench/results/gpu.json has only tiny random models):
# a current data-centre GPU (A100/H100 class) with the HuggingGPT catalog's usual model for
# the type, fp16, at the batch an executor forms under load; CPU types are media operations
# (ffmpeg-like) or downloads and searches, on one core.
_GPU = {
    "Text-to-Image": 1.5,  # Stable Diffusion 1.5, 512 px, 25 steps
    "Image Style Transfer": 1.5,  # img2img / ControlNet, 25 steps
    "Audio-to-Image": 1.5,  # a caption then Stable Diffusion
    "Text-to-Video": 10.0,  # text-to-video-ms-1.7b, 16 frames
    "Image-to-Video": 10.0,
    "Text-to-Audio": 0.5,  # SpeechT5 / MMS TTS, one sentence
    "Voice Changer": 0.5,
    "Audio-to-Text": 0.5,  # Whisper small, a 30 s clip
    "Video-to-Text": 1.0,  # captions of sampled frames
    "Image-to-Text": 0.1,  # BLIP captioning
    "Image Colorizer": 0.2,
    "Audio Noise Reduction": 0.2,
    "Text Sentiment Analysis": 0.005,  # a BERT classifier, batched
    **dict.fromkeys(  # seq2seq or a small instruction model, ~100 new tokens
        [
            "Text Summarizer",
            "Text Translator",
            "Text Grammar Checker",
            "Text Simplifier",
            "Text Expander",
            "Keyword Extractor",
            "Text Paraphraser",
            "Article Spinner",
            "Topic Generator",
        ],
        0.3,
    ),
}
_CPU = {
    **dict.fromkeys(
        [
            "Image Downloader",
            "Video Downloader",
            "Audio Downloader",
            "Text Downloader",
            "Text Search",
            "Image Search",
            "Image Search (by Image)",
            "URL Extractor",
            "Video Search",
        ],
        0.05,  # mostly waiting on the network: CPU of a fetch and a decode
    ),
    **dict.fromkeys(["Audio Effects", "Audio Splicer", "Image Stitcher", "Video-to-Image"], 0.2),
    **dict.fromkeys(
        [
            "Video-to-Audio",
            "Video Stabilizer",
            "Video Speed Changer",
            "Video Synchronization",
            "Video Voiceover",
        ],
        2.0,  # an ffmpeg pass over a short clip
    ),
}
TASKBENCH_PROFILES = {
    **{t: TaskProfile("gpu", s) for t, s in _GPU.items()},
    **{t: TaskProfile("cpu", s) for t, s in _CPU.items()},
}


def task_mix(plans: Iterable[Iterable[str]]) -> dict[str, float]:
    """Tasks of each type per request, over plans given as their task types."""
    counts: Counter[str] = Counter()
    requests = 0
    for tasks in plans:
        requests += 1
        counts.update(tasks)
    return {t: n / requests for t, n in counts.most_common()} if requests else {}


def plan_capacity(
    rate: float,
    mix: Mapping[str, float],
    measured: Measured,
    profiles: Mapping[str, TaskProfile],
    assume: Assumptions = Assumptions(),
) -> Capacity:
    """Replicas, executors and NATS sizing for `rate` requests/s of the task `mix`."""
    tasks = sum(mix.values())
    replicas = {
        s: _ceil(rate * measured.cpu_ms[s].at(tasks) / 1000 / assume.busy)
        for s in SERVICES
        if s in measured.cpu_ms
    }
    by_task = {
        t: rate * per_request * profiles[t].seconds
        for t, per_request in mix.items()
        if t in profiles
    }
    devices: dict[str, int] = {}
    for device in sorted({p.device for p in profiles.values()}):
        busy = sum(v for t, v in by_task.items() if profiles[t].device == device)
        devices[device] = _ceil(busy / assume.busy)
    r3 = assume.leader_factor + (assume.replication - 1) * assume.follower_factor
    nats_cores = rate * measured.cpu_ms["nats"].at(tasks) / 1000 * r3
    server_bytes = rate * measured.server_bytes.at(tasks) * assume.replication
    nodes = max(
        assume.replication,
        _ceil(nats_cores / (assume.nats_node_cores * assume.busy)),
        _ceil(server_bytes / (assume.nats_node_bytes_per_s * assume.busy)),
    )
    streams = {}
    for name, cost in measured.stream_messages.items():
        if not (per_request := cost.at(tasks)):
            continue  # a stream requests do not write to (dead letters)
        leader = assume.stream_messages_per_s or measured.leader_messages_per_s(name)
        ceiling = leader * assume.busy / assume.leader_factor / per_request
        streams[name] = StreamLoad(rate * per_request, ceiling, _ceil(rate / ceiling))
    first = min(streams, key=lambda n: streams[n].ceiling_rps)
    return Capacity(
        rate=rate,
        tasks_per_request=tasks,
        replicas=replicas,
        executor_devices=devices,
        executor_by_task=by_task,
        nats_cores=nats_cores,
        nats_nodes=nodes + (nodes % 2 == 0),  # an odd count keeps a quorum
        server_bytes_per_s=server_bytes,
        streams=streams,
        first_limit=first,
        first_limit_rps=streams[first].ceiling_rps,
        service_rps_per_replica={
            s: 1000 * assume.busy / measured.cpu_ms[s].at(tasks) for s in replicas
        },
    )


def predicted_rps(cpu_ms: Mapping[str, float], replicas: Mapping[str, int], cores: float) -> float:
    """Requests/s one machine of `cores` cores can take: the lower of all processes sharing
    its cores, and of each single-threaded service (those in `replicas`) at one core per
    process. `cpu_ms` holds every process's CPU per request, the load generator's included."""
    machine = cores * 1000 / sum(cpu_ms.values())
    per_service = [n * 1000 / cpu_ms[s] for s, n in replicas.items() if cpu_ms.get(s)]
    return min([machine, *per_service])


def _ceil(x: float) -> int:
    return max(1, math.ceil(x - 1e-9))
