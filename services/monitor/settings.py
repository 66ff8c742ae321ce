"""Settings of the monitor service (YIBAO_MONITOR_*)."""

from pydantic_settings import BaseSettings, SettingsConfigDict


class MonitorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="YIBAO_MONITOR_", extra="ignore")

    port: int = 8104
