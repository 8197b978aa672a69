"""metrics.jsonl, the run's record of training: one JSON object per line, each with a ``step``
and a ``kind`` ("train" or "eval"). The one reader of that file; every layer above reads it here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..common.errors import InputError
from .checkpoint import warn

METRICS_FILE = "metrics.jsonl"


def read_records(path: Path, upto: int | None = None) -> list[str]:
    """The JSON lines of metrics.jsonl with step <= ``upto``; a torn last line (a killed write) is dropped
    with a warning naming the file, a damaged line elsewhere is a ValueError naming file and line."""
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    kept = []
    for i, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
            step = rec["step"]
        except (ValueError, TypeError, KeyError) as e:
            if i == len(lines):
                warn(f"{path}: dropped a half-written last line ({len(line)} characters) left by an interrupted run")
                break
            raise InputError(f"{path}:{i}: not a metrics record ({e}); remove or fix that line") from None
        if upto is None or step <= upto:
            kept.append(line)
    return kept


def load_records(path: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of metrics.jsonl as dicts (``read_records``' rules), only those of ``kind`` when given;
    [] when the file does not exist."""
    if not Path(path).is_file():
        return []
    records = [json.loads(line) for line in read_records(Path(path))]
    return records if kind is None else [r for r in records if r.get("kind") == kind]
