"""Replica counts `LocalCluster` refuses before starting anything: one front door a machine."""

from __future__ import annotations

import pytest

from services.cli.cluster import ClusterError, LocalCluster, check_replicas


@pytest.mark.parametrize(
    ("replicas", "reason"),
    [
        ({"planner": 2}, "run the gateway apart"),
        ({"gateway": 2, "planner": 2}, "one gateway per machine"),
        ({"selector": 0}, "at least one is needed"),
        ({"selectors": 2}, "no service 'selectors'"),
    ],
)
def test_counts_that_would_bind_one_address_twice_are_refused(
    replicas: dict[str, int], reason: str
) -> None:
    with pytest.raises(ClusterError, match=reason):
        LocalCluster(nats_url="nats://127.0.0.1:1", replicas=replicas).start()


@pytest.mark.parametrize(
    "replicas", [{}, {"selector": 3, "executor": 2}, {"gateway": 1, "planner": 2}, {"gateway": 0}]
)
def test_counts_one_machine_can_run_pass(replicas: dict[str, int]) -> None:
    check_replicas(replicas)
