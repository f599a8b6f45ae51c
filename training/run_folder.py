"""The run folder across kills and resumes: leftovers of interrupted writes, and a metrics log without repeats.

A resumed run redoes the iterations after its checkpoint, and resume is bit-exact, so the rows ``metrics.jsonl``
already holds for them describe a state that was thrown away and are about to be written again. :class:`MetricsLog`
drops them when the run starts (as TensorBoard's ``purge_step`` does for its own events) and writes one
``{"event": "resume", ...}`` row in their place, so the log reads as one run with each iteration once and says
where it was resumed and how many rows it replaced.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mfuser_model.fileio import atomic_path, remove_stale_temp_files
from training.checkpointing import remove_stale_checkpoint_temps

__all__ = ["MetricsLog", "remove_interrupted_writes"]

_log = logging.getLogger(__name__)


def remove_interrupted_writes(run_dir: Path, ckpt_dir: Path, resume: Path | None) -> list[Path]:
    """Delete what killed writes left in the run folder, its checkpoints and the resume checkpoint's folder."""
    removed = remove_stale_temp_files(run_dir)
    if removed:
        _log.info("%s: removed %d temporary file(s) of interrupted writes", run_dir, len(removed))
    for folder in {ckpt_dir, *([resume.parent] if resume is not None else [])}:
        removed += remove_stale_checkpoint_temps(folder)
    return removed


class MetricsLog:
    """``metrics.jsonl``: one JSON object per logged iteration (and one per resume), appended as training runs."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def begin(self, start: int, resume: Path | None) -> int:
        """Start logging at iteration ``start``: drop rows of later iterations, mark the resume; returns the rows
        dropped. A row cut short by a kill is dropped too."""
        kept: list[str] = []
        dropped = 0
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    dropped += 1
                    continue
                if isinstance(row, dict) and isinstance(row.get("iteration"), int) and row["iteration"] > start:
                    dropped += 1
                else:
                    kept.append(line)
        if resume is None and not dropped:
            return 0
        marker = {"event": "resume" if resume is not None else "restart", "iteration": start,
                  "checkpoint": str(resume) if resume is not None else None, "dropped_rows": dropped,
                  "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        with atomic_path(self.path) as tmp:
            Path(tmp).write_text("".join(f"{line}\n" for line in [*kept, json.dumps(marker)]), encoding="utf-8")
        if dropped:
            _log.info("%s: dropped %d row(s) of iterations after %d, which this run redoes", self.path, dropped, start)
        return dropped

    def append(self, row: dict[str, Any]) -> None:
        """Append one row; NaN and infinities (the mIoU of an empty set) become null, so the line stays JSON."""
        clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(clean) + "\n")
