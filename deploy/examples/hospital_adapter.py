"""A hospital adapter that follows its own settlement results on the `settle.hospital` topic.

It needs nothing of this project: only confluent-kafka (a standard Kafka client) and the JSON
Schema files in schemas/json/ if it wants to validate. Results are keyed by the hospital's
fixmedins_code; the adapter's consumer group remembers where it stopped, so a restart resumes.

    pip install confluent-kafka
    python deploy/examples/hospital_adapter.py --bootstrap 127.0.0.1:9092 --hospital H44010400001

(For hospitals outside the trusted network the settle API streams the same results as
Server-Sent Events: GET /hospitals/{fixmedins_code}/results, signed with the x-tif-* headers.)
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from typing import Any

from confluent_kafka import Consumer, KafkaException


def follow(bootstrap: str, hospital: str, group: str | None = None, from_start: bool = False,
           idle_s: float | None = None, topic: str = "settle.hospital") -> Iterator[dict[str, Any]]:
    """Yield this hospital's results (SettlementResult as a dict, with its CloudEvents headers under
    `_headers`) as they arrive; stop after `idle_s` seconds without any record, if given."""
    # A 6 s session (the least a Kafka broker accepts by default): the embedded broker makes every
    # group join wait half the session, 22 s with librdkafka's default of 45 s. `topic`: the results
    # topic as the deployment names it (a platform started with YIBAO_TOPIC_PREFIX prefixes it).
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group or f"adapter-{hospital}",
                  "auto.offset.reset": "earliest" if from_start else "latest", "enable.auto.commit": True,
                  "session.timeout.ms": 6000, "heartbeat.interval.ms": 1500})
    assigned: list[object] = []
    c.subscribe([topic], on_assign=lambda _c, parts: assigned.append(parts))
    idle = 0.0
    try:
        while idle_s is None or idle < idle_s:
            m = c.poll(0.5)
            if m is None:
                idle += 0.5 if assigned else 0.0  # joining the group does not count as idle
                continue
            if m.error():
                raise KafkaException(m.error())
            idle = 0.0
            if m.key() != hospital.encode():
                continue  # another hospital's result in the same partition
            result = json.loads(m.value())
            result["_headers"] = {k: v.decode() for k, v in (m.headers() or [])}
            yield result
    finally:
        c.close()


def main() -> None:
    ap = argparse.ArgumentParser(description="Follow one hospital's settlement results (settle.hospital).")
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--hospital", required=True, help="fixmedins_code, e.g. H44010400001")
    ap.add_argument("--from-start", action="store_true", help="read the retained history first")
    ap.add_argument("--topic", default="settle.hospital", help="the results topic (default %(default)s)")
    args = ap.parse_args()
    for r in follow(args.bootstrap, args.hospital, from_start=args.from_start, topic=args.topic):
        o = r["outcome"]
        if o["infcode"] == 0:
            s = o["setlinfo"]
            print(f"{r['msgid']} settled {s['setl_id']}: total {s['medfee_sumamt']} fund {s['fund_pay_sumamt']} "
                  f"account {s['acct_pay']} cash {s['psn_cash_pay']}", flush=True)
        else:
            print(f"{r['msgid']} refused {o['err_code']}: {o['err_msg']}", flush=True)


if __name__ == "__main__":
    main()
