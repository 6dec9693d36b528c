"""The JSONL image-caption index: the one format the trainer reads.

One JSON object per line. Required: "image" (path relative to the index's directory) and
"caption" (a string) or "captions" (a list of strings, one is sampled per step). Any other
keys (the emoji builder adds concept, label, style, group, subgroup, split) pass through;
concept_key and concept_labels read the concept and its class name from them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def read_index(path: str | os.PathLike) -> list[dict]:
    """Read an index.jsonl; each record gets "captions" (a list) even if it had "caption"."""
    records = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            if "caption" in record and "captions" not in record:
                record["captions"] = [record.pop("caption")]
            if "image" not in record or not record.get("captions"):
                raise ValueError(f'{path}:{number}: a record needs "image" and a non-empty "caption(s)"')
            records.append(record)
    return records


def write_index(path: str | os.PathLike, records: list[dict]) -> None:
    """Write records atomically (a reader never sees half an index)."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(partial, path)


def concept_key(record: dict) -> str:
    """The emoji builder's concept; for other datasets each image is its own concept."""
    return record.get("concept") or record["image"]


def concept_labels(records: list[dict]) -> dict[str, str]:
    """concept key -> class name (the record's label, else its first caption), in index order."""
    labels: dict[str, str] = {}
    for record in records:
        labels.setdefault(concept_key(record), record.get("label") or record["captions"][0])
    return labels
