"""Where a run's curves go: ``metrics.jsonl`` always, TensorBoard event files when installed.

Both receive the same records (rank 0 only): one JSON object per line in
``<output_dir>/metrics.jsonl``, and every finite number of a record as a TensorBoard scalar
``<split>/<key>`` at the record's ``step`` under ``<output_dir>/tensorboard/``
(``tensorboard --logdir runs`` shows every run). TensorBoard is optional
(``pip install mmllm[tb]``); without it the JSONL is the only tracker.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
# record keys that are coordinates or labels, not curves
_NOT_CURVES = frozenset({"step", "epoch", "time", "split", "event"})


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True


class RunTracker:
    """Appends records to the run's JSONL and mirrors their numbers to TensorBoard (rank 0 only).

    ``resume_step``: on a resumed run, TensorBoard events at or after this step (written by the
    interrupted run after its last checkpoint, and about to be recomputed) are purged.
    """

    def __init__(self, out_dir: Path, enabled: bool = True, tensorboard: bool = True, resume_step: int | None = None):
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self.path = self.out_dir / METRICS_FILE
        self.writer = None
        if enabled and tensorboard:
            if tensorboard_available():
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.out_dir / TENSORBOARD_DIR), purge_step=resume_step or None)
            else:
                log.info("tensorboard is not installed (pip install 'mmllm[tb]'): curves go to %s only", self.path)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"time": round(time.time(), 2), **record}) + "\n")
        if self.writer is not None and "step" in record:
            split = record.get("split", "run")
            for key, value in record.items():
                if key in _NOT_CURVES or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                if math.isfinite(value):
                    self.writer.add_scalar(f"{split}/{key}", value, int(record["step"]))
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
