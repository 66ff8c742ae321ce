"""Settings of the filing service (YIBAO_FILING_*)."""

from pydantic_settings import BaseSettings, SettingsConfigDict


class FilingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="YIBAO_FILING_", extra="ignore")

    port: int = 8102
