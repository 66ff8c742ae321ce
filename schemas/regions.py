"""Reference data shared by all services: 医保区划 codes (31 provinces, the pooling regions served)
and the designated hospitals (定点医疗机构)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any


@cache
def _load() -> dict[str, list[dict[str, str]]]:
    return json.loads((Path(__file__).parent / "refdata" / "regions.json").read_text(encoding="utf-8"))


def provinces() -> dict[str, str]:
    return {p["admdvs"]: p["name"] for p in _load()["provinces"]}


def pooling_regions() -> dict[str, str]:
    return {p["admdvs"]: p["name"] for p in _load()["pooling_regions"]}



@cache
def designated_hospitals() -> dict[str, dict[str, Any]]:
    """定点医疗机构 by fixmedins_code: name, admdvs, hosp_lv, cross-province enabled, API key."""
    raw = json.loads((Path(__file__).parent / "refdata" / "hospitals.json").read_text(encoding="utf-8"))
    return {h["fixmedins_code"]: h for h in raw["hospitals"]}


def covers_region(scope: str, admdvs: str) -> bool:
    """Whether region `scope` includes `admdvs`: `000000` is the whole country, `360000` every city
    of 江西, `360100` 南昌 and its districts, any other code itself only."""
    if scope == "000000":
        return True
    if scope.endswith("0000"):
        return admdvs[:2] == scope[:2]
    if scope.endswith("00"):
        return admdvs[:4] == scope[:4]
    return admdvs == scope
