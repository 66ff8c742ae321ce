"""Filing rules shared by the filing service (who may file) and the insured city (who is covered).

Loaded from refdata/filing_rules.json, or the file named by YIBAO_FILING_RULES.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from schemas.common import FilingType

RULES_FILE = Path(__file__).parent / "refdata" / "filing_rules.json"


@dataclass(frozen=True)
class PairRule:
    insured: str  # province xx0000
    treat: str
    filing_required: bool
    deemed_type: FilingType | None = None
    note: str = ""


@dataclass(frozen=True)
class FilingRules:
    min_temp_months: int = 6
    emergency_valid_days: int = 30
    min_holding_months: int = 6
    late_filing_max_days: int = 180
    referral_min_hosp_lv: str = "2"
    long_term_materials: dict[str, list[str]] = field(default_factory=dict)
    intra_province_filing_required: bool = False
    cross_province_filing_required: bool = True
    pairs: tuple[PairRule, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.min_holding_months <= 6:
            raise ValueError(f"min_holding_months {self.min_holding_months}: 原则上不超过6个月 (0–6)")
        if self.min_temp_months < 6:
            raise ValueError(f"min_temp_months {self.min_temp_months}: 临时外出备案有效期不少于6个月")

    @classmethod
    def load(cls, path: Path | None = None) -> FilingRules:
        path = path or Path(os.environ.get("YIBAO_FILING_RULES") or RULES_FILE)
        raw = {k: v for k, v in json.loads(path.read_text(encoding="utf-8")).items() if not k.startswith("_")}
        pairs = tuple(PairRule(insured=p["insured"], treat=p["treat"], filing_required=p["filing_required"],
                               deemed_type=FilingType(p["deemed_type"]) if p.get("deemed_type") else None,
                               note=p.get("note", "")) for p in raw.pop("pairs", []))
        return cls(**raw, pairs=pairs)

    def pair(self, insured_admdvs: str, treat_admdvs: str) -> PairRule | None:
        ip, tp = insured_admdvs[:2] + "0000", treat_admdvs[:2] + "0000"
        return next((p for p in self.pairs if p.insured == ip and p.treat == tp), None)

    def filing_required(self, insured_admdvs: str, treat_admdvs: str) -> bool:
        """Does treatment in `treat` need a filing by someone insured in `insured`? (same region: never)"""
        if insured_admdvs == treat_admdvs:
            return False
        rule = self.pair(insured_admdvs, treat_admdvs)
        if rule is not None:
            return rule.filing_required
        if insured_admdvs[:2] == treat_admdvs[:2]:
            return self.intra_province_filing_required
        return self.cross_province_filing_required

    def deemed_type(self, insured_admdvs: str, treat_admdvs: str) -> FilingType | None:
        """The filing type a no-filing-needed cross-province pair counts as (for the benefit reduction)."""
        rule = self.pair(insured_admdvs, treat_admdvs)
        return rule.deemed_type if rule and not rule.filing_required else None
