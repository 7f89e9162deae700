"""A local JSONL spool of tracking calls that could not reach the MLflow server.

Each line is one call: ``{"op": "metrics" | "params" | "artifact" | "terminate" |
"create_run" | "register", "run": RUN_ID, ...}``. Lines are appended with a flush and fsync,
so a crashed process leaves every call it spooled; ``rewrite`` replaces the file atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

Record = dict[str, Any]

PENDING = "pending-"  # prefix of a run id that exists only in a spool (the server was down at start-up)
MAIN_NAME = "mlflow_spool.jsonl"


def spool_files(folder: Path) -> list[Path]:
    """The spools of a run folder: the driver's first, then the workers' (rank order)."""
    main = folder / MAIN_NAME
    others = sorted(p for p in folder.glob("mlflow_spool*.jsonl") if p != main)
    return ([main] if main.exists() else []) + others


class Spool:
    """Append-only JSONL file of pending tracking calls."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def append(self, record: Record) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[Record]:
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut short by a crash
                    continue
        return records

    def rewrite(self, records: list[Record]) -> None:
        if not records:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, default=str) + "\n" for r in records))
        tmp.replace(self.path)

    def count(self) -> int:
        return len(self.read())
