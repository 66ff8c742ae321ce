"""Reference data of the settle service: hospitals (shared, in schemas/refdata), the catalogue, policies."""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from schemas.filing_rules import FilingRules
from schemas.regions import designated_hospitals
from services.settle.benefits import Policy
from services.settle.clearing import ADVANCE_FILE, Thresholds
from services.settle.domain import CatalogueItem, Hospital

REFDATA = Path(__file__).parent / "refdata"


@dataclass(frozen=True)
class Reference:
    hospitals: dict[str, Hospital]
    catalogue: dict[str, CatalogueItem]
    policies: list[Policy]
    filing_rules: FilingRules
    advance: Thresholds

    @classmethod
    def load(cls, directory: Path = REFDATA, advance_file: Path = ADVANCE_FILE) -> Reference:
        def read(name: str) -> dict:
            return json.loads((directory / name).read_text(encoding="utf-8"))

        hospitals = {code: Hospital(**h) for code, h in designated_hospitals().items()}
        catalogue = {
            i["code"]: CatalogueItem(
                code=i["code"], name=i["name"], chrgitm_lv=i["chrgitm_lv"],
                selfpay_prop=Decimal(i["selfpay_prop"]),
                pric_uplmt_amt=Decimal(i["pric_uplmt_amt"]) if i["pric_uplmt_amt"] else None,
                lmt_gend=i["lmt_gend"], med_chrgitm_type=i["med_chrgitm_type"],
                lmt_age_min=i.get("lmt_age_min"), lmt_age_max=i.get("lmt_age_max"),
                lmt_hosp_lv=i.get("lmt_hosp_lv"), lmt_scope=i.get("lmt_scope"),
            )
            for i in read("catalogue.json")["items"]
        }
        policies = [Policy.from_json(p) for p in read("policies.json")["policies"]]
        return cls(hospitals, catalogue, policies, FilingRules.load(), Thresholds.load(advance_file))
