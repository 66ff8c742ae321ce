"""What faust-streaming costs per record on this machine, beside the monitor's own figure.

Run in a throwaway virtualenv, not the project's (faust-streaming is not a dependency):

    python3 -m venv /tmp/faust && /tmp/faust/bin/pip install -q faust-streaming==0.15.3 aiokafka==0.14.0
    yibao kafka start
    /tmp/faust/bin/python deploy/faust-probe/probe.py            # every mode, 60,000 records each

It writes 60,000 records of 300 bytes keyed by 5,000 persons (as settle.completed is keyed by
psn_no) to a fresh topic, then starts one faust worker per mode, each reading them all:

    bare     the agent iterates the records; no table
    table    one table write per record (a person's window: the last 20 values), at least once
    exactly  the same under processing_guarantee="exactly_once" (Kafka transactions)

and prints records per second of wall time and per CPU second of the worker's process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid

RECORDS, PERSONS, SIZE = 60_000, 5_000, 300
MODES = ("bare", "table", "exactly")


def worker_app() -> object:
    """The faust app of one mode (run as `faust -A probe worker` with PROBE_* set)."""
    import faust  # only in the throwaway virtualenv

    mode, topic_name = os.environ["PROBE_MODE"], os.environ["PROBE_TOPIC"]
    app = faust.App(f"{topic_name}-{mode}", broker=os.environ["PROBE_BROKER"], store="memory://",
                    topic_partitions=2, web_enabled=False,
                    processing_guarantee="exactly_once" if mode == "exactly" else "at_least_once")
    topic = app.topic(topic_name, key_serializer="raw", value_serializer="raw", partitions=2)
    windows = app.Table(f"{topic_name}-{mode}-windows", default=list, partitions=2)
    state = {"n": 0, "wall": 0.0, "cpu": 0.0}

    @app.agent(topic)
    async def judge(stream):  # type: ignore[no-untyped-def]
        async for key, value in stream.items():
            if state["n"] == 0:
                state["wall"], state["cpu"] = time.perf_counter(), time.process_time()
            if mode != "bare":
                windows[key] = [*windows[key], len(value)][-20:]
            state["n"] += 1
            if state["n"] == RECORDS:
                wall, cpu = time.perf_counter() - state["wall"], time.process_time() - state["cpu"]
                print(f"RESULT {mode}: {RECORDS} records in {wall:.2f} s = {RECORDS / wall:,.0f}/s; "
                      f"{cpu:.2f} CPU s = {RECORDS / cpu:,.0f}/CPU s", flush=True)
                os._exit(0)

    return app


async def produce(broker: str, topic: str) -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 2, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=broker, linger_ms=5)
    await producer.start()
    for i in range(RECORDS):
        await producer.send(topic, b"v" * SIZE, key=f"P{i % PERSONS:05d}".encode())
    await producer.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", default="127.0.0.1:9092")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    args = ap.parse_args()
    topic = f"faust-probe-{uuid.uuid4().hex[:8]}"
    print(f"writing {RECORDS} records to {topic} …", flush=True)
    asyncio.run(produce(args.broker, topic))
    for mode in args.modes:
        env = {**os.environ, "PROBE_MODE": mode, "PROBE_TOPIC": topic, "PROBE_BROKER": f"kafka://{args.broker}"}
        print(f"{mode}: a worker reads them …", flush=True)
        out = subprocess.run([sys.executable, "-m", "faust", "-A", "probe:app", "worker", "-l", "warn",
                              "--without-web"], cwd=os.path.dirname(os.path.abspath(__file__)), env=env,
                             capture_output=True, text=True, timeout=600)
        lines = [ln for ln in out.stdout.splitlines() + out.stderr.splitlines() if "RESULT" in ln]
        print(lines[-1].split("RESULT ", 1)[1] if lines else f"{mode}: no result\n{out.stderr[-2000:]}", flush=True)


if __name__ == "__main__":
    main()
else:
    app = worker_app() if "PROBE_MODE" in os.environ else None
