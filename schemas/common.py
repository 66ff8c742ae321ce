"""Shared field types of the wire contracts: region codes, money, enumerations."""

from __future__ import annotations

import itertools
import secrets
import uuid
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, Field

Admdvs = Annotated[str, Field(pattern=r"^\d{6}$", description="6-digit 医保区划 code")]
FixmedinsCode = Annotated[
    str, Field(pattern=r"^[HP]\d{11}$", description="定点医药机构编号: H + 6-digit 区划 + 5-digit 顺序号")
]
Yuan = Annotated[Decimal, Field(max_digits=16, decimal_places=2, description="amount in yuan, 2 decimals")]
UnitPrice = Annotated[Decimal, Field(max_digits=16, decimal_places=6, description="unit price in yuan, up to 6 decimals")]
Quantity = Annotated[Decimal, Field(max_digits=16, decimal_places=4, description="count, up to 4 decimals")]


class Wire(BaseModel):
    """Base of events: unknown fields are ignored so producers may add optional fields."""

    model_config = ConfigDict(extra="ignore", frozen=False)
    # sent without the fields that hold their defaults (read back, they take them again): for
    # events only the platform reads, whose many empty fields would be most of their bytes
    compact: ClassVar[bool] = False


class Command(BaseModel):
    """Base of commands: unknown fields are an error that names the field."""

    model_config = ConfigDict(extra="forbid")


class Insutype(StrEnum):
    """险种类型 (national dictionary insutype)."""

    EMPLOYEE = "310"  # 职工基本医疗保险
    CIVIL_SERVANT = "320"  # 公务员医疗补助
    LARGE_AMOUNT = "330"  # 大额医疗费用补助 (职工)
    RETIRED_CADRE = "340"  # 离休人员医疗保障
    RESIDENT = "390"  # 城乡居民基本医疗保险
    RESIDENT_CRITICAL = "392"  # 城乡居民大病医疗保险
    MATERNITY = "510"  # 生育保险

    @property
    def family(self) -> str:
        """Scheme family for duplicate detection: one person, one basic scheme (职工 or 居民)."""
        return "basic" if self in BASIC_INSUTYPES else self.value


BASIC_INSUTYPES = frozenset({Insutype.EMPLOYEE, Insutype.RESIDENT})


class HardshipType(StrEnum):
    """困难群众身份 that medical assistance (医疗救助) distinguishes."""

    TEKUN = "TEKUN"  # 特困人员
    DIBAO = "DIBAO"  # 低保对象
    DIBAO_EDGE = "DIBAO_EDGE"  # 低保边缘家庭成员
    RELAPSE_RISK = "RELAPSE_RISK"  # 防止返贫监测对象 / 返贫致贫人口
    ORPHAN = "ORPHAN"  # 孤儿、事实无人抚养儿童
    SEVERE_DISABILITY = "SEVERE_DISABILITY"  # 重度残疾人


class PsnType(StrEnum):
    """人员类别: 在职 or 退休 (the two the benefit rules distinguish)."""

    IN_SERVICE = "11"
    RETIRED = "21"


class FilingType(StrEnum):
    """异地就医备案类型: the six national filing sub-types (reference §2.3)."""

    RETIRED_RELOCATED = "RETIRED_RELOCATED"  # 异地安置退休人员
    LONG_TERM_RESIDENT = "LONG_TERM_RESIDENT"  # 异地长期居住人员
    WORKING_REMOTE = "WORKING_REMOTE"  # 常驻异地工作人员
    REFERRAL = "REFERRAL"  # 异地转诊就医人员
    EMERGENCY = "EMERGENCY"  # 异地急诊抢救人员
    OTHER_TEMP = "OTHER_TEMP"  # 其他临时外出就医人员

    @property
    def long_term(self) -> bool:
        return self in LONG_TERM_FILINGS


LONG_TERM_FILINGS = frozenset(
    {FilingType.RETIRED_RELOCATED, FilingType.LONG_TERM_RESIDENT, FilingType.WORKING_REMOTE}
)


_MSG_SEQ: dict[str, itertools.count[int]] = {}


def new_msgid(fixmedins_code: str) -> str:
    """发送方报文ID as a hospital makes it: fixmedins_code(12) + yyyyMMddHHmmss(14) + seq(4).

    The sequence counts per hospital in this process, so two requests of one second differ
    (random digits collided about once per bench run)."""
    seq = next(_MSG_SEQ.setdefault(fixmedins_code, itertools.count(secrets.randbelow(10**4))))
    return f"{fixmedins_code}{datetime.now():%Y%m%d%H%M%S}{seq % 10**4:04d}"


RESULT_ID_NAMESPACE = uuid.UUID("6f1c2a52-5d0e-4f43-9a53-2b1f0f3e8c11")


def result_ce_id(msgid: str) -> str:
    """The ce_id of a claim's result on settle.hospital and settle.completed: the same for every
    copy of it (a re-publish after a crash), so any consumer can drop a repeat."""
    return str(uuid.uuid5(RESULT_ID_NAMESPACE, msgid))
