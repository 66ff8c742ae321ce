"""The producer's partitioner keeps each key's hash and still puts every key where Kafka's
default partitioning (the Java client's murmur2) puts it."""

from aiokafka.partitioner import DefaultPartitioner

from services.bus.client import KeyPartitioner


def test_every_key_lands_where_the_default_partitioner_puts_it() -> None:
    ours, default = KeyPartitioner(keep=50), DefaultPartitioner()
    keys = [f"{region}".encode() for region in ("440100", "440000", "360100", "110000")] + \
           [f"H44010{i:05d}".encode() for i in range(40)] + [f"P{i:020d}".encode() for i in range(100)]
    for n in (1, 2, 3, 4, 12):
        parts = list(range(n))
        for _ in range(2):  # the second time from the kept hashes (and past the bound, hashed again)
            assert [ours(k, parts, parts) for k in keys] == [default(k, parts, parts) for k in keys]
    assert len(ours.hashes) <= 50


def test_a_record_without_a_key_goes_to_an_available_partition() -> None:
    ours = KeyPartitioner()
    assert {ours(None, [0, 1, 2, 3], [2]) for _ in range(20)} == {2}
    assert ours(None, [0, 1], []) in (0, 1)
