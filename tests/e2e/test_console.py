"""The operator's console in a real browser (Debian's Chromium, driven by Playwright): sign in,
see the dead letters of a city that was down, redrive them with the button, trace a claim.
Screenshots are kept in var/test-artifacts/console/."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.bus.broker import free_port
from services.http import serve
from services.identity import issue_token
from tests.e2e.stack import DEFAULT_LINES, FEMALE_ONLY_LINE, GZ_HOSPITAL, Stack, ledger_rows
from tests.helpers import wait_until

ARTIFACTS = Path(os.environ.get("YIBAO_TEST_ARTIFACTS", "var/test-artifacts")) / "console"


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    if os.environ.get("YIBAO_REQUIRE_BROWSER") == "1":
        pytest.fail("Chromium required (YIBAO_REQUIRE_BROWSER=1) but not installed: bash deploy/browser/setup.sh")
    pytest.skip("no Chromium on this machine: bash deploy/browser/setup.sh installs Debian's (CI does)")


@pytest.fixture
async def console(stack: Stack) -> AsyncIterator[str]:
    """The settle service of the stack on a real port, for the browser, and the monitor on another
    (the console's alerts page reads it)."""
    port, monitor_port, stop = free_port(), free_port(), asyncio.Event()
    stack.settle.settings.monitor_url = f"http://127.0.0.1:{monitor_port}"
    tasks = [asyncio.create_task(serve(stack.settle.app, "127.0.0.1", port, stop)),
             asyncio.create_task(serve(stack.services["monitor"].app, "127.0.0.1", monitor_port, stop))]
    yield f"http://127.0.0.1:{port}"
    stop.set()
    await asyncio.gather(*tasks)


@pytest.mark.one_database
async def test_an_operator_redrives_dead_letters_and_traces_a_claim_in_the_browser(stack: Stack, console: str) -> None:
    from playwright.async_api import async_playwright

    browser_path = chromium()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    psn = await stack.person("360100")
    await stack.file(psn, "440100")
    ops = stack.operator("settle")
    await ops.put("/ops/faults", json={"level": "city", "region": "360100", "down": True})
    msgids = [str((await stack.settle_claim(psn, GZ_HOSPITAL, "440100", "360100"))["msgid"]) for _ in range(3)]
    await ops.delete("/ops/faults")
    alerted = str((await stack.settle_claim(psn, GZ_HOSPITAL, "440100", "360100",
                                            lines=[*DEFAULT_LINES, FEMALE_ONLY_LINE]))["msgid"])
    await ops.put("/ops/faults", json={"level": "city", "region": "360100", "down": True})

    async def dead() -> bool:
        return len((await ops.get("/ops/dlq/settle.city.dlq")).json()) == 3
    await wait_until(dead, what="three dead letters")
    await ops.delete("/ops/faults")  # the city is back

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        pg = await browser.new_page()
        await pg.goto(console + "/console")
        assert "/console/login" in pg.url  # signed out: asked to sign in
        await pg.fill("#token", "not-a-token")
        await pg.click("button[type=submit]")
        assert "yb1" in (await pg.content())  # says what a token looks like
        await pg.fill("#token", issue_token("operator", "*", "console-test"))
        await pg.click("button[type=submit]")
        await pg.wait_for_url(console + "/console")
        body = await pg.inner_text("body")
        assert "settle.city" in body and "Consumer groups" in body, body
        await pg.screenshot(path=str(ARTIFACTS / "health.png"), full_page=True)

        await pg.click("text=Dead letters")
        await pg.wait_for_selector("button.redrive")
        await pg.screenshot(path=str(ARTIFACTS / "dead-letters.png"), full_page=True)
        await pg.click("button.redrive")
        await pg.wait_for_selector("#result")
        assert "3 redriven" in await pg.inner_text("#result")
        await pg.screenshot(path=str(ARTIFACTS / "redriven.png"), full_page=True)

        async def settled() -> bool:
            return all([(await stack.http["settle"].get(f"/claims/{m}")).json()["status"] == "settled" for m in msgids])
        await wait_until(settled, what="the redriven claims to settle", timeout=60)
        assert all(len(ledger_rows(stack, m)) == 1 for m in msgids)

        await pg.click("text=Trace")
        await pg.fill("input[name=msgid]", msgids[0])
        await pg.click("button[type=submit]")
        await pg.wait_for_selector("#now")
        assert "answered: settled" in await pg.inner_text("#now")
        timeline = await pg.inner_text("body")
        assert "settle.city.dlq" in timeline and "settle.city.retry" in timeline  # its whole story
        await pg.screenshot(path=str(ARTIFACTS / "trace.png"), full_page=True)

        await pg.click("text=Health")
        assert "requests" in await pg.inner_text("#latency")  # the hospitals' latency at this API, as bars
        assert "Records per topic" in await pg.inner_text("body")  # handled / retried / dead-lettered per hop

        await pg.click("text=Alerts")  # the man's claim with a female-only line raised one
        alerts = await pg.inner_text("body")
        assert "R-GENDER" in alerts and alerted in alerts, alerts
        await pg.screenshot(path=str(ARTIFACTS / "alerts.png"), full_page=True)

        await pg.click("text=Clearing")
        assert "360000 → 440000" in await pg.inner_text("body")
        await pg.fill("input[name=month]", "2020-01")
        await pg.click("button[type=submit]")
        assert "has not been cleared yet" in await pg.inner_text("#statements")
        await pg.screenshot(path=str(ARTIFACTS / "clearing.png"), full_page=True)
        await browser.close()
