"""Process-wide settings shared by every service: where state lives, how logs look."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="YIBAO_", extra="ignore")

    var_dir: Path = Path("var")
    host: str = "127.0.0.1"
    log_level: str = "INFO"
    cert_digest_key: str = "yibao-dev-only-change-me"  # shared by enroll and settle (services/credentials.py)
    auth_key: str = "yibao-dev-only-change-me"  # signs callers' bearer tokens (services/identity.py)
    otel: str = ""  # tracing: "console", "otlp", or off
    database_url: str | None = None  # every service's database, unless its own is set below
    enroll_database_url: str | None = None
    filing_database_url: str | None = None
    settle_database_url: str | None = None
    monitor_database_url: str | None = None
    rules_file: Path = Path(__file__).parent / "monitor" / "refdata" / "rules.json"  # 规则库: settle's precheck, monitor

    def database_of(self, service: str) -> str | None:
        """YIBAO_<SERVICE>_DATABASE_URL, else YIBAO_DATABASE_URL; None for a SQLite file under var/."""
        own: str | None = getattr(self, f"{service}_database_url", None)
        return own or self.database_url
