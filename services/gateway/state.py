"""The one object the gateway's routes share, and the dependencies that hand it out.

`create_app`'s lifespan builds a GatewayState once the event loop runs (the
NATS connection needs it) and stores it on `app.state`; a route asks for it
with a parameter `state: State` (`Depends(get_state)`), and a mutating route
also depends on `require_token`. Nothing else is shared between routes.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from nats.aio.client import Client

from services.gateway.evals import EvalJobs
from services.gateway.logs import MetricsLogs
from services.gateway.metrics_cache import MetricsCache
from services.gateway.schemas import RunView
from shared import runs
from shared.bus import Assets
from shared.config import RunRecord


@dataclass
class GatewayState:
    nc: Client
    assets: Assets
    cache: MetricsCache  # every run's metrics series, followed from the METRICS stream
    counters: dict[str, int]  # NATS events (bus.connect counts them) and the gateway's own
    evals: EvalJobs
    logs: MetricsLogs | None  # per-run TensorBoard/CSV/JSONL files; None without a log dir
    api_token: str

    async def record(self, run_id: str) -> RunRecord:
        """The run's record, or a 404."""
        try:
            got = await runs.read(self.assets.runs, run_id)
        except Exception:  # noqa: BLE001  (not a valid KV key or subject: no such run can exist)
            got = None
        if got is None:
            raise HTTPException(404, f"unknown run {run_id!r}")
        return got[0]

    def view(self, rec: RunRecord) -> RunView:
        """The record and the learner's latest point: every figure as the learner published it."""
        m = self.cache.latest(rec.id) or {}
        c = m.get("counters") or {}
        replay = self.cache.replay_totals(rec.id)
        return RunView.model_validate(dict(
            **rec.model_dump(), agent_steps=m.get("agent_steps", 0), steps_per_s=m.get("steps_per_s", 0.0),
            mean_return=m.get("mean_return"), episodes=m.get("episodes", 0), updates=m.get("updates", 0),
            trained_steps=m.get("trained_steps", 0), policy_lag=m.get("policy_lag"),
            data_wait_frac=m.get("data_wait_frac"), elapsed=m.get("elapsed"), solved=m.get("solved"),
            dropped=c.get("dropped_fresh", 0) + c.get("stale_dropped", 0),
            rejected=c.get("rejected", 0) + c.get("rejected_heartbeats", 0) + replay.get("rejected", 0),
            counters=c, replay=replay, actors=m.get("actors", 0)), context={"stored": True})

    def count(self, event: str) -> None:
        self.counters[event] = self.counters.get(event, 0) + 1

    def gateway_counters(self) -> dict[str, Any]:
        return {**self.counters, "metrics_rejected": self.cache.rejected,
                "log_errors": self.logs.errors if self.logs else 0}


def get_state(request: Request) -> GatewayState:
    return request.app.state.gateway


State = Annotated[GatewayState, Depends(get_state)]  # a route's parameter `state: State`


# Declared as a security scheme so /openapi.json says which routes need the token;
# auto_error=False so that a missing token is our 401 (with WWW-Authenticate), not a 403.
bearer = HTTPBearer(auto_error=False, description="RL_API_TOKEN (or the token the gateway printed at start)")


def require_token(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
                  state: State) -> None:
    """Every mutating route depends on this: the gateway never runs open."""
    got = credentials.credentials if credentials else ""
    if not secrets.compare_digest(got.encode(), state.api_token.encode()):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
