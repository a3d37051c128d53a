"""The gateway's view of the metrics stream: every run's time series in memory.

It replays the whole JetStream stream at start (so a restarted gateway has
the history) and then follows it. Series are capped per run by thinning
(every other point dropped when full) so memory stays bounded for long runs.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable

from nats.js.api import DeliverPolicy

from shared import wiring

log = logging.getLogger("gateway.metrics")

MAX_POINTS = 4000


PointSink = Callable[[str, dict], None]


class MetricsCache:
    def __init__(self, on_learner_point: PointSink | None = None) -> None:
        self.on_learner_point = on_learner_point  # e.g. the TensorBoard/CSV writers
        self.learner: dict[str, list[dict]] = {}
        self.learner_last: dict[str, dict] = {}
        self.replay: dict[str, dict[str, dict]] = {}
        self.rejected = 0
        self._sub = None

    async def start(self, js) -> None:
        self._sub = await js.subscribe(wiring.METRICS_WILDCARD, cb=self._on_msg, ordered_consumer=True,
                                       deliver_policy=DeliverPolicy.ALL)

    async def _on_msg(self, msg) -> None:
        try:
            parts = msg.subject.split(".")
            run_id, source = wiring.check_run_id(parts[1]), parts[2]
            point = json.loads(msg.data)
            if not isinstance(point, dict):
                raise TypeError("not an object")
        except Exception:  # noqa: BLE001  (whatever is malformed is counted and dropped)
            self.rejected += 1
            return
        if source == "learner":
            series = self.learner.setdefault(run_id, [])
            series.append(point)
            if len(series) > MAX_POINTS:
                del series[1::2]
            self.learner_last[run_id] = point
            if self.on_learner_point is not None:
                self.on_learner_point(run_id, point)
        elif source.startswith("replay-"):
            self.replay.setdefault(run_id, {})[source] = point

    def latest(self, run_id: str) -> dict | None:
        return self.learner_last.get(run_id)

    def series(self, run_id: str) -> list[dict]:
        return list(self.learner.get(run_id, []))

    def replay_totals(self, run_id: str) -> dict[str, int]:
        totals: dict[str, int] = {"fragments": 0, "bytes": 0}
        for p in self.replay.get(run_id, {}).values():
            totals["fragments"] += int(p.get("fragments", 0))
            totals["bytes"] += int(p.get("bytes", 0))
            for k, v in (p.get("counters") or {}).items():
                totals[k] = totals.get(k, 0) + int(v)
        return totals
