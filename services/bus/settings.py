"""Settings of the Kafka runtime, read once from YIBAO_* environment variables.

`broker` is the one capability switch: `kafka` (Apache Kafka, the default) or `embedded` (the
Tansu fallback, reference/broker-notes.md). Tuning that only the embedded broker needs follows it
unless set explicitly.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Consumer tuning per broker kind, used for every field not set explicitly.
# Embedded: new data does not wake a waiting fetch, so the wait is the latency of every leg, and
# every group join waits session/2 (broker-notes items 2 and 3). Idle consumers there cost broker
# CPU per request: retry, bulk and broadcast readers ask every 250 ms.
# Kafka: an append completes a waiting fetch, so a long wait costs no latency and keeps idle
# consumers quiet; sessions at Kafka's usual 10 s (a broker's floor is 6 s unless lowered).
BROKER_TUNING: dict[str, dict[str, int]] = {
    "embedded": {"fetch_max_wait_ms": 10, "slow_fetch_max_wait_ms": 250,
                 "session_timeout_ms": 2000, "heartbeat_interval_ms": 500},
    "kafka": {"fetch_max_wait_ms": 500, "slow_fetch_max_wait_ms": 500,
              "session_timeout_ms": 10_000, "heartbeat_interval_ms": 3000},
}


class BusSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="YIBAO_", extra="ignore")

    kafka_bootstrap: str | None = None
    broker: Literal["kafka", "embedded"] = "kafka"
    # Prepended to every topic and consumer group: several platforms (or test cases) on one cluster.
    topic_prefix: str = ""
    # Partitions of every registry topic that has more than one; unset: the registry's counts.
    # `yibao run` on the embedded broker sets it to the number of settle workers (default 1): each
    # consumer group then has one process, and every partition is named in every fetch it makes.
    partitions: int | None = Field(None, ge=1)
    # Copies of each topic created from the registry; unset: min(3, brokers in the cluster).
    replication_factor: int | None = Field(None, ge=1)
    fetch_max_wait_ms: int = 0  # 0 here: the broker's tuning (BROKER_TUNING)
    slow_fetch_max_wait_ms: int = 0
    fetch_min_bytes: int = 1
    session_timeout_ms: int = 0
    heartbeat_interval_ms: int = 0
    max_poll_records: int = 500
    # A worker marked slow (bulk intake, monitoring) fetches when this much has piled up or its
    # longer wait ends: a handful of big batches a second instead of a fetch per record or two.
    bulk_fetch_min_bytes: int = 256 * 1024
    # No linger: aiokafka keeps one produce request in flight per broker, and what is sent meanwhile
    # waits for it and goes out as one batch, so batches still grow with the load (docs/performance.md).
    linger_ms: int = 0
    max_batch_size: int = 256 * 1024
    retry_attempts: int = 5
    retry_backoff_ms: int = 200
    retry_backoff_max_ms: int = 5000
    outbox_republish_window_s: int = 600
    epoch_check_s: float = 2.0

    @model_validator(mode="after")
    def _tune_for_broker(self) -> BusSettings:
        for name, value in BROKER_TUNING[self.broker].items():
            if not getattr(self, name):
                setattr(self, name, value)
        return self

    @property
    def embedded(self) -> bool:
        """The embedded broker's workarounds apply (broker-notes.md); off on Apache Kafka."""
        return self.broker == "embedded"

    def topic(self, name: str) -> str:
        """The name on the broker of a registry (logical) topic."""
        return self.topic_prefix + name

    def logical(self, physical: str) -> str:
        return physical.removeprefix(self.topic_prefix)
