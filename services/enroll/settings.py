"""Settings of the enroll service (YIBAO_ENROLL_*)."""

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from services.enroll.domain import RULES_FILE


class EnrollSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="YIBAO_ENROLL_", extra="ignore")

    port: int = 8101
    rules_file: Path = RULES_FILE  # enrolment rules per pooling region
    reminder_interval_s: float = 3600.0  # 断保提醒 scan; 0 turns the timer off

