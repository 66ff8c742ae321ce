"""Prometheus metrics of every process, served at /metrics by every service.

`yibao run` gives its processes one PROMETHEUS_MULTIPROC_DIR (under var/), so the /metrics of any
service shows the whole platform's: the settle API's includes the hop workers'. A process alone
(the tests, `yibao worker`) keeps its own. Labels are topics, consumer groups and routes: no
personal data.
"""

from __future__ import annotations

import os
import time

from fastapi import FastAPI, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

RECORDS = Counter("yibao_records", "Records a consumer group dealt with, by topic and outcome "
                  "(handled, retried, dead_lettered)", ["group", "topic", "outcome"])
HANDLE = Histogram("yibao_handle_seconds", "Time to handle one record, by consumer group and topic (the hop "
                   "levels are the topics settle.city, settle.province, settle.national); a record handled in a "
                   "batch counts its share of the batch", ["group", "topic"], buckets=SECONDS)
LAG = Gauge("yibao_consumer_lag", "Records behind the high watermark, per consumer group, from its last fetch",
            ["group"], multiprocess_mode="livesum")
OUTBOX = Counter("yibao_outbox_published", "Events the outbox relay published, by service", ["service"])
HTTP = Histogram("yibao_http_seconds", "HTTP request time by service, method, route and status class",
                 ["service", "method", "route", "status"], buckets=SECONDS)


def exposition() -> bytes:
    """The metrics of this process, or of every process sharing the multiprocess directory."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()


class _Timed:
    """ASGI middleware: each request's time into HTTP, by the route that served it."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0, status = time.perf_counter(), [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")  # the router sets it on the shared scope
            HTTP.labels(self.service, scope["method"], route, f"{status[0] // 100}xx").observe(
                time.perf_counter() - t0)


def add_metrics(app: FastAPI, service: str) -> None:
    """GET /metrics, and the request-time histogram of every route of `app`."""
    app.add_middleware(_Timed, service=service)

    @app.get("/metrics", tags=["ops"], include_in_schema=False)
    async def metrics() -> Response:
        """Prometheus text format: records per group and topic, hop handling time, consumer lag,
        outbox, HTTP time."""
        return Response(exposition(), media_type=CONTENT_TYPE_LATEST)
