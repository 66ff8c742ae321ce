"""医保区划 code list shared by all services: the 31 provinces and the pooling regions served."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path


@cache
def _load() -> dict[str, list[dict[str, str]]]:
    return json.loads((Path(__file__).parent / "refdata" / "regions.json").read_text(encoding="utf-8"))


def provinces() -> dict[str, str]:
    return {p["admdvs"]: p["name"] for p in _load()["provinces"]}


def pooling_regions() -> dict[str, str]:
    return {p["admdvs"]: p["name"] for p in _load()["pooling_regions"]}

