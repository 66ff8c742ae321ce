"""The 3101 (事前) / 3102 (事中) request a hospital sends to have its orders checked before it
settles: patients, their encounters, diagnoses and orders, read into the Episodes the rules judge."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Literal

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field

from services.monitor.facts import Episode, Line, line_day
from services.settle.domain import age_on


class _Dto(BaseModel):
    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True)


class Diagnose(_Dto):
    dise_codg: str = Field(min_length=1, max_length=20)


class Order(_Dto):
    rx_id: str = Field(min_length=1, max_length=50, description="the order (明细) id the answer names")
    hilist_code: str = Field(min_length=1, max_length=50)
    cnt: Decimal = Field(gt=0, max_digits=16, decimal_places=4)
    pric: Decimal = Field(ge=0, max_digits=16, decimal_places=6)
    sumamt: Decimal = Field(ge=0, max_digits=16, decimal_places=2)
    drord_begn_date: str | None = Field(None, max_length=19)
    prd_days: Decimal | None = Field(None, ge=0, max_digits=8, decimal_places=2)


class Encounter(_Dto):
    mdtrt_id: str = Field(min_length=1, max_length=30)
    medins_id: str = Field(pattern=r"^[HP]\d{11}$", description="the hospital: must be the caller")
    medins_lv: str | None = Field(None, max_length=3)
    medins_admdvs: str = Field(pattern=r"^\d{6}$")
    adm_date: date
    dscg_date: date | None = None
    med_type: str = Field(pattern=r"^\d{2,6}$")
    insutype: str = Field("310", max_length=3)
    fsi_diagnose_dtos: list[Diagnose] = []
    fsi_order_dtos: list[Order] = Field(min_length=1, max_length=2000)


class Patient(_Dto):
    patn_id: str = Field(min_length=1, max_length=30, description="psn_no")
    gend: Literal["1", "2"] | None = None
    brdy: date | None = None
    poolarea: str = Field(pattern=r"^\d{6}$", description="the insured region (参保地)")
    fsi_encounter_dtos: list[Encounter] = Field(min_length=1, max_length=50)


class ReviewData(_Dto):
    trig_scen: Literal["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"]
    task_id: str = ""
    rule_ids: list[str] = Field([], description="only these rules (all when empty)")
    patient_dtos: list[Patient] = Field(min_length=1, max_length=100)


class ReviewInput(_Dto):
    data: ReviewData


class ReviewRequest(_Dto):
    infno: Literal["3101", "3102"]
    input: ReviewInput


def episodes_of(req: ReviewRequest, caller: str, today: date) -> list[Episode]:
    """One Episode per encounter; an encounter of another hospital than the caller is a 403."""
    out = []
    for p in req.input.data.patient_dtos:
        for e in p.fsi_encounter_dtos:
            if e.medins_id != caller:
                raise HTTPException(403, f"encounter {e.mdtrt_id} names medins_id {e.medins_id}: "
                                         f"{caller} may check its own encounters only")
            lines = tuple(Line(o.rx_id, o.hilist_code, o.cnt, o.pric, o.sumamt, line_day(o.drord_begn_date, e.adm_date),
                               o.prd_days) for o in e.fsi_order_dtos)
            out.append(Episode(
                msgid=f"{req.input.data.task_id or 'review'}-{e.mdtrt_id}", psn_no=p.patn_id, fixmedins_code=caller,
                mdtrtarea_admvs=e.medins_admdvs, insuplc_admdvs=p.poolarea, insutype=e.insutype,
                med_type=e.med_type, begntime=e.adm_date, endtime=e.dscg_date or max(ln.day for ln in lines),
                lines=lines, diagnoses=tuple(d.dise_codg for d in e.fsi_diagnose_dtos), hosp_lv=e.medins_lv,
                mdtrt_id=e.mdtrt_id, gend=p.gend, age=age_on(p.brdy, e.adm_date) if p.brdy else None,
                medfee=sum((o.sumamt for o in e.fsi_order_dtos), Decimal("0.00"))))
    return out
