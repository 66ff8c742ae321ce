"""Settings of the enroll service (YIBAO_ENROLL_*)."""

from pydantic_settings import BaseSettings, SettingsConfigDict


class EnrollSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="YIBAO_ENROLL_", extra="ignore")

    port: int = 8101
