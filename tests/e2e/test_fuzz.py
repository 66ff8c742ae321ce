"""Schemathesis against every service's OpenAPI on a running platform: generated requests, valid and
invalid, with an identity the route admits; no answer may be a 5xx."""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation import GenerationMode

from schemas.regions import designated_hospitals
from services.identity import headers_for
from services.platform import SERVICES, Platform
from services.settle.auth import hospital_headers
from tests.e2e.test_platform import platform  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration
EXAMPLES = int(os.environ.get("YIBAO_FUZZ_EXAMPLES", "5"))  # per operation and mode; CI keeps it small
GZ = "H44010400001"
SKIP = {("settle", "GET", "/hospitals/{fixmedins_code}/results")}  # an endless stream: tested in test_hospital_feed


def identity(service: str, path: str) -> dict[str, str]:
    """An identity the route admits, so that the request reaches the handler."""
    if path == "/fsi/callService" or path.startswith("/claims/"):
        return hospital_headers(GZ, str(designated_hospitals()[GZ]["key"]))
    if path.startswith(("/ops", "/clearing", "/duplicates/check", "/alerts")):
        return headers_for("operator", subject="fuzz")
    if path.endswith("/ectoken"):
        return headers_for("insured", "360100000000000001", "fuzz")
    return headers_for("province", "360000", "fuzz")


def test_no_generated_request_gets_a_5xx(platform: Platform) -> None:  # noqa: F811
    failures: list[str] = []
    calls = 0
    for service in SERVICES:
        schema = schemathesis.openapi.from_url(platform.url(service) + "/openapi.json")
        for result in schema.get_all_operations():
            op = result.ok()
            if (service, op.method.upper(), op.path) not in SKIP:
                calls += fuzz(service, op, platform.url(service), failures)
    assert calls >= 100
    assert not failures, "\n".join(failures[:20])


def fuzz(service: str, op: Any, base_url: str, failures: list[str]) -> int:
    """Valid and invalid requests for one operation; 5xx answers go to `failures`. Returns the calls made."""
    calls = 0
    strategy = st.one_of(op.as_strategy(GenerationMode.POSITIVE), op.as_strategy(GenerationMode.NEGATIVE))

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def run(case: Any) -> None:
        nonlocal calls
        if isinstance(case.body, dict) and op.path == "/fsi/callService":
            case.body["fixmedins_code"] = GZ  # the signer's own code, so the call reaches the handler
        r = case.call(base_url=base_url, headers=identity(service, op.path), timeout=30)
        calls += 1
        if r.status_code >= 500:
            failures.append(f"{service} {op.method.upper()} {case.formatted_path} → {r.status_code}: "
                            f"{r.text[:200]} (body {str(case.body)[:200]})")

    run()
    return calls
