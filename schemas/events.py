"""Events and commands on the wire, one model per CloudEvents type (ce_type)."""

from __future__ import annotations

from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.common import (
    Admdvs,
    Command,
    FilingType,
    FixmedinsCode,
    HardshipType,
    Insutype,
    PsnType,
    Quantity,
    UnitPrice,
    Wire,
    Yuan,
)

FEN = Decimal("0.01")

# --- enrolment (参保登记) -------------------------------------------------------------


class Hardship(BaseModel):
    """One hardship identity (困难群众身份) with the dates it holds."""

    hardship_type: HardshipType
    begndate: date
    enddate: date | None = None


Period = Annotated[str, Field(pattern=r"^\d{4}(-\d{2})?$", description="contribution period: YYYY-MM or YYYY")]
PsnInsuStas = Literal["0", "1", "2", "3", "4"]


class EnrolmentUpdated(Wire):
    """参保状态变更: the whole current state of one enrolment (person, region, insutype).

    Carries state, not a diff, so any consumer can rebuild its view from the latest event.
    A person can hold several enrolments (a basic scheme plus supplementary ones; two regions
    for a moment during a transfer or a duplicate). The raw ID number never travels: only `psn_no`.
    """

    psn_no: str = Field(max_length=30)
    psn_name: str = Field(description="sealed (`sealed:v1:…`, AES-GCM): only enroll and settle hold the key; "
                                      "the settle API opens it for the hospital")
    gend: Literal["1", "2"] = Field(description="1 男, 2 女 (GB/T 2261.1)")
    brdy: date
    insuplc_admdvs: Admdvs
    insutype: Insutype
    psn_type: PsnType = PsnType.IN_SERVICE
    psn_insu_stas: PsnInsuStas = Field(
        description="0 未参保, 1 正常参保, 2 暂停参保, 3 无效, 4 终止参保"
    )
    begndate: date | None = Field(None, description="参保开始日期")
    benefit_from: date | None = Field(
        None, description="待遇享受开始日期: after the 居民 waiting period; a newborn's birth date")
    paid_through: date | None = Field(None, description="contributions paid, without a gap, up to this day")
    contrib_months: int = Field(0, description="累计缴费月数, carried over on transfer")
    emp_no: str | None = Field(None, description="单位编号 of the paying employer (职工)")
    voucher_active: bool = Field(False, description="医保电子凭证 activated")
    cvlserv_flag: bool = False
    acct_balc: Yuan = Field(Decimal("0"), description="个人账户 opening balance (职工)")
    hardship: list[Hardship] = []
    death_date: date | None = None
    cert_digest: str | None = Field(None, description="HMAC-SHA256 of the ID number (never the number itself), "
                                                      "for 1101 at the insured city")
    card_digest: str | None = Field(None, description="HMAC-SHA256 of the social-security card number and card_sn")
    change: str = Field("enrolled", description="enrolled | changed | transferred_out | transferred_in | "
                                                "duplicate_ended | deceased")
    version: int = Field(1, description="increases with every change; older versions are ignored")


class DuplicateEnrolment(BaseModel):
    insuplc_admdvs: Admdvs
    insutype: Insutype
    begndate: date | None = None


class DuplicateDetected(Wire):
    """重复参保: one person actively enrolled in two provinces in the same scheme family."""

    dup_id: str
    psn_no: str
    family: str = Field(description="basic (职工 310 / 居民 390 together) or the insutype")
    enrolments: list[DuplicateEnrolment]
    status: Literal["open", "resolved"]
    resolution: str | None = Field(None, description="which enrolment was ended, and why")
    detected_ms: int


class ContributionReminder(Wire):
    """断保提醒: a contribution for the current period is missing past its due day."""

    kind: Literal["person", "employer"]
    insuplc_admdvs: Admdvs
    period: Period
    due_date: date
    psn_no: str | None = None
    insutype: Insutype | None = None
    emp_no: str | None = None
    persons: int = Field(1, description="for an employer: how many employees' contributions are missing")
    message: str


class RecordRejected(Wire):
    """A provincial record that was not accepted; a copy with its bytes unchanged is in `<topic>.dlq`."""

    topic: str
    partition: int
    offset: int
    key: str | None = None
    ce_id: str | None = None
    ce_type: str | None = None
    ce_source: str | None = None
    record_id: str | None = Field(None, description="the province's own reference, when it could be read")
    reason_code: str
    reason: str


class OperatorAction(Wire):
    """What an operator did to the platform's topics (redrive, replay, reset), on `ops.audit`."""

    action: str = Field(description="dlq.redrive, …")
    by: str = Field(description="the operator's name, from their token")
    at_ms: int
    touched: list[str] = Field(description="the records acted on: topic/partition/offset")
    detail: dict[str, Any] = {}


# --- filing (异地就医备案) ------------------------------------------------------------


class FilingStatus(StrEnum):
    ACTIVE = "active"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class FilingUpdated(Wire):
    """备案变更: the whole current state of one cross-province filing."""

    fil_id: str
    psn_no: str
    insuplc_admdvs: Admdvs
    fil_type: FilingType
    target_admdvs: Admdvs = Field(description="备案地: a city or a whole province (xx0000)")
    begndate: date
    enddate: date | None = Field(None, description="None for long-term filings (长期有效)")
    status: FilingStatus
    commitment: bool = Field(False, description="承诺制: filed on a personal commitment")
    late: bool = Field(False, description="补办: filed after treatment began")
    referral_fixmedins_code: str | None = None
    change: Literal["approved", "changed", "cancelled", "expired"] = "approved"
    version: int = 1


# --- settlement (结算) ----------------------------------------------------------------


class DrugTrace(BaseModel):
    """drugtracinfo: one pack's 药品追溯码 (20 digits, starting with 8, on a domestic pack)."""

    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True)

    drug_trac_codg: str = Field(min_length=1, max_length=100)


class FeeLine(BaseModel):
    """feedetail: one fee line as the hospital uploads it, at the national precision: count to 4
    decimals, unit price to 6, the line's amount to the fen."""

    feedetl_sn: str = Field(max_length=30)
    med_list_codg: str = Field(max_length=50)
    cnt: Quantity = Field(gt=0)
    pric: UnitPrice = Field(ge=0)
    det_item_fee_sumamt: Yuan = Field(ge=0)
    chrg_bchno: str | None = Field(None, max_length=30, description="收费批次号: 2205 takes back a batch by it")
    fee_ocur_time: str | None = Field(None, max_length=19, pattern=r"^\d{4}-\d{2}-\d{2}( \d{2}:\d{2}(:\d{2})?)?$",
                                      description="费用发生时间 yyyy-MM-dd HH:mm:ss (the encounter's day when absent)")
    prd_days: Decimal | None = Field(None, ge=0, max_digits=8, decimal_places=2,
                                     description="周期天数: the days a prescription lasts")
    # a factory, not `[]`: a mutable default is deep-copied for every line validated
    drugtracinfo: list[DrugTrace] = Field(default_factory=list, max_length=500,
                                          description="药品追溯码 of the packs sold on this line")

    @property
    def trace_codes(self) -> list[str]:
        return [t.drug_trac_codg for t in self.drugtracinfo]

    @model_validator(mode="after")
    def _amount_is_cnt_times_pric(self) -> FeeLine:
        """The line's amount is cnt × pric rounded half up to the fen, a fen either way allowed
        (a HIS that rounds each dose, or computes in binary floating point, lands a fen off)."""
        expected = (self.cnt * self.pric).quantize(FEN, ROUND_HALF_UP)
        if abs(self.det_item_fee_sumamt - expected) > FEN:
            raise ValueError(f"fee line {self.feedetl_sn}: det_item_fee_sumamt {self.det_item_fee_sumamt} is not "
                             f"cnt × pric = {self.cnt} × {self.pric} = {expected}; send the line's amount to the fen")
        return self


class Diagnosis(BaseModel):
    """diseinfo: one diagnosis of an encounter (2203, 2401), as the hospital sends it (a code
    sent as a JSON number is read as its text)."""

    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True)

    diag_code: str = Field(min_length=1, max_length=20, description="诊断代码 (ICD-10 医保版)")
    diag_name: str = Field("", max_length=100)
    diag_type: str = Field("", max_length=3, description="诊断类别: 1 西医, 2 中医主病, 3 中医主证")
    diag_srt_no: int | None = Field(None, ge=0, description="诊断排序号")
    maindiag_flag: str = Field("", max_length=3, description="主诊断标志 (2401)")
    diag_time: str | None = Field(None, max_length=19)
    vali_flag: str = Field("1", max_length=3, description="有效标志")



class Claim(BaseModel):
    """A settlement request as it travels: the hospital envelope plus its input."""

    msgid: str
    infno: str
    fixmedins_code: FixmedinsCode
    mdtrtarea_admvs: Admdvs
    insuplc_admdvs: Admdvs
    psn_no: str
    insutype: Insutype
    med_type: str = Field(description="医疗类别: 11 普通门诊, 13 急诊, 14 门诊慢特病, 21 普通住院 …")
    dise_codg: str | None = Field(None, description="病种编码, required for 门诊慢特病 (M + 5 digits)")
    mdtrt_cert_type: Literal["01", "02", "03"] = "02"
    acct_used_flag: Literal["0", "1"] = "0"
    begntime: date
    fees: list[FeeLine] = []
    deadline_ms: int = Field(description="epoch milliseconds after which nobody waits")
    mdtrt_id: str | None = Field(None, description="the encounter (2201/2401) whose uploaded fees are settled")
    cert_digest: str | None = Field(None, description="1101 by ID card or social-security card: the keyed digest "
                                                      "of what was presented")
    orig_setl_id: str | None = Field(None, description="2208/2305: the settlement to reverse")
    orig_msgid: str | None = Field(None, description="2601 冲正: the request whose answer never arrived")
    ipt_otp_no: str | None = Field(None, description="2201/2401: the hospital's own outpatient/inpatient number, "
                                                     "echoed in the answer")
    diagnoses: list[Diagnosis] = Field([], description="2401: diseinfo, kept with the encounter it opens")


class FeeSplit(BaseModel):
    """The treatment city's split of one fee line against its catalogue (就医地目录)."""

    feedetl_sn: str
    med_list_codg: str
    det_item_fee_sumamt: Yuan
    chrgitm_lv: Literal["01", "02", "03"] = Field(description="01 甲, 02 乙, 03 丙/目录外")
    selfpay_prop: Decimal
    pric_uplmt_amt: Yuan | None = None
    fulamt_ownpay_amt: Yuan
    overlmt_amt: Yuan
    preselfpay_amt: Yuan
    inscp_scp_amt: Yuan
    lmt_gend: Literal["1", "2"] | None = Field(None, description="item restricted to this gender")
    lmt_age_min: int | None = Field(None, description="item restricted to this age or older")
    lmt_age_max: int | None = Field(None, description="item restricted to this age or younger")
    lmt_reason: str | None = Field(None, description="why the line fell to self-pay (限定支付范围)")


class HopLevel(StrEnum):
    CITY = "city"
    PROVINCE = "province"
    NATIONAL = "national"


class HopAction(StrEnum):
    SPLIT = "split"  # treatment city: hospital check and catalogue split
    RELAY = "relay"  # province / national: pass on
    COMPUTE = "compute"  # insured city: eligibility, benefits, ledger
    FINISH = "finish"  # treatment city: answer the hospital


class RouteStep(BaseModel):
    level: HopLevel
    admdvs: Admdvs
    action: HopAction


class HopStamp(BaseModel):
    """One entry of the hop trace: who handled the claim and when (epoch ms)."""

    level: HopLevel
    admdvs: str
    action: HopAction
    received_ms: int
    sent_ms: int
    attempt: int = 1


class Setlinfo(BaseModel):
    """setlinfo: the national settlement output (amounts in yuan)."""

    setl_id: str
    mdtrt_id: str
    psn_no: str
    psn_name: str = Field(description="sealed on the bus; the hospital's answer carries it opened")
    psn_cert_type: str = Field("01", description="人员证件类型: enrolment is by 居民身份证")
    certno: str = Field("", description="empty: ID numbers never travel; the hospital holds the one it read")
    naty: str = Field("", description="民族: not kept by yibao")
    gend: str
    brdy: str = ""
    age: int = 0
    insutype: str
    psn_type: str
    cvlserv_flag: str = "0"
    mdtrt_cert_type: str = ""
    med_type: str
    setl_time: str
    medfee_sumamt: Yuan
    fulamt_ownpay_amt: Yuan
    overlmt_selfpay: Yuan
    preselfpay_amt: Yuan
    inscp_scp_amt: Yuan
    act_pay_dedc: Yuan
    hifp_pay: Yuan
    pool_prop_selfpay: Decimal
    cvlserv_pay: Yuan = Decimal("0.00")
    hifes_pay: Yuan = Decimal("0.00")
    hifmi_pay: Yuan = Decimal("0.00")
    hifob_pay: Yuan = Decimal("0.00")
    hifdm_pay: Yuan = Decimal("0.00")
    maf_pay: Yuan = Decimal("0.00")
    oth_pay: Yuan = Decimal("0.00")
    fund_pay_sumamt: Yuan
    psn_part_amt: Yuan
    acct_pay: Yuan
    psn_cash_pay: Yuan
    hosp_part_amt: Yuan = Decimal("0.00")
    balc: Yuan
    acct_mulaid_pay: Yuan = Decimal("0.00")
    medins_setl_id: str
    clr_optins: Admdvs = Field(description="清算经办机构: the insured city's agency (reference §4.5)")
    clr_way: str = Field("", description="清算方式: empty until the national code list is known")
    clr_type: str


class Setldetail(BaseModel):
    fund_pay_type: str
    fund_pay_type_name: str
    inscp_scp_amt: Yuan
    crt_payb_lmt_amt: Yuan = Field(Decimal("0.00"), description="本次可支付限额金额: no such limit is applied")
    fund_payamt: Yuan
    setl_proc_info: str = ""


class Outcome(BaseModel):
    """What the insured city (or a failing hop) decided."""

    infcode: Literal[0, -1]
    err_code: str | None = Field(None, description="machine-readable reason of a refusal")
    err_msg: str | None = None
    setlinfo: Setlinfo | None = None
    setldetail: list[Setldetail] = []
    psn_gend: str | None = None
    data: dict[str, object] | None = Field(None, description="answers that are not a settlement (5206, 2601)")


class SettlementHop(Wire):
    """A claim on its way through the hop chain (settle.city / settle.province / settle.national)."""

    compact: ClassVar[bool] = True  # a 115-line inpatient hop: 60 KB in full, 41 KB without its defaults

    claim: Claim
    route: list[RouteStep]
    pos: int = Field(ge=0, description="index in route of the hop that must act on this message; while relays "
                     "pass it on, the yibao-pos header is newer (and yibao-relayed holds their stamps)")
    hosp_lv: Literal["1", "2", "3"] | None = Field(None, description="treating hospital's level")
    split: list[FeeSplit] | None = None
    outcome: Outcome | None = None
    trace: list[HopStamp] = []
    precheck: list[dict[str, Any]] = Field([], description="事中 pre-check flags (3102 result rows) for the answer")


class SettlementHopInTransit(Wire):
    """How a relay (province, national) reads a SettlementHop sent without routing headers: only
    the routing fields are validated; claim, split and outcome are not its business, and the next
    city hop validates them in full. A hop with routing headers is routed by them, its value
    unread (services/settle/hopreader.py)."""

    model_config = ConfigDict(extra="allow")

    route: list[RouteStep]
    pos: int = Field(ge=0)
    outcome: dict[str, Any] | None = None
    trace: list[HopStamp] = []


class LineFacts(BaseModel):
    """What monitoring needs of one fee line besides its split."""

    feedetl_sn: str
    cnt: Quantity
    pric: UnitPrice
    day: date
    prd_days: Decimal | None = None
    trac: list[str] = Field(default_factory=list)  # per line: no deep copy of a default


class ClaimFacts(BaseModel):
    """A settled encounter as the rules read it (事后): dates, diagnoses, the hospital's level and
    the lines' counts, days and trace codes."""

    med_type: str
    begntime: date
    endtime: date
    dise_codg: str | None = None
    diagnoses: list[str] = []
    hosp_lv: str | None = None
    lines: list[LineFacts] = []


class SettlementResult(Wire):
    """The final answer for one hospital request (settle.hospital, settle.completed, replies)."""

    msgid: str
    infno: str
    fixmedins_code: FixmedinsCode
    mdtrtarea_admvs: Admdvs
    insuplc_admdvs: Admdvs
    psn_no: str
    outcome: Outcome
    split: list[FeeSplit] = []
    trace: list[HopStamp] = []
    facts: ClaimFacts | None = Field(None, description="a settlement's encounter as monitoring reads it")


class AdvanceFundWarning(Wire):
    """预付金预警: the advance an insured province paid to a treatment province is being used up."""

    insured_prov: Admdvs
    treat_prov: Admdvs
    level: Literal["yellow", "red", "normal"] = Field(description="yellow ≥ 70 %, red ≥ 90 %, normal after a top-up")
    amount: Yuan = Field(description="the advance (预付金)")
    used: Yuan = Field(description="fund paid on the insured province's behalf since the last clearing")
    used_ratio: Decimal


# --- monitoring (智能监控) ------------------------------------------------------------


class AlertRaised(Wire):
    """A rule hit on a settled claim, for supervisors."""

    alert_id: str
    rule_id: str
    rule_name: str
    fixmedins_code: FixmedinsCode
    msgid: str
    psn_no: str
    setl_id: str | None = None
    vola_cont: str = Field(description="违规内容: what was found, in words")
    vola_amt: Yuan
    sev_deg: str = Field(description="严重程度: 明确违规 / 高度可疑 / 可疑")
    feedetl_sn: list[str] = []
    family: str = Field("", description="两库 class of the rule: 政策 / 管理 / 医疗")
    phase: Literal["precheck", "post", "aggregate", ""] = Field(
        "", description="事中 precheck, 事后 post (one claim), aggregate (a month's counts against the peers')")
    mdtrtarea_admvs: str = Field("", description="the treatment region (whose supervisors see it)")


# --- operations ---------------------------------------------------------------------------


class FaultsChanged(Wire):
    """Fault injection changed: every settle process applies the same list (ops.faults)."""

    faults: list[dict[str, object]] = Field(description="the whole list in force, as PUT /ops/faults shows it")


# --- commands accepted from provincial platforms and counters --------------------------


class RegisterPerson(Command):
    """人员登记: ID number (GB 11643) and name; the answer carries the issued psn_no."""

    certno: str = Field(min_length=18, max_length=18, description="18-character 公民身份号码")
    psn_name: str = Field(min_length=1, max_length=50)
    admdvs: Admdvs = Field(description="region issuing the person number")


class EnrolmentFields(Command):
    """What an enrolment record says, whoever sends it (a provincial platform or a counter)."""

    insuplc_admdvs: Admdvs
    insutype: Insutype
    psn_type: PsnType = PsnType.IN_SERVICE
    psn_insu_stas: PsnInsuStas = Field("1", description="0 未参保, 1 正常参保, 2 暂停参保, 3 无效, 4 终止参保")
    begndate: date | None = Field(None, description="参保开始日期 (default: enrol_date)")
    enrol_date: date | None = Field(None, description="办理日期: when the person enrolled (default: today)")
    paid_through: date | None = None
    missing_periods: list[Period] = Field([], description="past periods found unpaid (欠缴)")
    contrib_months: int = Field(0, ge=0, description="累计缴费月数 before this record")
    emp_no: str | None = Field(None, max_length=30)
    voucher_active: bool = True
    cvlserv_flag: bool = False
    acct_balc: Yuan = Field(Decimal("0"), ge=0)
    hardship: list[Hardship] = []
    death_date: date | None = None
    card_no: str | None = Field(None, pattern=r"^[A-Z0-9]{9}$", description="社会保障卡号 (9 characters)")
    card_sn: str | None = Field(None, pattern=r"^[0-9A-Za-z]{32}$", description="卡识别码 (32 characters)")


class EnrolPerson(EnrolmentFields):
    """参保登记 of a registered person, by psn_no."""

    psn_no: str


class EnrolmentRecord(EnrolmentFields):
    """A provincial platform's enrolment record: the person by ID number, registered if new."""

    record_id: str | None = Field(None, max_length=64, description="the province's own reference")
    certno: str = Field(min_length=18, max_length=18)
    psn_name: str = Field(min_length=1, max_length=50)


class TransferEnrolment(Command):
    """转移接续: end the enrolment in one pooling region and continue it in another."""

    record_id: str | None = Field(None, max_length=64)
    psn_no: str | None = None
    certno: str | None = Field(None, min_length=18, max_length=18)
    insutype: Insutype
    from_admdvs: Admdvs
    to_admdvs: Admdvs
    transfer_date: date
    psn_type: PsnType | None = None
    emp_no: str | None = None

    @model_validator(mode="after")
    def _who(self) -> TransferEnrolment:
        if not (self.psn_no or self.certno):
            raise ValueError("give psn_no or certno")
        if self.from_admdvs == self.to_admdvs:
            raise ValueError("from_admdvs and to_admdvs are the same pooling region")
        return self


class FileTreatment(Command):
    """异地就医备案: file a cross-province treatment."""

    record_id: str | None = Field(None, max_length=64, description="the province's own reference")
    psn_no: str
    insuplc_admdvs: Admdvs | None = Field(None, description="needed only if the person is enrolled in two regions")
    fil_type: FilingType
    target_admdvs: Admdvs
    begndate: date
    enddate: date | None = None
    commitment: bool = Field(False, description="承诺制: a personal commitment replaces the proof documents")
    materials: list[str] = Field([], description="proof documents handed in (居住证, 安置证明, 派驻证明 …)")
    referral_fixmedins_code: FixmedinsCode | None = Field(
        None, description="异地转诊: the insured region's hospital that issued the referral")


class ChangeFiling(Command):
    """备案变更: a new place, type or end date for an active filing."""

    fil_id: str
    target_admdvs: Admdvs | None = None
    fil_type: FilingType | None = None
    enddate: date | None = None


class CancelFiling(Command):
    """备案取消."""

    fil_id: str
    reason: str = ""


EVENT_TYPES: dict[str, type[BaseModel]] = {
    "yibao.enroll.EnrolmentUpdated.v1": EnrolmentUpdated,
    "yibao.enroll.DuplicateDetected.v1": DuplicateDetected,
    "yibao.enroll.ContributionReminder.v1": ContributionReminder,
    "yibao.ops.RecordRejected.v1": RecordRejected,
    "yibao.ops.OperatorAction.v1": OperatorAction,
    "yibao.filing.FilingUpdated.v1": FilingUpdated,
    "yibao.settle.SettlementHop.v1": SettlementHop,
    "yibao.settle.SettlementResult.v1": SettlementResult,
    "yibao.monitor.AlertRaised.v1": AlertRaised,
    "yibao.settle.AdvanceFundWarning.v1": AdvanceFundWarning,
    "yibao.ops.FaultsChanged.v1": FaultsChanged,
    "yibao.enroll.RegisterPerson.v1": RegisterPerson,
    "yibao.enroll.EnrolPerson.v1": EnrolPerson,
    "yibao.enroll.EnrolmentRecord.v1": EnrolmentRecord,
    "yibao.enroll.TransferEnrolment.v1": TransferEnrolment,
    "yibao.filing.FileTreatment.v1": FileTreatment,
    "yibao.filing.ChangeFiling.v1": ChangeFiling,
    "yibao.filing.CancelFiling.v1": CancelFiling,
}
_TYPE_OF = {model: name for name, model in EVENT_TYPES.items()}
_TYPE_OF[SettlementHopInTransit] = _TYPE_OF[SettlementHop]  # a reading of that type, not a type of its own


def event_type_of(model: type[BaseModel] | BaseModel) -> str:
    """The ce_type under which a model travels."""
    cls = model if isinstance(model, type) else type(model)
    return _TYPE_OF[cls]
