"""Settings of the monitor service (YIBAO_MONITOR_*); the rule catalogue's path is common
(YIBAO_RULES_FILE), since the settle service's precheck reads it too."""

from pydantic_settings import BaseSettings, SettingsConfigDict


class MonitorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="YIBAO_MONITOR_", extra="ignore")

    port: int = 8104
