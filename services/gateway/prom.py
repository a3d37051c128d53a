"""Prometheus text exposition for GET /metrics.

A custom collector reads the metrics cache at scrape time, so every gauge is
the latest point a service published (no second copy of the state). Labels:
`run`, and `service` (learner, replay-<shard>, gateway) for queue depths and
dropped/rejected counts.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from services.gateway.metrics_cache import MetricsCache

PREFIX = "impala"
# learner point key -> (metric name, help)
LEARNER_GAUGES = {
    # the learner's own rates over its last 10 s, the figures the dashboard and the CLI show
    # (a scraper's rate() of the counters below gives its own window)
    "steps_per_s": ("steps_per_second", "agent steps per second sampled by the actors, over the learner's last 10 s"),
    "trained_per_s": ("trained_steps_per_second", "agent steps per second trained on, over the learner's last 10 s"),
    "mean_return": ("mean_return", "mean raw return of the last 100 finished episodes"),
    "policy_lag": ("policy_lag", "learner version minus the behaviour version of the last batch"),
    "data_wait_frac": ("data_wait_fraction", "share of the learner's time spent waiting for batches"),
    "actors": ("actors", "actors serving the run (alive by their heartbeats)"),
}
LEARNER_COUNTERS = {
    "agent_steps": ("agent_steps", "agent steps sampled"),
    "trained_steps": ("trained_steps", "agent steps trained on (replay and reuse included)"),
    "updates": ("updates", "optimiser updates"),
    "episodes": ("episodes", "finished episodes"),
}
DROPPED_KEYS = ("dropped_fresh", "stale_dropped", "too_large", "slow_consumer", "actor_publish_failed")
REJECTED_KEYS = ("rejected", "rejected_heartbeats", "unknown_run", "bad_requests")


class CacheCollector:
    """Yields metric families from the cache's latest points, plus the gateway's own counts;
    one is made per scrape, with the run states read from the KV bucket for that scrape."""

    def __init__(self, cache: MetricsCache, run_states: dict[str, str], gateway_counters: dict[str, Any]):
        self.cache, self.run_states, self.gateway_counters = cache, run_states, gateway_counters

    def collect(self) -> Iterator[Metric]:
        gauges = {k: GaugeMetricFamily(f"{PREFIX}_{n}", h, labels=["run"]) for k, (n, h) in LEARNER_GAUGES.items()}
        counters = {k: CounterMetricFamily(f"{PREFIX}_{n}", h, labels=["run"])
                    for k, (n, h) in LEARNER_COUNTERS.items()}
        queue = GaugeMetricFamily(f"{PREFIX}_queue_depth", "messages waiting in a service's queue",
                                  labels=["run", "service", "queue"])
        dropped = CounterMetricFamily(f"{PREFIX}_dropped", "messages dropped (overflow, staleness, size)",
                                      labels=["run", "service", "reason"])
        rejected = CounterMetricFamily(f"{PREFIX}_rejected", "malformed or foreign messages dropped",
                                       labels=["run", "service", "reason"])
        losses = GaugeMetricFamily(f"{PREFIX}_loss", "last loss terms of the learner", labels=["run", "term"])
        state = GaugeMetricFamily(f"{PREFIX}_run_state", "1 for the run's current state", labels=["run", "state"])
        for run_id, run_state in self.run_states.items():
            state.add_metric([run_id, run_state], 1.0)
            point = self.cache.latest(run_id) or {}
            for key, fam in gauges.items():
                if _number(point.get(key)):
                    fam.add_metric([run_id], float(point[key]))
            for key, fam in counters.items():
                if _number(point.get(key)):
                    fam.add_metric([run_id], float(point[key]))
            for term, value in (point.get("losses") or {}).items():
                if _number(value):
                    losses.add_metric([run_id, term], float(value))
            for name, depth in (point.get("queues") or {}).items():
                if _number(depth):
                    queue.add_metric([run_id, "learner", name], float(depth))
            sources = {"learner": point.get("counters") or {}}
            for shard, rp in self.cache.replay.get(run_id, {}).items():
                sources[shard] = rp.get("counters") or {}
                if _number(rp.get("fragments")):
                    queue.add_metric([run_id, shard, "store"], float(rp["fragments"]))
            for service, c in sources.items():  # every reason, 0 until it happens: rates need a start
                for fam, keys in ((dropped, DROPPED_KEYS), (rejected, REJECTED_KEYS)):
                    for key in keys:
                        fam.add_metric([run_id, service, key], float(c[key]) if _number(c.get(key)) else 0.0)
        gw = GaugeMetricFamily(f"{PREFIX}_gateway_events", "the gateway's own event counts", labels=["event"])
        for event, value in self.gateway_counters.items():
            if _number(value):
                gw.add_metric([event], float(value))
        yield from (*gauges.values(), *counters.values(), queue, dropped, rejected, losses, state, gw)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


def exposition(collector: CacheCollector) -> bytes:
    """The text format (version 0.0.4) of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)
