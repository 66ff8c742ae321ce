"""Export the JSON Schema of every event type to schemas/json/<ce_type>.json."""

from __future__ import annotations

import json
from pathlib import Path

from schemas.events import EVENT_TYPES

JSON_DIR = Path(__file__).parent / "json"


def render(ce_type: str) -> str:
    schema = EVENT_TYPES[ce_type].model_json_schema(mode="serialization")
    schema["$id"] = f"https://yibao.example/schemas/{ce_type}.json"
    schema["x-ce-type"] = ce_type
    return json.dumps(schema, ensure_ascii=False, indent=2, sort_keys=True) + "\n"


def export(directory: Path = JSON_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for ce_type in sorted(EVENT_TYPES):
        path = directory / f"{ce_type}.json"
        path.write_text(render(ce_type), encoding="utf-8")
        written.append(path)
    return written
