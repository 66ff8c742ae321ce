"""The rule catalogue (规则库) as data: refdata/rules.json, validated when it is loaded and loaded
again when the file changes, without a restart. A file that does not validate is refused with the
reason and the rules in force stay."""

from __future__ import annotations

import logging
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

log = logging.getLogger("yibao.monitor")
RULES_FILE = Path(__file__).parent / "refdata" / "rules.json"
Phase = Literal["precheck", "post", "aggregate"]  # aggregate: over a month's counts, not one claim
Severity = Literal["明确违规", "高度可疑", "可疑"]


class RuleSpec(BaseModel):
    """One rule: what it is called, how bad a hit is, where it runs and with which thresholds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^R-[A-Z0-9-]{2,20}$")
    name: str = Field(min_length=1)
    family: Literal["政策", "管理", "医疗"] = Field(description="两库 class")
    type: str = Field(min_length=1, description="违规行为类型 (vola_bhvr_type)")
    severity: Severity
    kind: str = Field(description="the check in services/monitor/rules.py")
    phases: list[Phase] = Field(min_length=1)
    action: Literal["refuse", "flag"] = Field("flag", description="precheck: refuse the claim, or flag the lines")
    params: dict[str, Any] = {}
    effective_from: date | None = None
    effective_to: date | None = None

    def in_force(self, day: date) -> bool:
        return (self.effective_from is None or self.effective_from <= day) and (
            self.effective_to is None or day <= self.effective_to)


class Catalogue(BaseModel):
    model_config = ConfigDict(extra="ignore")

    version: str
    rules: list[RuleSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _checked(self) -> Catalogue:
        from services.monitor.rules import AGGREGATE_KINDS, KINDS, check_params

        ids = [r.id for r in self.rules]
        if dupes := sorted({i for i in ids if ids.count(i) > 1}):
            raise ValueError(f"rule ids used twice: {', '.join(dupes)}")
        for r in self.rules:
            if r.kind not in KINDS and r.kind not in AGGREGATE_KINDS:
                raise ValueError(f"{r.id}: kind {r.kind!r} is not one of {', '.join(sorted([*KINDS, *AGGREGATE_KINDS]))}")
            if (r.kind in AGGREGATE_KINDS) != (r.phases == ["aggregate"]):
                raise ValueError(f"{r.id} ({r.kind}): the aggregate phase is for aggregate kinds "
                                 f"({', '.join(sorted(AGGREGATE_KINDS))}) and only for them")
            check_params(r)
        return self

    def items_named(self) -> set[str]:
        """Every string the rules' parameters hold (item codes among them): what clean generated
        traffic stays clear of."""
        out: set[str] = set()

        def walk(v: Any) -> None:
            if isinstance(v, str):
                out.add(v)
            elif isinstance(v, dict):
                for k, x in v.items():
                    walk(k)
                    walk(x)
            elif isinstance(v, list):
                for x in v:
                    walk(x)

        for r in self.rules:
            walk(r.params)
        return out

    def for_phase(self, phase: Phase, day: date) -> list[RuleSpec]:
        return [r for r in self.rules if phase in r.phases and r.in_force(day)]


def load(path: Path = RULES_FILE) -> Catalogue:
    """The catalogue in `path`, or ValueError naming what is wrong in it."""
    try:
        return Catalogue.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise ValueError(f"{path}: {exc}") from None


class RuleBook:
    """The rules in force: reads the file again when its modification time changes (looked at no
    more than once a second)."""

    def __init__(self, path: Path = RULES_FILE, check_every_s: float = 1.0) -> None:
        self.path = path
        self.check_every_s = check_every_s
        self._lock = threading.Lock()
        self._mtime = self.path.stat().st_mtime_ns
        self.catalogue = load(self.path)
        self._checked = time.monotonic()

    def current(self) -> Catalogue:
        now = time.monotonic()
        if now - self._checked < self.check_every_s:
            return self.catalogue
        with self._lock:
            self._checked = now
            try:
                mtime = self.path.stat().st_mtime_ns
            except OSError:
                return self.catalogue
            if mtime != self._mtime:
                self._mtime = mtime
                try:
                    self.catalogue = load(self.path)
                    log.warning("rule catalogue reloaded: version %s, %d rules", self.catalogue.version,
                                len(self.catalogue.rules))
                except ValueError as exc:
                    log.error("rule catalogue not reloaded, the rules in force stay: %s", exc)
        return self.catalogue
