"""`yibao run` and `yibao demo` as a newcomer uses them: real processes, real ports."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date

import httpx
import pytest

from services import bench, demo
from services.bus.broker import free_port
from services.enroll.domain import with_check_char
from services.identity import headers_for
from services.platform import SERVICES, Platform
from services.settle.auth import SigningAuth
from tests.conftest import BrokerUnderTest
from tests.e2e.stack import claim_body
from tests.helpers import POLL_S

pytestmark = pytest.mark.integration


def on_broker(broker: BrokerUnderTest) -> dict[str, str]:
    """`yibao run` on the test's broker (as on any existing cluster), with the test's topic prefix."""
    return {"YIBAO_KAFKA_BOOTSTRAP": broker.bootstrap, "YIBAO_BROKER": broker.kind,
            "YIBAO_TOPIC_PREFIX": broker.prefix, "YIBAO_LOG_LEVEL": "WARNING"}


@pytest.fixture
def platform(tmp_path, broker: BrokerUnderTest):  # type: ignore[no-untyped-def]
    p = Platform(ports={s: free_port() for s in SERVICES}, var_dir=tmp_path / "var", env=on_broker(broker))
    p.start(timeout=120)
    try:
        yield p
    finally:
        p.stop()


@pytest.mark.embedded_smoke
def test_the_platform_runs_and_the_demo_tells_its_story(platform: Platform, capsys: pytest.CaptureFixture[str]) -> None:
    for s in SERVICES:
        health = httpx.get(platform.url(s) + "/healthz").json()
        assert health["service"] == s and health["ok"] is True, health
        assert all(c["state"] == "running" for c in health["consumers"]), health
    demo.main(ports=platform.ports)
    out = capsys.readouterr().out
    for words in ("psn_no", "REFERRAL", "infcode 0", "hifp_pay", "national 360000", "ALERT R-GENDER",
                  "PRECHECK_REFUSED", "R-CONTRA", "ALERT R-SPLIT-ADM", "出院 8 天后再次入院"):
        assert words in out, out
    assert all(proc.poll() is None for proc in platform.procs.values())


def test_cli_help_lists_the_commands() -> None:
    out = subprocess.run([sys.executable, "-m", "services.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("run", "worker", "demo", "bench", "schemas"):
        assert cmd in out


def test_a_fault_set_on_the_api_reaches_the_relay_process(platform: Platform) -> None:
    """`yibao run` serves national/province hops in another process: faults must reach it too."""
    c = httpx.Client(timeout=60, auth=SigningAuth())
    psn = enrol_and_file(c, platform, "11010519491231002X")
    r = c.put(platform.url("settle") + "/ops/faults", json={"level": "national", "region": "*", "down": True},
              headers=headers_for("operator"))
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
    assert c.delete(platform.url("settle") + "/ops/faults", headers=headers_for("operator")).json() == []


def test_the_settle_api_shows_the_whole_platform_to_an_operator(platform: Platform) -> None:
    """/metrics of the settle API includes the hop workers' (other processes); `yibao ops` works."""
    c = httpx.Client(timeout=60, auth=SigningAuth())
    psn = enrol_and_file(c, platform, with_check_char("11010519500101003"))
    ans = c.post(platform.url("settle") + "/fsi/callService",
                 json=claim_body(psn, "H44010400001", "440100", "360100")).json()
    assert ans["infcode"] == 0, ans
    metrics = httpx.get(platform.url("settle") + "/metrics").text  # as `curl :8103/metrics`, no token
    hops = {ln.split('topic="')[1].split('"')[0] for ln in metrics.splitlines()
            if ln.startswith("yibao_handle_seconds_count") and 'topic="settle.' in ln}
    assert hops >= {"settle.city", "settle.province", "settle.national"}, hops  # handled in the worker process
    assert 'yibao_http_seconds_count{method="POST",route="/fsi/callService"' in metrics
    for args, words in ((["topics"], "settle.city.dlq"), (["dlq", "list"], "no dead letters"),
                        (["faults"], "no faults in force")):
        out = subprocess.run([sys.executable, "-m", "services.cli", "ops", "--url", platform.url("settle"), *args],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and words in out.stdout, (args, out.stdout, out.stderr)


def enrol_and_file(c: httpx.Client, platform: Platform, certno: str) -> str:
    jiangxi = headers_for("province", "360000", "test")
    psn = c.post(platform.url("enroll") + "/persons", json={
        "certno": certno, "psn_name": "钱七", "admdvs": "360100"}, headers=jiangxi).json()["psn_no"]
    c.post(platform.url("enroll") + "/enrolments", json={
        "psn_no": psn, "insuplc_admdvs": "360100", "insutype": "310", "paid_through": "2099-12-31"}, headers=jiangxi)
    for _ in range(400):  # until the filing service has seen the enrolment
        if c.post(platform.url("filing") + "/filings", json={"psn_no": psn, "fil_type": "REFERRAL",
                  "target_admdvs": "440100", "begndate": date.today().isoformat(),
                  "referral_fixmedins_code": "H36010200001"}, headers=jiangxi).status_code == 201:
            break
        time.sleep(POLL_S)
    for _ in range(400):  # until the insured city has seen the filing
        r = c.get(f"{platform.url('settle')}/persons/{psn}/status", headers=jiangxi)
        if r.status_code == 200 and r.json()["filings"]:
            return psn  # type: ignore[no-any-return]
        time.sleep(POLL_S)
    raise AssertionError("the insured city never saw the filing")


def test_one_hop_level_runs_alone_and_restarts(tmp_path, broker: BrokerUnderTest) -> None:  # type: ignore[no-untyped-def]
    """YIBAO_SETTLE_EXTERNAL=city: the city hops live in `yibao worker settle --level city`."""
    p = Platform(ports={s: free_port() for s in SERVICES}, var_dir=tmp_path / "var",
                 env=on_broker(broker) | {"YIBAO_SETTLE_EXTERNAL": "city", "YIBAO_SETTLE_DEADLINE_MS": "40000"})
    p.start(timeout=120)
    env = dict(os.environ, **on_broker(broker), YIBAO_VAR_DIR=str(p.var_dir))
    cmd = [sys.executable, "-m", "services.cli", "worker", "settle", "--level", "city"]
    worker = subprocess.Popen(cmd, env=env)
    try:
        c = httpx.Client(timeout=60, auth=SigningAuth())
        psn = enrol_and_file(c, p, with_check_char("36010219850101123"))
        first = c.post(p.url("settle") + "/fsi/callService",
                       json=claim_body(psn, "H44010400001", "440100", "360100")).json()
        assert first["infcode"] == 0, (first["err_msg"], first["output"])
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0  # a clean stop
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(c.post, p.url("settle") + "/fsi/callService",
                                  json=claim_body(psn, "H44010400001", "440100", "360100"))
            worker = subprocess.Popen(cmd, env=env)  # back up: the claim waited in settle.city
            assert waiting.result().json()["infcode"] == 0
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        p.stop()


def test_the_bench_drives_real_settlements_and_reports_each_interval(platform: Platform) -> None:
    """`yibao bench settle` in small: a measured phase that settles claims, with its progress ticks."""
    people = asyncio.run(bench.enrol_population(platform, 6))
    r = asyncio.run(bench.drive(platform, people, seconds=2.5, concurrency=4, warmup=0.5, tick_s=1.0))
    assert r["errors"] == {}, r["errors"]
    assert r["settled"] > 0 and r["latency_ms"]["p99"] >= r["latency_ms"]["p50"] > 0
    ticks = [x["t_s"] for x in r["intervals"]]
    assert ticks[:2] == [1.0, 2.0] and len(ticks) == 3 and 2.0 < ticks[2] <= 2.5, ticks
    counted = r["intervals"][0]["per_s"] + r["intervals"][1]["per_s"] \
        + r["intervals"][2]["per_s"] * (ticks[2] - 2.0)
    assert counted == pytest.approx(r["settled"], abs=8)  # claims answered after the last tick (≤ 4) are not in it
    assert "city:compute" in " ".join(r["per_hop_work_ms"])
    assert r["load"] == {"kind": "closed loop", "hospitals": 4}


def test_the_bench_offers_claims_at_a_rate_and_times_them_from_their_arrival(platform: Platform) -> None:
    """The open loop: claims arrive at random at `rate`/s whether or not earlier ones were answered."""
    people = asyncio.run(bench.enrol_population(platform, 6))
    r = asyncio.run(bench.drive(platform, people, seconds=3.0, concurrency=32, warmup=0.5, tick_s=1.0, rate=20))
    assert r["errors"] == {}, r["errors"]
    assert r["load"] == {"kind": "open loop", "offered_per_s": 20, "max_in_flight": 32}
    assert 25 <= r["settled"] <= 100, r["settled"]  # Poisson arrivals: 60 expected in 3 s
    assert r["latency_ms"]["p50"] > 0 and r["waited_to_be_sent_ms"]["count"] <= r["settled"]


def test_a_worker_killed_under_load_is_restarted_and_its_claims_complete(tmp_path, broker: BrokerUnderTest) -> None:  # type: ignore[no-untyped-def]
    """`yibao run` supervises its processes: kill -9 the settle worker while claims are in flight."""
    p = Platform(ports={s: free_port() for s in SERVICES}, var_dir=tmp_path / "var",
                 env=on_broker(broker) | {"YIBAO_SETTLE_DEADLINE_MS": "60000", "YIBAO_SESSION_TIMEOUT_MS": "3000",
                                          "YIBAO_HEARTBEAT_INTERVAL_MS": "500"})
    p.start(timeout=120)
    try:
        c = httpx.Client(timeout=90, auth=SigningAuth())
        psn = enrol_and_file(c, p, with_check_char("36010219800101125"))
        url = p.url("settle") + "/fsi/callService"
        assert c.post(url, json=claim_body(psn, "H44010400001", "440100", "360100")).json()["infcode"] == 0
        with ThreadPoolExecutor(6) as pool:
            waiting = [pool.submit(c.post, url, json=claim_body(psn, "H44010400001", "440100", "360100"))
                       for _ in range(12)]
            p.procs["settle-worker-1"].kill()
            answers = [f.result().json() for f in waiting]
        assert [a["infcode"] for a in answers] == [0] * 12, [a["err_msg"] for a in answers]
        assert p.restarts == {"settle-worker-1": 1}
        assert p.procs["settle-worker-1"].poll() is None
    finally:
        p.stop()
