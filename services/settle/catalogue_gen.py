"""Generate the treatment-location catalogue (就医地目录) in the national code formats.

`python -m services.settle.catalogue_gen` rewrites refdata/catalogue.json: the hand-written items
that tests and the demo name (kept as they are) plus generated drugs (23-character codes, X 西药 /
Z 中成药), medical services (15 characters, "00" + 9-digit 价格项目 + 4) and consumables (20
characters, "C" …), with 甲/乙/丙 categories, 先行自付 ratios, price caps and restrictions
(限性别, 限年龄, 限医院级别, 限门诊/住院). Deterministic: the same seed gives the same file.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "refdata" / "catalogue.json"
ATC = ["A02BC", "A10BA", "A10BB", "B01AC", "C01DA", "C07AB", "C08CA", "C09AA", "C09CA", "C10AA", "J01CA",
       "J01DC", "J01DD", "J01FA", "J01MA", "L01XC", "L04AX", "M01AE", "N02BE", "N05BA", "R03AC", "R03DC",
       "R05CB", "R06AX", "G03AC", "G04CA", "H02AB", "S01AA"]
TCM = ["A01AA", "A04AA", "A05BA", "A06AB", "A08AA", "A12CA", "B02AA"]
FORMS = ["A001", "A002", "B001", "B002", "C001", "D001", "E001"]  # 片剂, 含片, 胶囊, 缓释胶囊, 注射液, 颗粒, 口服液
DRUG_NAMES = ["片", "胶囊", "注射液", "颗粒", "缓释片", "口服液"]
SERVICE_GROUPS = [("0011", "诊查"), ("0012", "护理"), ("0025", "检验"), ("0021", "放射"), ("0033", "超声"),
                  ("0031", "手术"), ("0034", "康复"), ("0041", "中医")]
MED_TYPE = {"drug": "09", "tcm": "11", "service": "05", "consumable": "08"}


def _category(r: random.Random) -> tuple[str, str]:
    x = r.random()
    if x < 0.45:
        return "01", "0"
    if x < 0.85:
        return "02", r.choice(["0.05", "0.10", "0.10", "0.15", "0.20", "0.30"])
    return "03", "1"


def _restrictions(r: random.Random, kind: str) -> dict[str, Any]:
    out: dict[str, Any] = {"lmt_gend": None, "lmt_age_min": None, "lmt_age_max": None, "lmt_hosp_lv": None,
                           "lmt_scope": None}
    x = r.random()
    if x < 0.03:
        out["lmt_gend"] = r.choice(["1", "2"])
    elif x < 0.07:
        if r.random() < 0.5:
            out["lmt_age_max"] = r.choice([6, 14, 18])
        else:
            out["lmt_age_min"] = r.choice([18, 60, 65])
    elif x < 0.12:
        out["lmt_hosp_lv"] = r.choice(["2", "3"])
    elif x < 0.18 and kind in ("drug", "consumable", "service"):
        out["lmt_scope"] = "ip" if r.random() < 0.8 else "op"
    return out


def _price(r: random.Random, kind: str) -> float:
    lo, hi = {"drug": (0.2, 300), "tcm": (5, 120), "service": (5, 2000), "consumable": (1, 6000)}[kind]
    return round(r.uniform(lo, hi), 2)


def generate(seed: int = 2026, drugs: int = 1300, tcm: int = 250, services: int = 450,
             consumables: int = 200) -> list[dict[str, Any]]:
    r = random.Random(seed)
    items: list[dict[str, Any]] = []
    seen: set[str] = set()

    def add(code: str, name: str, kind: str) -> None:
        if code in seen:
            return
        seen.add(code)
        lv, prop = _category(r)
        price = _price(r, kind)
        items.append({"code": code, "name": name, "chrgitm_lv": lv, "selfpay_prop": prop,
                      "pric_uplmt_amt": f"{price:.2f}" if lv != "03" and r.random() < 0.7 else None,
                      "med_chrgitm_type": MED_TYPE[kind]} | _restrictions(r, kind))

    while len([i for i in items if i["code"][0] == "X"]) < drugs:  # X + ATC(5) + 通用名(4) + 剂型(4) + 规格(4) + 企业(5)
        code = (f"X{r.choice(ATC)}{chr(65 + r.randrange(26))}{r.randrange(1000):03d}{r.choice(FORMS)}"
                f"{r.randrange(1, 100):02d}{r.randrange(1, 100):02d}{r.randrange(100000):05d}")
        add(code, f"西药{len(items):04d}{r.choice(DRUG_NAMES)}", "drug")
    while len([i for i in items if i["code"][0] == "Z"]) < tcm:
        code = (f"Z{r.choice(TCM)}{chr(65 + r.randrange(26))}{r.randrange(1000):03d}{r.choice(FORMS)}"
                f"{r.randrange(1, 100):02d}{r.randrange(1, 100):02d}{r.randrange(100000):05d}")
        add(code, f"中成药{len(items):04d}{r.choice(DRUG_NAMES)}", "tcm")
    while len([i for i in items if i["code"][:2] == "00"]) < services:  # "00" + 9-digit 价格项目 + 4
        group, label = r.choice(SERVICE_GROUPS)
        add(f"00{group[2:]}{r.randrange(10**7):07d}{r.randrange(10000):04d}", f"{label}项目{len(items):04d}", "service")
    while len([i for i in items if i["code"][0] == "C"]) < consumables:  # "C" + 19
        add(f"C{r.randrange(10**19):019d}", f"医用耗材{len(items):04d}", "consumable")
    return items


def main() -> None:
    current = json.loads(OUT.read_text(encoding="utf-8"))
    curated = [i for i in current["items"] if not i.get("generated")]
    codes = {i["code"] for i in curated}
    generated = [i | {"generated": True} for i in generate() if i["code"] not in codes]
    OUT.write_text(json.dumps({"items": curated + generated}, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"{OUT}: {len(curated)} curated + {len(generated)} generated items")


if __name__ == "__main__":
    main()
