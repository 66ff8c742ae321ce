"""How many partitions each topic gets: the registry's counts, or a deployment's."""

from __future__ import annotations

import pytest

from schemas.topics import TOPICS, all_topic_names
from services.platform import topic_partitions


def test_a_deployment_count_replaces_every_count_above_one() -> None:
    registry, two = dict(all_topic_names()), dict(all_topic_names(2))
    assert registry["settle.city"] == TOPICS["settle.city"].partitions > 1
    assert two["settle.city"] == two["settle.city.retry"] == two["settle.city.dlq"] == 2
    assert registry["ops.faults"] == two["ops.faults"] == 1  # single-partition by design stays so
    assert registry.keys() == two.keys()


@pytest.mark.parametrize(("env", "embedded", "expected"), [
    ({}, True, 1),  # one settle worker: one partition each
    ({"YIBAO_SETTLE_WORKERS": "3"}, True, 3),
    ({}, False, None),  # a cluster: the registry's counts
    ({"YIBAO_PARTITIONS": "6"}, False, 6),
    ({"YIBAO_PARTITIONS": "2", "YIBAO_SETTLE_WORKERS": "3"}, True, 2),
])
def test_partitions_per_topic_by_deployment(env: dict[str, str], embedded: bool, expected: int | None) -> None:
    assert topic_partitions(env, embedded) == expected


@pytest.mark.parametrize("bad", ["0", "four", "-1"])
def test_a_bad_partition_count_says_what_to_give(bad: str) -> None:
    with pytest.raises(SystemExit, match="whole number of partitions"):
        topic_partitions({"YIBAO_PARTITIONS": bad}, True)
