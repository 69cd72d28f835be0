"""The capacity model's arithmetic (bench/capacity_model.py), on figures made up here."""

from __future__ import annotations

import pytest

from bench.capacity_model import (
    SERVICES,
    TASKBENCH_PROFILES,
    Assumptions,
    Cost,
    Measured,
    TaskProfile,
    plan_capacity,
    predicted_rps,
    task_mix,
)


def _measured(**overrides: float) -> Measured:
    figures = {"stream_write_us": 10.0, "kv_write_us": 20.0} | overrides
    return Measured(
        cpu_ms={**{s: Cost(2.0, 1.0) for s in SERVICES}, "nats": Cost(1.0, 1.0)},
        stream_messages={
            "CHORUS_WORK": Cost(3.0, 2.0),
            "KV_chorus_runs": Cost(2.0, 1.0),
            "CHORUS_DEADLETTER": Cost(0.0, 0.0),
        },
        server_bytes=Cost(10_000.0, 1_000.0),
        **figures,
    )


def test_cost_fit_splits_two_chain_lengths_into_fixed_and_per_task() -> None:
    cost = Cost.fit(1, 5.0, 3, 9.0)
    assert cost == Cost(3.0, 2.0)
    assert cost.at(2.5) == 8.0
    assert cost + Cost(1.0, 0.5) == Cost(4.0, 2.5)


def test_cost_fit_reads_a_longer_chain_that_cost_less_as_no_cost_per_task() -> None:
    assert Cost.fit(1, 5.0, 3, 4.0) == Cost(4.0, 0.0)


def test_task_mix_counts_tasks_of_each_type_per_request() -> None:
    mix = task_mix([["Text-to-Image", "Image-to-Text"], ["Text-to-Image"], []])
    assert mix == {"Text-to-Image": 2 / 3, "Image-to-Text": 1 / 3}
    assert task_mix([]) == {}


def test_replicas_are_rate_times_cpu_over_the_busy_share_of_a_core() -> None:
    mix = {"a": 2.0}  # 2 tasks a request: 2 + 1 * 2 = 4 ms of each service
    capacity = plan_capacity(1000, mix, _measured(), {"a": TaskProfile("gpu", 0.5)})
    assert capacity.tasks_per_request == 2.0
    # 1000 req/s x 4 ms = 4 cores of work, at 70 % busy: 6 replicas
    assert capacity.replicas == dict.fromkeys(SERVICES, 6)
    assert capacity.service_rps_per_replica["selector"] == pytest.approx(175.0)


def test_executors_follow_the_mix_and_the_seconds_per_task_of_each_device() -> None:
    profiles = {"gen": TaskProfile("gpu", 2.0), "cap": TaskProfile("gpu", 0.1)}
    profiles["cut"] = TaskProfile("cpu", 0.05)
    mix = {"gen": 0.5, "cap": 1.0, "cut": 2.0, "unknown": 1.0}
    capacity = plan_capacity(100, mix, _measured(), profiles)
    # GPU: 100 x (0.5 x 2 + 1 x 0.1) = 110 GPU-s/s, at 70 %: 158; CPU: 100 x 2 x 0.05 = 10
    assert capacity.executor_by_task == pytest.approx({"gen": 100.0, "cap": 10.0, "cut": 10.0})
    assert capacity.executor_devices == {"cpu": 15, "gpu": 158}


def test_the_stream_with_the_most_messages_per_leader_capacity_is_the_first_limit() -> None:
    capacity = plan_capacity(10_000, {"a": 3.0}, _measured(), {}, Assumptions())
    assert set(capacity.streams) == {"CHORUS_WORK", "KV_chorus_runs"}  # none to dead letters
    work, runs = capacity.streams["CHORUS_WORK"], capacity.streams["KV_chorus_runs"]
    # one leader: 1e6 / 10 us = 100k msg/s at R1; x 0.7 busy / 1.5 for R3: 46.7k msg/s;
    # CHORUS_WORK holds 3 + 2 x 3 = 9 messages a request: 5,185 req/s
    assert work.messages_per_s == 90_000
    assert work.ceiling_rps == pytest.approx(1e5 * 0.7 / 1.5 / 9)
    assert work.partitions == 2
    # KV writes cost twice as much (20 us) and a request makes 5: 4,667 req/s, lower
    assert runs.ceiling_rps == pytest.approx(5e4 * 0.7 / 1.5 / 5)
    assert capacity.first_limit == "KV_chorus_runs"
    assert capacity.first_limit_rps == runs.ceiling_rps
    assert runs.partitions == 3


def test_a_stated_stream_limit_replaces_the_probed_one() -> None:
    capacity = plan_capacity(
        1000, {"a": 1.0}, _measured(), {}, Assumptions(stream_messages_per_s=15_000)
    )
    assert capacity.streams["CHORUS_WORK"].ceiling_rps == pytest.approx(15_000 * 0.7 / 1.5 / 5)


def test_nats_nodes_cover_cpu_with_replication_and_stay_an_odd_quorum() -> None:
    # 3 ms of server CPU a request (1 + 1 x 2); R3 costs 1.5 + 2 x 0.5 = 2.5 times R1
    small = plan_capacity(1000, {"a": 2.0}, _measured(), {})
    assert small.nats_cores == pytest.approx(7.5)
    assert small.nats_nodes == 3
    big = plan_capacity(10_000, {"a": 2.0}, _measured(), {})
    assert big.nats_cores == pytest.approx(75.0)
    assert big.nats_nodes == 15  # 75 / (8 cores x 0.7) = 13.4: 14, made odd
    assert big.server_bytes_per_s == 10_000 * 12_000 * 3


def test_one_machine_is_bound_by_its_cores_or_by_a_single_process_service() -> None:
    cpu = {"planner": 10.0, "selector": 5.0, "nats": 5.0}
    # 2 cores / 20 ms = 100 req/s; the planner alone at one core: 100 req/s too
    assert predicted_rps(cpu, {"planner": 1, "selector": 1}, cores=2) == 100.0
    # 8 cores: 400 req/s for the machine, but one planner process stops at 100
    assert predicted_rps(cpu, {"planner": 1, "selector": 1}, cores=8) == 100.0
    assert predicted_rps(cpu, {"planner": 2, "selector": 1}, cores=8) == 200.0


def test_every_taskbench_multimedia_tool_has_a_profile() -> None:
    tools = {  # tool_desc.json of TaskBench's multimedia domain (40 tools)
        "Image Downloader", "Video Downloader", "Audio Downloader", "Text Downloader",
        "Text Search", "Image Search", "Image Search (by Image)", "URL Extractor",
        "Video Search", "Text-to-Image", "Text-to-Video", "Text-to-Audio", "Image-to-Text",
        "Audio-to-Text", "Video-to-Text", "Audio Noise Reduction", "Audio Effects",
        "Audio Splicer", "Voice Changer", "Text Summarizer", "Text Translator",
        "Text Sentiment Analysis", "Text Grammar Checker", "Text Simplifier", "Text Expander",
        "Keyword Extractor", "Text Paraphraser", "Article Spinner", "Topic Generator",
        "Audio-to-Image", "Image-to-Video", "Video-to-Audio", "Video-to-Image",
        "Image Stitcher", "Image Colorizer", "Image Style Transfer", "Video Stabilizer",
        "Video Speed Changer", "Video Synchronization", "Video Voiceover",
    }  # fmt: skip
    assert set(TASKBENCH_PROFILES) == tools
    assert {p.device for p in TASKBENCH_PROFILES.values()} == {"cpu", "gpu"}
