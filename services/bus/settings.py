"""Settings of the Kafka runtime, read once from YIBAO_* environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class BusSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="YIBAO_", extra="ignore")

    kafka_bootstrap: str | None = None  # unset: start the embedded broker
    embedded_port: int = 9092
    # Partitions of every registry topic that has more than one; unset: the registry's counts.
    # `yibao run` on the embedded broker sets it to the number of settle workers (default 1): each
    # consumer group then has one process, and every partition is named in every fetch it makes.
    partitions: int | None = Field(None, ge=1)
    # Consumer tuning for the embedded broker (reference/broker-notes.md items 2 and 3):
    # new data does not wake a waiting fetch, and every group join waits session/2.
    # The hop workers and the API's reply listener. 5 ms measured no better with one settle worker
    # (~175/s either way, 4 runs each) and idle consumers then ask the broker 200 times a second.
    fetch_max_wait_ms: int = 10
    # Workers marked slow (bulk intake, monitoring), retry consumers and broadcast feeds: an idle
    # consumer asks the broker this often, and the broker charges per request (idle platform:
    # broker 24 % of a core at 100 ms, 18 % at 500 ms; 500 ms no faster than 250 ms under load,
    # and a retry or a fault change would wait longer to be read).
    slow_fetch_max_wait_ms: int = 250
    fetch_min_bytes: int = 1
    session_timeout_ms: int = 2000
    heartbeat_interval_ms: int = 500
    max_poll_records: int = 500
    # A worker marked slow (bulk intake, monitoring) fetches when this much has piled up or its
    # longer wait ends: a handful of big batches a second instead of a fetch per record or two.
    bulk_fetch_min_bytes: int = 256 * 1024
    # No linger: aiokafka keeps one produce request in flight per broker, and what is sent meanwhile
    # waits for it and goes out as one batch, so batches still grow with the load. Measured on the
    # settlement bench (one settle worker, one partition per topic, 2026-12-02): 0 ms against 8 ms
    # better in 10 of 13 alternate pairs (mean ~216 against ~199/s, p99 down ~50 ms), the broker
    # 3-4 % of a core busier; 2 ms no different from 0. (8 ms had paid with two city workers and a
    # relay worker, when the broker's CPU was the limit: linger 2 → 8 ms, ~170 → ~195/s.)
    linger_ms: int = 0
    max_batch_size: int = 256 * 1024
    retry_attempts: int = 5
    retry_backoff_ms: int = 200
    retry_backoff_max_ms: int = 5000
    outbox_republish_window_s: int = 600
    epoch_check_s: float = 2.0

    @property
    def embedded(self) -> bool:
        return not self.kafka_bootstrap
