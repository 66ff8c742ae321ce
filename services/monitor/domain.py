"""Pure monitoring rules (智能监控规则库). One rule so far: R-GENDER 限定性别."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from schemas.events import SettlementResult

GEND_NAMES = {"1": "男", "2": "女"}


@dataclass(frozen=True)
class Hit:
    rule_id: str
    rule_name: str
    vola_cont: str
    vola_amt: Decimal
    sev_deg: str
    feedetl_sn: list[str]


def gender_rule(result: SettlementResult) -> Hit | None:
    """An item restricted to one gender, billed for a person of the other."""
    gend = result.outcome.psn_gend
    if not gend:
        return None
    lines = [s for s in result.split if s.lmt_gend and s.lmt_gend != gend]
    if not lines:
        return None
    names = ", ".join(f"{s.med_list_codg}(限{GEND_NAMES.get(s.lmt_gend or '', '?')}性)" for s in lines)
    return Hit(
        rule_id="R-GENDER", rule_name="限定性别",
        vola_cont=f"{GEND_NAMES.get(gend, gend)}性参保人结算了限定性别项目: {names}",
        vola_amt=sum((s.det_item_fee_sumamt for s in lines), Decimal("0.00")),
        sev_deg="明确违规", feedetl_sn=[s.feedetl_sn for s in lines],
    )


RULES = (gender_rule,)


def evaluate(result: SettlementResult) -> list[Hit]:
    return [h for rule in RULES if (h := rule(result)) is not None]
