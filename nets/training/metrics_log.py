"""metrics.jsonl: one JSON row per optimizer step ({"step", "epoch", "loss", "lr"}), appended by
rank 0 at each log step, cut back to the checkpoint's step when a run resumes."""

from __future__ import annotations

import json
from pathlib import Path

from nets.files import atomic_write

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: Path, upto: int | None = None) -> list[dict]:
    """The rows of metrics.jsonl (up to step ``upto``); a last line cut short by a kill is dropped."""
    if not path.exists():
        return []
    *lines, _torn = path.read_text().split("\n")  # _torn: "" unless an append was cut short
    rows = [json.loads(line) for line in lines if line.strip()]
    return [r for r in rows if upto is None or r["step"] <= upto]


def write_metrics(path: Path, rows: list[dict]) -> None:
    """Replace metrics.jsonl atomically (temp file, fsync, rename): a kill mid-way loses no rows."""
    atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows).encode()))


def append_metrics(path: Path, rows: list[dict]) -> None:
    """Append ``rows``; an OSError (a full disk) propagates, and a torn last line is dropped by
    :func:`read_metrics` on the next start."""
    with path.open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
