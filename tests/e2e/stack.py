"""The four services in this process on a real broker and real databases, driven over HTTP (ASGI)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import httpx
from sqlalchemy import Engine
from sqlmodel import Session, select

from schemas.common import new_msgid
from schemas.regions import designated_hospitals
from services.bus.settings import BusSettings
from services.enroll.domain import with_check_char
from services.identity import Role, headers_for, province_of
from services.platform import build_service
from services.service import Service
from services.settle.auth import SigningAuth
from services.settle.settings import SettleSettings
from services.settle.store import LedgerEntry
from tests.helpers import wait_until

YEAR_END = f"{date.today().year}-12-31"


@dataclass
class Stack:
    """`http[service]` signs as the hospital a request is for (x-tif-*); `as_(service, role, scope)`
    carries a bearer token of another caller."""

    services: dict[str, Service]
    http: dict[str, httpx.AsyncClient] = field(default_factory=dict)
    callers: dict[tuple[str, str, str], httpx.AsyncClient] = field(default_factory=dict)
    certnos: dict[str, str] = field(default_factory=dict)  # psn_no → the ID number it was registered with

    async def start(self) -> None:
        await asyncio.gather(*(s.start() for s in self.services.values()))  # the group joins overlap
        for s in self.services.values():
            await s.wait_ready()
        self.http = {n: httpx.AsyncClient(transport=httpx.ASGITransport(app=s.app), base_url=f"http://{n}",
                                          auth=SigningAuth())
                     for n, s in self.services.items()}

    def as_(self, service: str, role: Role, scope: str = "*") -> httpx.AsyncClient:
        key = (service, role, scope)
        if key not in self.callers:
            self.callers[key] = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.services[service].app),
                                                  base_url=f"http://{service}", headers=headers_for(role, scope, "test"))
        return self.callers[key]

    def province(self, service: str, admdvs: str) -> httpx.AsyncClient:
        """The provincial platform of the province `admdvs` belongs to."""
        return self.as_(service, "province", province_of(admdvs))

    def operator(self, service: str) -> httpx.AsyncClient:
        return self.as_(service, "operator")

    async def stop(self) -> None:
        for c in [*self.http.values(), *self.callers.values()]:
            await c.aclose()
        await asyncio.gather(*(s.stop() for s in self.services.values()))

    @property
    def settle(self) -> Any:
        return self.services["settle"]

    async def person(self, region: str = "360100", insutype: str = "310", male: bool = True,
                     paid_through: str | None = YEAR_END, voucher: bool = True, balance: str = "0",
                     name: str = "测试", since: date | None = None) -> str:
        seq = secrets.randbelow(499) * 2 + (1 if male else 2)
        certno = with_check_char(f"{region}{1960 + secrets.randbelow(40)}0315{seq:03d}")
        enroll = self.province("enroll", region)
        r = await enroll.post("/persons", json={"certno": certno, "psn_name": name, "admdvs": region})
        assert r.status_code in (200, 201), r.text
        psn = r.json()["psn_no"]
        self.certnos[psn] = certno
        r = await enroll.post("/enrolments", json={
            "psn_no": psn, "insuplc_admdvs": region, "insutype": insutype, "paid_through": paid_through,
            "voucher_active": voucher, "acct_balc": balance} | ({"begndate": str(since)} if since else {}))
        assert r.status_code == 201, r.text
        await wait_until(lambda: self._settle_knows(psn), what=f"settle to see {psn}")
        return psn

    async def present(self, psn: str, hospital: str, treat: str = "440100", insured: str = "360100") -> None:
        """The person shows their ID card at the hospital's desk: a 1101 with it, after which the
        hospital may ask by psn_no (1101, 5206) for a while."""
        body = {"infno": "1101", "msgid": new_msgid(hospital), "mdtrtarea_admvs": treat, "insuplc_admdvs": insured,
                "fixmedins_code": hospital, "input": {"data": {"mdtrt_cert_type": "02",
                                                               "mdtrt_cert_no": self.certnos[psn]}}}
        r = await self.http["settle"].post("/fsi/callService", json=body, timeout=60)
        assert r.status_code == 200 and r.json()["infcode"] == 0, r.text

    async def _settle_knows(self, psn: str, filings: int = 0) -> bool:
        r = await self.operator("settle").get(f"/persons/{psn}/status")
        return r.status_code == 200 and len(r.json()["filings"]) >= filings

    async def file(self, psn: str, target: str, fil_type: str = "REFERRAL", since: date | None = None) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if fil_type == "REFERRAL":
            extra["referral_fixmedins_code"] = referral_hospital(psn[:6])  # psn_no starts with its region
        elif fil_type in ("RETIRED_RELOCATED", "LONG_TERM_RESIDENT", "WORKING_REMOTE"):
            extra["commitment"] = True

        async def attempt() -> Any:
            r = await self.province("filing", psn[:6]).post("/filings", json={
                "psn_no": psn, "fil_type": fil_type, "target_admdvs": target,
                "begndate": (since or date.today().replace(day=1)).isoformat()} | extra)
            return r.json() if r.status_code == 201 else None
        f = await wait_until(attempt, what="the filing service to accept the filing")
        await wait_until(lambda: self._settle_knows(psn, filings=1), what="settle to see the filing")
        return f  # type: ignore[no-any-return]

    async def settle_claim(self, psn: str, hospital: str, treat: str, insured: str, *, insutype: str = "310",
                           med_type: str = "11", cert: str = "02", lines: list[dict[str, Any]] | None = None,
                           msgid: str | None = None, infno: str = "2207") -> dict[str, Any]:
        body = claim_body(psn, hospital, treat, insured, insutype=insutype, med_type=med_type, cert=cert,
                          lines=lines, msgid=msgid, infno=infno)
        r = await self.http["settle"].post("/fsi/callService", json=body, timeout=60)
        assert r.status_code == 200, r.text
        return r.json() | {"msgid": body["msgid"]}  # type: ignore[no-any-return]


def referral_hospital(region: str) -> str:
    """A hospital of the insured region allowed to issue referrals (level 2 or 3)."""
    return next(code for code, h in designated_hospitals().items() if h["admdvs"] == region and h["hosp_lv"] >= "2")


DEFAULT_LINES = [
    {"feedetl_sn": "1", "med_list_codg": "001102000010000", "cnt": 1, "pric": "25.00", "det_item_fee_sumamt": "25.00"},
    {"feedetl_sn": "2", "med_list_codg": "003307000010000", "cnt": 1, "pric": "600.00", "det_item_fee_sumamt": "600.00"},
    {"feedetl_sn": "3", "med_list_codg": "XN02BEA086A001010100777", "cnt": 2, "pric": "18.50", "det_item_fee_sumamt": "37.00"},
]
FEMALE_ONLY_LINE = {"feedetl_sn": "9", "med_list_codg": "002703000030000", "cnt": 1, "pric": "150.00",
                    "det_item_fee_sumamt": "150.00"}


def claim_body(psn: str, hospital: str, treat: str, insured: str, *, insutype: str = "310", med_type: str = "11",
               cert: str = "02", lines: list[dict[str, Any]] | None = None, msgid: str | None = None,
               infno: str = "2207") -> dict[str, Any]:
    return {
        "infno": infno, "msgid": msgid or new_msgid(hospital), "mdtrtarea_admvs": treat, "insuplc_admdvs": insured,
        "fixmedins_code": hospital, "infver": "V1.0", "opter_type": "1", "opter": "t", "opter_name": "t",
        "input": {"data": {"psn_no": psn, "insutype": insutype, "med_type": med_type, "mdtrt_cert_type": cert,
                           "acct_used_flag": "1", "begntime": f"{datetime.now():%Y-%m-%d %H:%M:%S}"},
                  "feedetail": lines or DEFAULT_LINES},
    }


async def start_stack(broker: str, engine_factory: Callable[[str], Engine], bus_settings: BusSettings,
                      settle_settings: SettleSettings | None = None) -> Stack:
    services: dict[str, Service] = {}
    for name in ("enroll", "filing", "settle", "monitor"):
        kw: dict[str, Any] = {"engine": engine_factory(name), "bus_settings": bus_settings}
        if name == "settle":
            kw["settings"] = settle_settings or SettleSettings()
        services[name] = build_service(name, broker, **kw)
    stack = Stack(services)
    await stack.start()
    return stack


GZ_HOSPITAL = "H44010400001"  # 广州, 三级, cross-province enabled


def ledger_rows(stack: Stack, msgid: str) -> list[LedgerEntry]:
    """The insured city's ledger entries of one claim (exactly one once it settled)."""
    with Session(stack.settle.engine) as s:
        return list(s.exec(select(LedgerEntry).where(LedgerEntry.msgid == msgid)).all())
