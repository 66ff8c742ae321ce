"""Settings of the monitor service (YIBAO_MONITOR_*); the rule catalogue's path is common
(YIBAO_RULES_FILE), since the settle service's precheck reads it too."""

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class MonitorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="YIBAO_MONITOR_", extra="ignore")

    port: int = 8104
    # the peer-outlier rule's judgement of the items billed since the last one (0: never)
    outlier_interval_s: float = 5.0
    # the monitor judges claims after they are settled (事后), off their path: its process yields
    # the CPU to the settlement path's when both want it (a Unix nice value, 0-19; 0: an equal share)
    nice: int = Field(5, ge=0, le=19)
