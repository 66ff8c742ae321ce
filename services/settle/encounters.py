"""The treatment city's side of an encounter (就诊): registration, fee upload, cancellation.

2201/2401 travel the hop chain like a settlement (the insured city checks eligibility) and, when
accepted, open an encounter here with its mdtrt_id. 2203 says what an outpatient visit turned out
to be (med_type, 病种, diagnoses): the settlement carries it to the insured city, which judges it
then. 2204/2301 upload fee lines to an open
encounter: each is split against the catalogue at once and the split is returned; 2205/2302 take
lines back; 2202 cancels an encounter that was not settled. A settlement (2206/2207, 2303/2304)
that names the mdtrt_id and sends no fee lines settles the uploaded ones.
"""

from __future__ import annotations

from datetime import date

import orjson
from sqlalchemy import Connection, Engine, delete, insert, select, update

from schemas.events import Claim, Diagnosis, FeeLine, FeeSplit
from services.bus.envelope import now_ms
from services.settle.domain import CatalogueItem, Hospital, Refusal, is_inpatient, split_line
from services.settle.store import (
    ClaimRecord,
    Encounter,
    EncounterDiagnoses,
    EncounterFee,
    LocalAnswer,
)

ENCOUNTERS = Encounter.__table__  # type: ignore[attr-defined]
FEES = EncounterFee.__table__  # type: ignore[attr-defined]
DIAGNOSES = EncounterDiagnoses.__table__  # type: ignore[attr-defined]
REGISTRATIONS = {"2201": "门诊挂号", "2401": "入院办理"}


class EncounterError(Refusal):
    """A request about an encounter that cannot be done; `code` names why."""


def mdtrt_id_of(msgid: str) -> str:
    return "MD" + msgid[-28:]


def open_encounter(conn: Connection, c: Claim) -> str:
    """Called when the insured city accepted a registration; the same msgid opens one encounter."""
    mdtrt_id = mdtrt_id_of(c.msgid)
    if conn.execute(select(ENCOUNTERS.c.mdtrt_id).where(ENCOUNTERS.c.mdtrt_id == mdtrt_id)).first() is None:
        conn.execute(insert(ENCOUNTERS).values(
            mdtrt_id=mdtrt_id, fixmedins_code=c.fixmedins_code, psn_no=c.psn_no, insuplc_admdvs=c.insuplc_admdvs,
            mdtrtarea_admvs=c.mdtrtarea_admvs, insutype=c.insutype, med_type=c.med_type,
            mdtrt_cert_type=c.mdtrt_cert_type, dise_codg=c.dise_codg, begntime=c.begntime, status="open",
            created_ms=now_ms()))
        if c.diagnoses:
            _keep_diagnoses(conn, mdtrt_id, c.diagnoses, replace=False)
    return mdtrt_id


def _keep_diagnoses(conn: Connection, mdtrt_id: str, diagnoses: list[Diagnosis], replace: bool) -> None:
    body = orjson.dumps([d.model_dump(mode="json") for d in diagnoses])
    if replace:
        conn.execute(delete(DIAGNOSES).where(DIAGNOSES.c.mdtrt_id == mdtrt_id))
    conn.execute(insert(DIAGNOSES).values(mdtrt_id=mdtrt_id, diagnoses=body, updated_ms=now_ms()))


def describe(conn: Connection, fixmedins_code: str, mdtrt_id: str, psn_no: str, med_type: str,
             dise_codg: str | None, diagnoses: list[Diagnosis]) -> int:
    """2203: an open outpatient encounter's med_type, 病种 and diagnoses, replacing what was said
    before. The number of diagnoses kept. In the caller's transaction."""
    e = _mine(conn, fixmedins_code, mdtrt_id, psn_no)
    if e["status"] != "open":
        raise EncounterError("ENCOUNTER_CLOSED", f"就诊 {mdtrt_id} 状态为 {e['status']}，不能再上传就诊信息")
    if is_inpatient(str(e["med_type"])) or is_inpatient(med_type):
        raise EncounterError("NOT_OUTPATIENT", f"2203 只用于门诊就诊：就诊 {mdtrt_id} 为住院 (med_type {e['med_type']})，"
                             f"医疗类别 {med_type} 不能用于门诊；住院信息请用 2401/2403")
    conn.execute(update(ENCOUNTERS).where(ENCOUNTERS.c.mdtrt_id == mdtrt_id).values(
        med_type=med_type, dise_codg=dise_codg or e["dise_codg"]))
    _keep_diagnoses(conn, mdtrt_id, diagnoses, replace=True)
    return len(diagnoses)



def _mine(conn: Connection, fixmedins_code: str, mdtrt_id: str, psn_no: str | None = None) -> dict[str, object]:
    row = conn.execute(select(ENCOUNTERS).where(ENCOUNTERS.c.mdtrt_id == mdtrt_id)).mappings().first()
    if row is None or row["fixmedins_code"] != fixmedins_code or (psn_no and row["psn_no"] != psn_no):
        raise EncounterError("ENCOUNTER_UNKNOWN",
                             f"本机构没有就诊 {mdtrt_id}（人员 {psn_no or '-'}）：请先办理挂号/入院 (2201/2401)")
    return dict(row)


def upload(conn: Connection, fixmedins_code: str, mdtrt_id: str, lines: list[FeeLine], hospital: Hospital,
           catalogue: dict[str, CatalogueItem]) -> list[FeeSplit]:
    """In the caller's transaction (with the msgid's answer: `remember`)."""
    e = _mine(conn, fixmedins_code, mdtrt_id)
    if e["status"] != "open":
        raise EncounterError("ENCOUNTER_CLOSED", f"就诊 {mdtrt_id} 状态为 {e['status']}，不能再上传费用")
    have = {r[0] for r in conn.execute(select(FEES.c.feedetl_sn).where(FEES.c.mdtrt_id == mdtrt_id))}
    dup = sorted(have & {ln.feedetl_sn for ln in lines})
    if dup:
        raise EncounterError("FEE_DUPLICATE", f"费用明细流水号 {', '.join(dup)} 已上传；如需修改请先撤销 (2205/2302)")
    splits = [split_line(ln, catalogue.get(ln.med_list_codg), hospital.hosp_lv, str(e["med_type"]))
              for ln in lines]
    conn.execute(insert(FEES), [
        {"mdtrt_id": mdtrt_id, "feedetl_sn": ln.feedetl_sn, "line": ln.model_dump_json().encode(),
         "split": sp.model_dump_json().encode(), "created_ms": now_ms()} for ln, sp in zip(lines, splits, strict=True)])
    return splits


def cancel_fees(conn: Connection, fixmedins_code: str, mdtrt_id: str, feedetl_sn: str | None,
                chrg_bchno: str | None = None) -> int:
    """Take back uploaded lines: one by feedetl_sn, a charge batch by chrg_bchno, every line with
    either "0000". In the caller's transaction."""
    e = _mine(conn, fixmedins_code, mdtrt_id)
    if e["status"] != "open":
        raise EncounterError("ENCOUNTER_CLOSED", f"就诊 {mdtrt_id} 状态为 {e['status']}，费用不能撤销")
    q = delete(FEES).where(FEES.c.mdtrt_id == mdtrt_id)
    if chrg_bchno not in (None, "0000"):
        sns = [sn for sn, line in conn.execute(select(FEES.c.feedetl_sn, FEES.c.line).where(FEES.c.mdtrt_id == mdtrt_id))
               if orjson.loads(line).get("chrg_bchno") == chrg_bchno]
        q = q.where(FEES.c.feedetl_sn.in_(sns))
    elif feedetl_sn not in (None, "0000"):
        q = q.where(FEES.c.feedetl_sn == feedetl_sn)
    n = conn.execute(q).rowcount
    if not n:
        what = f"收费批次 {chrg_bchno}" if chrg_bchno not in (None, "0000") else f"费用明细 {feedetl_sn or '0000'}"
        raise EncounterError("FEE_UNKNOWN", f"就诊 {mdtrt_id} 没有未结算的{what}")
    return int(n)


def cancel_encounter(conn: Connection, fixmedins_code: str, mdtrt_id: str, psn_no: str) -> None:
    """In the caller's transaction."""
    e = _mine(conn, fixmedins_code, mdtrt_id, psn_no)
    if e["status"] != "open":
        raise EncounterError("ENCOUNTER_CLOSED", f"就诊 {mdtrt_id} 状态为 {e['status']}，不能撤销挂号")
    conn.execute(update(ENCOUNTERS).where(ENCOUNTERS.c.mdtrt_id == mdtrt_id).values(status="cancelled"))
    conn.execute(delete(FEES).where(FEES.c.mdtrt_id == mdtrt_id))


def for_settlement(engine: Engine, fixmedins_code: str, mdtrt_id: str, psn_no: str) -> tuple[dict[str, object],
                                                                                             list[FeeLine]]:
    """The encounter (with its diagnoses, under "diagnoses") and its uploaded lines, for a
    settlement that names the mdtrt_id."""
    with engine.connect() as conn:
        e = _mine(conn, fixmedins_code, mdtrt_id, psn_no)
        if e["status"] != "open":
            raise EncounterError("ENCOUNTER_CLOSED", f"就诊 {mdtrt_id} 状态为 {e['status']}，不能结算")
        lines = [FeeLine.model_validate(orjson.loads(r[0])) for r in
                 conn.execute(select(FEES.c.line).where(FEES.c.mdtrt_id == mdtrt_id).order_by(FEES.c.feedetl_sn))]
        kept = conn.execute(select(DIAGNOSES.c.diagnoses).where(DIAGNOSES.c.mdtrt_id == mdtrt_id)).scalar()
        e["diagnoses"] = [Diagnosis.model_validate(d) for d in orjson.loads(kept)] if kept else []
    if not lines:
        raise EncounterError("NO_FEES", f"就诊 {mdtrt_id} 还没有上传费用明细 (2204/2301)")
    return e, lines


def mark_settled(conn: Connection, mdtrt_id: str) -> None:
    conn.execute(update(ENCOUNTERS).where(ENCOUNTERS.c.mdtrt_id == mdtrt_id, ENCOUNTERS.c.status == "open")
                 .values(status="settled"))


def begin_date(e: dict[str, object]) -> date:
    d = e["begntime"]
    return d if isinstance(d, date) else date.fromisoformat(str(d))


CLAIMS = ClaimRecord.__table__  # type: ignore[attr-defined]


def knows_person(engine: Engine, fixmedins_code: str, psn_no: str, since_ms: int) -> bool:
    """Whether the person presented themselves at this hospital: a request of theirs answered
    since `since_ms` (a 1101 with a credential, a registration, a settlement), or an open encounter."""
    answered = (select(CLAIMS.c.msgid).where(CLAIMS.c.fixmedins_code == fixmedins_code, CLAIMS.c.psn_no == psn_no,
                                             CLAIMS.c.status == "settled", CLAIMS.c.created_ms >= since_ms).limit(1))
    staying = (select(ENCOUNTERS.c.mdtrt_id).where(ENCOUNTERS.c.fixmedins_code == fixmedins_code,
                                                   ENCOUNTERS.c.psn_no == psn_no, ENCOUNTERS.c.status == "open").limit(1))
    with engine.connect() as conn:
        return conn.execute(answered).first() is not None or conn.execute(staying).first() is not None


LOCAL_ANSWERS = LocalAnswer.__table__  # type: ignore[attr-defined]


def answered(engine: Engine, msgid: str, fixmedins_code: str) -> bytes | None:
    """The answer already given to this msgid by this hospital, if any."""
    with engine.connect() as conn:
        row = conn.execute(select(LOCAL_ANSWERS.c.answer).where(
            LOCAL_ANSWERS.c.msgid == msgid, LOCAL_ANSWERS.c.fixmedins_code == fixmedins_code)).first()
    return bytes(row[0]) if row else None


def remember(conn: Connection, msgid: str, fixmedins_code: str, infno: str, answer: bytes) -> None:
    """Keep the answer to this msgid, in the transaction of the effect it answers: both or neither."""
    conn.execute(insert(LOCAL_ANSWERS).values(msgid=msgid, fixmedins_code=fixmedins_code, infno=infno,
                                              answer=answer, created_ms=now_ms()))
