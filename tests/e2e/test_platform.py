"""`yibao run` and `yibao demo` as a newcomer uses them: real processes, real ports."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from services import demo
from services.bus.broker import free_port
from services.platform import SERVICES, Platform
from tests.e2e.stack import claim_body
from tests.helpers import POLL_S

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


def test_a_fault_set_on_the_api_reaches_the_relay_process(platform: Platform) -> None:
    """`yibao run` serves national/province hops in another process: faults must reach it too."""
    c = httpx.Client(timeout=60)
    psn = c.post(platform.url("enroll") + "/persons", json={
        "certno": "11010519491231002X", "psn_name": "赵六", "admdvs": "360100"}).json()["psn_no"]
    c.post(platform.url("enroll") + "/enrolments", json={
        "psn_no": psn, "insuplc_admdvs": "360100", "insutype": "310", "paid_through": "2099-12-31"})
    for _ in range(400):  # until the filing service has seen the enrolment
        if c.post(platform.url("filing") + "/filings", json={"psn_no": psn, "fil_type": "REFERRAL",
                  "target_admdvs": "440100", "begndate": "2026-01-01"}).status_code == 201:
            break
        time.sleep(POLL_S)
    r = c.put(platform.url("settle") + "/ops/faults", json={"level": "national", "region": "*", "down": True})
    assert r.status_code == 200
    end = time.monotonic() + 30
    while True:  # the change reaches the relay process asynchronously (within about a second)
        body = claim_body(psn, "H44010400001", "440100", "360100")
        ans = c.post(platform.url("settle") + "/fsi/callService", json=body).json()
        if ans["infcode"] == -1 and ans["output"]["err_code"] in ("HOP_DOWN", "DEADLINE"):
            break
        assert time.monotonic() < end, ans
        time.sleep(POLL_S)
    assert "national" in ans["err_msg"]
    assert c.delete(platform.url("settle") + "/ops/faults").json() == []
