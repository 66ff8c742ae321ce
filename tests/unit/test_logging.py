"""JSON logs (YIBAO_LOG_FORMAT=json) name the claim and the hop a line is about."""

from __future__ import annotations

import json
import logging

from services.platform import JsonLogFormatter


def line(msg: str, *args: object, exc: bool = False) -> dict[str, object]:
    record = logging.LogRecord("yibao.bus.worker", logging.INFO, __file__, 1, msg, args, None)
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            import sys
            record.exc_info = sys.exc_info()
    return json.loads(JsonLogFormatter().format(record))  # type: ignore[no-any-return]


def test_a_retry_line_names_the_claim_and_the_hop() -> None:
    out = line("%s: %s attempt %d failed (%s); retry in %d ms [claim %s]", "settle", "settle.city", 2,
               "city 360100 is down", 200, "H44010400001202612050101010001")
    assert out["msgid"] == "H44010400001202612050101010001" and out["hop"] == "settle.city"
    assert out["level"] == "INFO" and out["logger"] == "yibao.bus.worker" and "attempt 2" in str(out["message"])


def test_a_line_about_nothing_in_particular_has_neither_and_an_error_keeps_its_traceback() -> None:
    out = line("预付金 %s→%s %s", "360000", "440000", "yellow", exc=True)
    assert "msgid" not in out and "hop" not in out
    assert "ValueError: boom" in str(out["exception"])
