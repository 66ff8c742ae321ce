"""`yibao run` and `yibao demo` as a newcomer uses them: real processes, real ports."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from services import demo
from services.bus.broker import free_port
from services.platform import SERVICES, Platform

pytestmark = pytest.mark.integration


@pytest.fixture
def platform(tmp_path):  # type: ignore[no-untyped-def]
    p = Platform(ports={s: free_port() for s in SERVICES}, broker_port=free_port(), var_dir=tmp_path / "var",
                 env={"YIBAO_LOG_LEVEL": "WARNING"})
    p.start(timeout=120)
    try:
        yield p
    finally:
        p.stop()


def test_the_platform_runs_and_the_demo_tells_its_story(platform: Platform, capsys: pytest.CaptureFixture[str]) -> None:
    for s in SERVICES:
        assert httpx.get(platform.url(s) + "/healthz").json() == {"service": s, "ok": True}
    demo.main(ports=platform.ports)
    out = capsys.readouterr().out
    for words in ("psn_no", "REFERRAL", "infcode 0", "hifp_pay", "national 360000", "ALERT R-GENDER"):
        assert words in out, out
    assert all(proc.poll() is None for proc in platform.procs.values())


def test_cli_help_lists_the_commands() -> None:
    out = subprocess.run([sys.executable, "-m", "services.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("run", "worker", "demo", "bench", "schemas"):
        assert cmd in out
