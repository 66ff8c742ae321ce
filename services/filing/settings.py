"""Settings of the filing service (YIBAO_FILING_*); the filing rules file is YIBAO_FILING_RULES."""

from pydantic_settings import BaseSettings, SettingsConfigDict


class FilingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="YIBAO_FILING_", extra="ignore")

    port: int = 8102
    expiry_interval_s: float = 60.0  # how often temporary filings past their end date are expired; 0: off
