"""The wire contracts: committed JSON Schema matches the models; the registry is consistent."""

from __future__ import annotations

from schemas.events import EVENT_TYPES
from schemas.export import JSON_DIR, render
from schemas.topics import TOPICS, all_topic_names, topic
from services.bus.faults import Faults


def test_committed_json_schema_has_not_drifted() -> None:
    """Fails when a model changed without `make schemas`."""
    for ce_type in EVENT_TYPES:
        path = JSON_DIR / f"{ce_type}.json"
        assert path.exists(), f"{path} missing: run `make schemas`"
        assert path.read_text(encoding="utf-8") == render(ce_type), f"{path} drifted: run `make schemas`"
    extra = {p.stem for p in JSON_DIR.glob("*.json")} - set(EVENT_TYPES)
    assert not extra, f"schema files without a model: {extra}"


def test_every_topic_carries_registered_types_and_has_retry_and_dlq() -> None:
    names = dict(all_topic_names())
    for spec in TOPICS.values():
        assert set(spec.types) <= set(EVENT_TYPES)
        if spec.consumed:
            assert spec.retry in names and spec.dlq in names
        assert topic(spec.retry) is spec


def test_fault_spec_parsing() -> None:
    f = Faults.parse("city:360100=down; province:*=slow:50;national:*=fail:0.25")
    assert f.rules[("city", "360100")].down
    assert f.rules[("province", "*")].slow_ms == 50
    assert f.rules[("national", "*")].fail_p == 0.25
