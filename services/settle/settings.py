"""Settings of the settle service (YIBAO_SETTLE_*)."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from services.settle.clearing import ADVANCE_FILE


class SettleSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="YIBAO_SETTLE_", extra="ignore")

    port: int = 8103
    levels: str = "city,province,national"  # the hop levels this process serves
    deadline_ms: int = 10_000  # how long a hospital request may take end to end (秒结)
    reply_grace_ms: int = 1_000  # extra wait for an answer decided just before the deadline
    faults: str = ""  # e.g. "city:360100=down;province:*=slow:50"
    advance_funds_file: Path = ADVANCE_FILE  # 预付金 per province pair and warning thresholds
    # 1101 by psn_no alone and 5206 need a credential read at this hospital within this time (or an open encounter)
    person_query_window_h: int = 24
    monitor_url: str = "http://127.0.0.1:8104"  # the console's alerts page reads them there

    @property
    def level_list(self) -> list[str]:
        return [x.strip() for x in self.levels.split(",") if x.strip()]
