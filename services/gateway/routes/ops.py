"""For operators and the dashboard: Prometheus text, health, and the preset runs in configs/."""
from __future__ import annotations

import json
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from services.gateway import prom
from services.gateway.schemas import Health
from services.gateway.state import State
from shared import runs

PRESETS = Path(__file__).resolve().parents[3] / "configs"


class PrometheusText(PlainTextResponse):
    media_type = "text/plain; version=0.0.4; charset=utf-8"


router = APIRouter(tags=["ops"])


@router.get("/metrics", response_class=PrometheusText,
            responses={200: {"description": "Prometheus text exposition (format 0.0.4)"}})
async def prometheus_metrics(state: State) -> PrometheusText:
    """Per-run gauges and counters (steps/s as the learner publishes it: over its last 10 s),
    per-service queues, drops and rejects."""
    run_states = {r.id: r.state.value for r in await runs.list_all(state.assets.runs)}
    collector = prom.CacheCollector(state.cache, run_states, state.gateway_counters())
    return PrometheusText(prom.exposition(collector))


@router.get("/healthz", response_model=Health)
async def healthz(state: State) -> Health:
    return Health(ok=state.nc.is_connected, nats_counters=state.counters)


@router.get("/presets", response_model=dict[str, dict])
async def presets() -> dict[str, dict]:
    """The named runs in configs/*.json, by file stem: what the dashboard's form starts
    from. Only their own fields: the rest comes from the defaults or the env's family
    preset when the run is posted, and the sizes from the learner that trains it."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(PRESETS.glob("*.json"))}
