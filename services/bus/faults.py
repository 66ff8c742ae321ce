"""Fault injection per hop level and region: down, failing with probability p, or slow by d ms."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

from pydantic import BaseModel, Field


class HopDownError(Exception):
    """The region's system does not answer (injected)."""


class Fault(BaseModel):
    level: str = Field(description="city, province or national")
    region: str = Field("*", description="6-digit admdvs, or * for every region of the level")
    down: bool = False
    fail_p: float = Field(0.0, ge=0.0, le=1.0, description="probability that a message fails")
    slow_ms: int = Field(0, ge=0, le=60_000)


@dataclass
class Faults:
    """The faults in force in this process; changed by settings at start and the ops API."""

    rules: dict[tuple[str, str], Fault]

    @classmethod
    def parse(cls, spec: str) -> Faults:
        """`city:360100=down;province:*=slow:50;national:*=fail:0.1` (settings format)."""
        rules: dict[tuple[str, str], Fault] = {}
        for part in filter(None, (p.strip() for p in spec.split(";"))):
            where, _, what = part.partition("=")
            level, _, region = where.partition(":")
            kind, _, arg = what.partition(":")
            f = Fault(level=level, region=region or "*")
            if kind == "down":
                f.down = True
            elif kind == "fail":
                f.fail_p = float(arg)
            elif kind == "slow":
                f.slow_ms = int(arg)
            else:
                raise ValueError(f"unknown fault {kind!r} in {part!r}: use down, fail:P or slow:MS")
            rules[(f.level, f.region)] = f
        return cls(rules)

    def set(self, fault: Fault) -> None:
        if not (fault.down or fault.fail_p or fault.slow_ms):
            self.rules.pop((fault.level, fault.region), None)
        else:
            self.rules[(fault.level, fault.region)] = fault

    def clear(self) -> None:
        self.rules.clear()

    def listed(self) -> list[Fault]:
        return list(self.rules.values())

    def replace(self, faults: list[Fault]) -> None:
        """Adopt the list another process published (ops.faults)."""
        self.rules = {(f.level, f.region): f for f in faults}

    async def check(self, level: str, region: str) -> None:
        for key in ((level, region), (level, "*")):
            f = self.rules.get(key)
            if f is None:
                continue
            if f.slow_ms:
                await asyncio.sleep(f.slow_ms / 1000)
            if f.down:
                raise HopDownError(f"{level} {region} is down (injected fault)")
            if f.fail_p and random.random() < f.fail_p:
                raise HopDownError(f"{level} {region} failed (injected, p={f.fail_p})")
