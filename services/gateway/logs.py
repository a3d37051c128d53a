"""Per-run TensorBoard event files, CSV and JSONL, written from the metrics stream.

The gateway already follows the METRICS stream, so the files are written
here and the learner stays free of logging concerns. Tags are the REST
metrics' names (nested dicts joined with '/': losses/policy, counters/rejected).
A restarted gateway replays the whole stream: points not newer than the last
line of the run's JSONL are skipped, so nothing is written twice.
"""
from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("gateway.logs")

# Not scalars of the learning curve, or the x axes themselves.
SKIP_KEYS = {"time", "final", "solved"}


def scalars(point: dict, prefix: str = "") -> Iterator[tuple[str, float]]:
    """(tag, value) for every finite number in a metrics point, nested dicts flattened."""
    for key, value in point.items():
        if not prefix and key in SKIP_KEYS:
            continue
        tag = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from scalars(value, tag + "/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            yield tag, float(value)


class RunFiles:
    """One run's writers: tb/ event files, metrics.csv (long format) and metrics.jsonl."""

    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard's writer

        run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = run_dir / "metrics.jsonl"
        self.last_time = _last_time(self.jsonl_path)
        self.tb = SummaryWriter(str(run_dir / "tb"), flush_secs=5)
        csv_path = run_dir / "metrics.csv"
        new_csv = not csv_path.exists()
        self._csv_file = open(csv_path, "a", newline="")  # noqa: SIM115  (open while the run is: close())
        self._csv = csv.writer(self._csv_file)
        if new_csv:
            self._csv.writerow(["time", "elapsed", "agent_steps", "tag", "value"])
        self._jsonl = open(self.jsonl_path, "a")  # noqa: SIM115

    def write(self, point: dict) -> bool:
        t = float(point.get("time", 0.0))
        if t <= self.last_time:
            return False
        self.last_time = t
        step = int(point.get("agent_steps", 0))
        for tag, value in scalars(point):
            self.tb.add_scalar(tag, value, global_step=step, walltime=t)
            self._csv.writerow([t, point.get("elapsed"), step, tag, value])
        self._jsonl.write(json.dumps(point) + "\n")
        return True

    def flush(self) -> None:
        self.tb.flush()
        self._csv_file.flush()
        self._jsonl.flush()

    def close(self) -> None:
        self.tb.close()
        self._csv_file.close()
        self._jsonl.close()


def _last_time(path: Path) -> float:
    if not path.exists():
        return 0.0
    last = 0.0
    with open(path) as f:
        for line in f:
            try:
                last = max(last, float(json.loads(line).get("time", 0.0)))
            except (ValueError, AttributeError):
                continue
    return last


class MetricsLogs:
    """Writers for every run under log_dir/<run id>/; a run's files close after its final point."""

    def __init__(self, log_dir: str | Path):
        self.log_dir = Path(log_dir)
        self.open: dict[str, RunFiles] = {}
        self.errors = 0

    def run_dir(self, run_id: str) -> Path:
        return self.log_dir / run_id

    def on_point(self, run_id: str, point: dict[str, Any]) -> None:
        """Called by the metrics cache for each learner point; never raises."""
        try:
            files = self.open.get(run_id)
            if files is None:
                files = self.open[run_id] = RunFiles(self.run_dir(run_id))
            if files.write(point):
                files.flush()
            if point.get("final"):
                self.open.pop(run_id).close()
        except Exception as e:  # noqa: BLE001  (a full disk must not take the API down)
            self.errors += 1
            log.warning("writing logs of run %s failed: %s", run_id, e)

    def close(self) -> None:
        for files in self.open.values():
            files.close()
        self.open.clear()
