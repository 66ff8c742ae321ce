"""Every caller is known: no route but /healthz answers an anonymous request, each role reaches only
its routes, and each caller sees only the data of its own scope."""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi.routing import APIRoute

from schemas.common import new_msgid
from services.identity import headers_for
from tests.e2e.stack import DEFAULT_LINES, FEMALE_ONLY_LINE, GZ_HOSPITAL, Stack
from tests.helpers import wait_until

OPEN = {"/healthz", "/metrics", "/console/login"}  # /metrics: counts and timings by topic and route, nothing personal
pytestmark = pytest.mark.one_database


async def test_no_route_answers_an_anonymous_caller(stack: Stack) -> None:
    checked = 0
    for name, svc in stack.services.items():
        bare = httpx.AsyncClient(transport=httpx.ASGITransport(app=svc.app), base_url=f"http://{name}")
        try:
            for route in svc.app.routes:  # type: ignore[union-attr]
                if not isinstance(route, APIRoute) or route.path in OPEN:
                    continue
                path = re.sub(r"\{[^}]+\}", "x1", route.path)
                for method in route.methods:
                    r = await bare.request(method, path, json={})
                    if path.startswith("/console"):  # a page: sent to sign in
                        assert r.status_code == 303 and r.headers["location"].startswith("/console/login"), r
                        checked += 1
                        continue
                    assert r.status_code == 401, (name, method, route.path, r.status_code, r.text)
                    assert "Bearer" in r.text or "x-tif" in r.text, r.text  # says how to identify
                    checked += 1
        finally:
            await bare.aclose()
    assert checked >= 30


async def test_roles_reach_only_their_routes(stack: Stack) -> None:
    province = stack.province("settle", "360100")
    for method, path in (("PUT", "/ops/faults"), ("DELETE", "/ops/faults"), ("GET", "/ops/stats"),
                         ("POST", "/clearing/2026-01/run")):
        r = await province.request(method, path, json={"level": "city"})
        assert r.status_code == 403 and "operator" in r.json()["error"], (path, r.text)
    r = await stack.operator("settle").post("/fsi/callService", json={})
    assert r.status_code == 403 and r.json()["infcode"] == -1  # only hospitals settle
    r = await stack.operator("enroll").post("/persons", json={})
    assert r.status_code == 403  # the registry is the provinces'
    r = await stack.province("monitor", "440000").get("/alerts")
    assert r.status_code == 403  # alerts are for supervisors


async def test_each_caller_sees_its_own_region_or_person(stack: Stack) -> None:
    psn = await stack.person("360100")
    await stack.file(psn, "440100")
    ans = await stack.settle_claim(psn, GZ_HOSPITAL, "440100", "360100", lines=[*DEFAULT_LINES, FEMALE_ONLY_LINE])
    assert ans["infcode"] == 0  # a man billed for a women-only item: an alert at 广州

    # 江西's platform and the person see them; 广东's does not learn whether they exist
    assert (await stack.province("enroll", "360100").get(f"/persons/{psn}")).status_code == 200
    assert (await stack.as_("enroll", "insured", psn).get(f"/persons/{psn}/status")).status_code == 200
    r = await stack.province("enroll", "440100").get(f"/persons/{psn}")
    assert r.status_code == 404 and "scope" in r.json()["error"]
    assert (await stack.as_("enroll", "insured", "someone-else").get(f"/persons/{psn}")).status_code == 404
    assert (await stack.province("settle", "440100").get(f"/persons/{psn}/status")).status_code == 404
    # a filing is seen by both ends of it: the insured province and the treatment province
    fil = (await stack.as_("filing", "insured", psn).get(f"/persons/{psn}/filings")).json()
    assert len(fil) == 1
    assert (await stack.province("filing", "440100").get(f"/filings/{fil[0]['fil_id']}")).status_code == 200
    assert (await stack.province("filing", "330100").get(f"/filings/{fil[0]['fil_id']}")).status_code == 404
    # 广东's province may not register or enrol for 江西
    r = await stack.province("enroll", "440100").post("/enrolments", json={
        "psn_no": psn, "insuplc_admdvs": "360100", "insutype": "310"})
    assert r.status_code == 403 and "360100" in r.json()["error"]
    # another person may not file or cancel for them
    r = await stack.as_("filing", "insured", "someone-else").delete(f"/filings/{fil[0]['fil_id']}")
    assert r.status_code == 404

    # supervisors: 广东's sees the alert of a 广州 hospital, 浙江's does not
    async def alerts(scope: str) -> list[dict]:  # type: ignore[type-arg]
        r = await stack.as_("monitor", "supervisor", scope).get("/alerts", params={"msgid": ans["msgid"]})
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]
    await wait_until(lambda: alerts("440000"), what="the gender alert")
    assert await alerts("330000") == []
    # clearing pairs: 江西 and 广东 see their pair's advance fund, 浙江 sees none of it
    pair = ("360000", "440000")
    for scope, sees in (("360000", True), ("440000", True), ("330000", False)):
        rows = (await stack.as_("settle", "province", scope).get("/clearing/advance-funds")).json()
        assert any((r["insured_prov"], r["treat_prov"]) == pair for r in rows) is sees, scope


async def test_a_person_s_data_needs_their_credential_at_that_hospital(stack: Stack) -> None:
    """1101 by psn_no alone and 5206 answer a hospital only after the person showed a credential
    there (or has an open encounter there): a psn_no is not a key to anyone's name and totals."""
    psn = await stack.person("360100")
    other_hospital = "H44010600002"

    async def ask(infno: str, hospital: str) -> httpx.Response:
        body = {"infno": infno, "msgid": new_msgid(hospital), "mdtrtarea_admvs": "440100", "insuplc_admdvs": "360100",
                "fixmedins_code": hospital, "input": {"data": {"psn_no": psn}}}
        return await stack.http["settle"].post("/fsi/callService", json=body, timeout=60)

    for infno in ("1101", "5206"):
        r = await ask(infno, GZ_HOSPITAL)
        assert r.status_code == 403 and "1101" in r.json()["err_msg"], r.text
    await stack.present(psn, GZ_HOSPITAL)  # the ID card at 广州's desk
    for infno in ("1101", "5206"):
        r = await ask(infno, GZ_HOSPITAL)
        assert r.status_code == 200 and r.json()["infcode"] == 0, r.text
        assert (await ask(infno, other_hospital)).status_code == 403  # not at another hospital


async def test_a_token_signed_with_another_key_is_refused(stack: Stack) -> None:
    forged = headers_for("operator", key="not-the-platform-key")
    r = await stack.http["settle"].get("/ops/faults", headers=forged)
    assert r.status_code == 401 and "YIBAO_AUTH_KEY" in r.json()["error"]
