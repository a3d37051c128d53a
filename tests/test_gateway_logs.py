"""The gateway's log files: TensorBoard events readable by tensorboard's own reader,
CSV and JSONL of the same series, and nothing written twice when a restarted
gateway replays the metrics stream."""
from __future__ import annotations

import csv
import json

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from services.gateway.logs import MetricsLogs, scalars


def points(n: int) -> list[dict]:
    return [{"time": 1000.0 + i, "elapsed": float(i), "agent_steps": 100 * i, "steps_per_s": 100.0,
             "mean_return": None if i == 0 else 10.0 * i, "losses": {"policy_loss": -0.1 * i, "total": 1.0},
             "counters": {"rejected": 0}, "solved": None, "queues": {"fresh": 3}, "policy_lag": 0.5,
             **({"final": True} if i == n - 1 else {})} for i in range(n)]


def test_scalars_flatten_the_rest_names():
    tags = dict(scalars(points(2)[1]))
    assert tags["losses/policy_loss"] == -0.1 and tags["queues/fresh"] == 3 and tags["mean_return"] == 10.0
    assert "time" not in tags and "solved" not in tags and "final" not in tags


def test_files_and_replay_after_restart(tmp_path):
    pts = points(6)
    logs = MetricsLogs(tmp_path)
    for p in pts[:3]:
        logs.on_point("run-a", p)
    logs.close()  # the gateway restarts and replays the whole stream
    logs = MetricsLogs(tmp_path)
    for p in pts:
        logs.on_point("run-a", p)
    assert logs.errors == 0 and "run-a" not in logs.open  # closed after the final point
    lines = [json.loads(line) for line in (tmp_path / "run-a" / "metrics.jsonl").read_text().splitlines()]
    assert [p["time"] for p in lines] == [p["time"] for p in pts]
    acc = EventAccumulator(str(tmp_path / "run-a" / "tb"), size_guidance={"scalars": 0}).Reload()
    returns = acc.Scalars("mean_return")
    assert [e.step for e in returns] == [100 * i for i in range(1, 6)]  # None is not a number: skipped
    assert [e.value for e in returns] == [10.0 * i for i in range(1, 6)]
    with open(tmp_path / "run-a" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["tag"] for r in rows} == set(acc.Tags()["scalars"])
    assert sum(r["tag"] == "losses/policy_loss" for r in rows) == 6
