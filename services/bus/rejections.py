"""Tell a provincial platform which of its records were not accepted, and why.

Inbound consumers dead-letter a bad record (its bytes unchanged in `<topic>.dlq`) and publish a
`RecordRejected` on a rejections topic keyed by the sending province, which the province consumes.
The sender is named by the CloudEvents `ce_source` header: `/province/<admdvs>`.
"""

from __future__ import annotations

import logging
import re

import orjson

from schemas.events import RecordRejected
from services.bus.client import Bus
from services.bus.worker import DeadLetter, OnDeadLetter

log = logging.getLogger("yibao.bus.rejections")

PROVINCE_SOURCE = re.compile(r"^/province/(\d{2})0000$")


def source_province(ce_source: str | None) -> str | None:
    """`/province/360000` → `360000`; None for any other source (a counter, a service)."""
    m = PROVINCE_SOURCE.match(ce_source or "")
    return m.group(1) + "0000" if m else None


def _record_id(value: bytes) -> str | None:
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    rid = data.get("record_id") if isinstance(data, dict) else None
    return str(rid) if rid is not None else None


def publisher(bus: Bus, rejections_topic: str, service: str, shows_key: bool = True) -> OnDeadLetter:
    """`shows_key=False` where the inbound key is personal (enroll.inbound: the ID number): the
    rejection names the record by its topic, offset and the province's record_id instead."""

    async def publish(dl: DeadLetter) -> None:
        source = dl.headers.get("ce_source")
        event = RecordRejected(
            topic=dl.topic, partition=dl.partition, offset=dl.offset, key=dl.key if shows_key else None,
            ce_id=dl.headers.get("ce_id"),
            ce_type=dl.headers.get("ce_type"), ce_source=source, record_id=_record_id(dl.value),
            reason_code=dl.code, reason=dl.reason,
        )
        await bus.send(rejections_topic, source_province(source) or "unknown", event, source=f"/yibao/{service}")
        log.info("rejected %s@%d/%d from %s: %s %s", dl.topic, dl.partition, dl.offset, source or "?", dl.code,
                 dl.reason)

    return publish
