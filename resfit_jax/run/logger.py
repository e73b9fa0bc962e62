"""Run metrics on disk: one JSONL file (the source of truth, read by experiments/plot.py) and
TensorBoard event files (tensorboardX), one subdirectory per seed.

JSONL rows are flat dicts with ``kind`` ("train" | "eval" | "phase"), ``seed`` and
``env_steps`` (main-loop env steps of that seed). On resume the file is cut back to the line
count stored in the checkpoint, so rows logged after it (and lost from the state) do not
appear twice.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class MetricsLogger:
    """``enabled=False`` (a multi-host run's other processes) writes nothing but counts rows."""

    def __init__(
        self, directory: str, seeds: list[int], keep_lines: int | None = None, enabled: bool = True
    ):
        from tensorboardX import SummaryWriter

        self.enabled = enabled
        self.lines = keep_lines or 0
        if not enabled:
            return
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, "metrics.jsonl")
        if keep_lines is not None and os.path.exists(self.path):
            with open(self.path) as f:
                lines = f.readlines()[:keep_lines]
            with open(self.path, "w") as f:
                f.writelines(lines)
        elif keep_lines is None and os.path.exists(self.path):
            os.remove(self.path)
        self.lines = keep_lines or 0
        self._file = open(self.path, "a")  # noqa: SIM115 (kept open for the run)
        self._tb = {s: SummaryWriter(os.path.join(directory, "tb", f"seed_{s}")) for s in seeds}

    def write(self, row: dict) -> None:
        if not self.enabled:
            self.lines += 1
            return
        row = {k: _clean(v) for k, v in row.items()}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        self.lines += 1
        tb = self._tb.get(row.get("seed"))
        if tb is not None:
            step = int(row.get("total_env_steps", row.get("env_steps", 0)))
            for k, v in row.items():
                if (
                    isinstance(v, (int, float))
                    and not isinstance(v, bool)
                    and v is not None
                    and k not in ("seed", "env_steps", "total_env_steps")
                ):
                    tb.add_scalar(f"{row['kind']}/{k}", v, step)

    def flush(self) -> None:
        if not self.enabled:
            return
        self._file.flush()
        for tb in self._tb.values():
            tb.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        for tb in self._tb.values():
            tb.close()


def read_metrics(path: str) -> list[dict]:
    """Rows of a metrics.jsonl (a run directory or the file itself)."""
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    rows, broken = [], []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if isinstance(row, dict):
                rows.append(row)
            else:
                broken.append(number)
    if broken:  # e.g. a line cut short by a crash; the file is left as it is
        print(
            f"warning: {path}: {len(broken)} line(s) are not metrics rows and were skipped "
            f"(line {', '.join(map(str, broken[:5]))}{', ...' if len(broken) > 5 else ''}).",
            file=sys.stderr,
        )
    return rows
