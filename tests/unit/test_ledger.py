"""What a reversal gives back, decided without a database."""

from __future__ import annotations

import orjson

from services.settle.benefits import Accumulators
from services.settle.ledger import reversal_of

ORIGINAL = {"setl_id": "S1", "msgid": "M1", "psn_no": "P1", "insuplc_admdvs": "360100", "mdtrtarea_admvs": "440100",
            "fixmedins_code": "H44010400001", "year": 2026, "insutype": "310", "medfee_fen": 81200,
            "fund_fen": 16546, "hifp_fen": 16546, "acct_fen": 10000, "cash_fen": 54654,
            "acc_delta": orjson.dumps({"dedc_used_op": 30000, "hifp_paid_op": 16546, "compliant_selfpay": 7000})}


def test_a_reversal_gives_back_exactly_what_the_settlement_took() -> None:
    now = Accumulators(dedc_used_op=45000, hifp_paid_op=20000, compliant_selfpay=9000, critical_paid=5)
    r = reversal_of(ORIGINAL, now, balance_fen=2500)
    assert r.accumulators == Accumulators(dedc_used_op=15000, hifp_paid_op=3454, compliant_selfpay=2000,
                                          critical_paid=5)  # what later settlements added stays
    assert r.balance_fen == 12500  # the account gets back what it paid
    assert {f: r.row[f] for f in ("medfee_fen", "fund_fen", "hifp_fen", "acct_fen", "cash_fen")} == {
        "medfee_fen": -81200, "fund_fen": -16546, "hifp_fen": -16546, "acct_fen": -10000, "cash_fen": -54654}
    assert r.row["refd_setl_id"] == "S1" and orjson.loads(r.row["acc_delta"]) == {
        "dedc_used_op": -30000, "hifp_paid_op": -16546, "compliant_selfpay": -7000}
    assert r.row["psn_no"] == "P1" and r.row["fixmedins_code"] == "H44010400001"


def test_a_reversal_without_accumulators_or_account_payment_touches_neither() -> None:
    r = reversal_of(ORIGINAL | {"acct_fen": 0}, None, balance_fen=700)
    assert r.accumulators is None and r.balance_fen == 700
