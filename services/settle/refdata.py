"""Reference data of the settle service: hospitals (shared, in schemas/refdata), the catalogue, policies."""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from schemas.filing_rules import FilingRules
from schemas.regions import designated_hospitals
from services.settle.auth import SCHEMES
from services.settle.benefits import Policy
from services.settle.clearing import ADVANCE_FILE, Thresholds
from services.settle.domain import CatalogueItem, Hospital
from services.settle.store import ACC_FIELDS

REFDATA = Path(__file__).parent / "refdata"


def load_catalogue(directory: Path = REFDATA) -> dict[str, CatalogueItem]:
    """The treatment-location catalogue (就医地目录) by item code; the monitor's rules read it too."""
    items = json.loads((directory / "catalogue.json").read_text(encoding="utf-8"))["items"]
    return {
        i["code"]: CatalogueItem(
            code=i["code"], name=i["name"], chrgitm_lv=i["chrgitm_lv"],
            selfpay_prop=Decimal(i["selfpay_prop"]),
            pric_uplmt_amt=Decimal(i["pric_uplmt_amt"]) if i["pric_uplmt_amt"] else None,
            lmt_gend=i["lmt_gend"], med_chrgitm_type=i["med_chrgitm_type"],
            lmt_age_min=i.get("lmt_age_min"), lmt_age_max=i.get("lmt_age_max"),
            lmt_hosp_lv=i.get("lmt_hosp_lv"), lmt_scope=i.get("lmt_scope"),
        )
        for i in items
    }


@dataclass(frozen=True)
class Reference:
    hospitals: dict[str, Hospital]
    catalogue: dict[str, CatalogueItem]
    policies: list[Policy]
    filing_rules: FilingRules
    advance: Thresholds
    cum_types: dict[str, dict[str, str]]  # insutype → accumulator → 5206 cum_type_code

    @classmethod
    def load(cls, directory: Path = REFDATA, advance_file: Path = ADVANCE_FILE) -> Reference:
        def read(name: str) -> dict:
            return json.loads((directory / name).read_text(encoding="utf-8"))

        hospitals = {code: Hospital(**h) for code, h in designated_hospitals().items()}
        for h in hospitals.values():
            if h.signature and h.signature not in SCHEMES:
                raise ValueError(f"hospitals.json, {h.fixmedins_code}: signature {h.signature!r} is not one of "
                                 f"{', '.join(SCHEMES)}")
        catalogue = load_catalogue(directory)
        policies = [Policy.from_json(p) for p in read("policies.json")["policies"]]
        cum_types = read("cum_types.json")["by_insutype"]
        for insutype, codes in cum_types.items():
            if missing := set(ACC_FIELDS) - set(codes):
                raise ValueError(f"cum_types.json, insutype {insutype}: no cum_type_code for {sorted(missing)}")
        return cls(hospitals, catalogue, policies, FilingRules.load(), Thresholds.load(advance_file), cum_types)
