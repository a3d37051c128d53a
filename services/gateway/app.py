"""Gateway: the REST API over the run records (KV) and the metrics stream.

POST /runs validates a RunConfig (422 names the field), writes a pending
record; a learner claims it. Every mutating call needs the bearer token
(RL_API_TOKEN, or one generated and printed at start). A background watch
requeues runs whose learner stopped heart-beating, to resume. The gateway
also serves the web dashboard (`/`, `/run/{id}`, `/static`), Prometheus text
at `/metrics`, evaluation jobs (`POST /runs/{id}/eval`), and, with a log dir,
writes each run's TensorBoard events, CSV and JSONL from the metrics stream.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Optional

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from services.gateway import prom
from services.gateway.evals import EvalJobs
from services.gateway.logs import MetricsLogs
from services.gateway.metrics_cache import MetricsCache
from shared import bus, runs
from shared.config import ACTIVE_STATES, RunConfig, RunRecord, RunState

API_TOKEN_ENV = "RL_API_TOKEN"
WATCH_S = 2.0
MAX_BODY_BYTES = 64 * 1024  # a run config is ~2 KB; anything far larger is refused unread
log = logging.getLogger("gateway")


def api_token_from_env() -> str:
    """RL_API_TOKEN, or a fresh random one printed once: the gateway never runs open."""
    token = os.environ.get(API_TOKEN_ENV)
    if not token:
        token = secrets.token_urlsafe(24)
        print(f"gateway: {API_TOKEN_ENV} not set; generated API token: {token}", flush=True)
    return token


async def watch_lost_runs(kv, counters: dict) -> None:
    """Mark runs whose learner stopped heart-beating (requeued to resume), even
    when no idle learner is around to notice."""
    watch = runs.LostRunWatch(kv, counters)
    while True:
        for run_id in await watch.sweep():
            log.warning("run %s lost its learner; requeued to resume", run_id)
        await asyncio.sleep(WATCH_S)

ROOT = Path(__file__).resolve().parents[2]
STATIC = Path(__file__).resolve().parent / "static"
PRESETS = ROOT / "configs"


class RunView(BaseModel):
    """A run as clients see it: the record plus its latest progress."""

    id: str
    state: RunState
    config: RunConfig
    created_at: float
    updated_at: float
    learner_id: Optional[str] = None
    heartbeat: Optional[float] = None
    reason: Optional[str] = None
    checkpoint: Optional[str] = None
    resume: bool = False
    resumes: int = 0
    agent_steps: int = 0
    steps_per_s: float = 0.0
    mean_return: Optional[float] = None
    episodes: int = 0
    updates: int = 0
    trained_steps: int = 0
    policy_lag: Optional[float] = None
    data_wait_frac: Optional[float] = None
    elapsed: Optional[float] = None
    solved: Optional[dict] = None
    dropped: int = Field(0, description="fragments dropped: queue overflow and staleness")
    rejected: int = Field(0, description="malformed or foreign messages dropped")
    counters: dict[str, Any] = Field(default_factory=dict)
    replay: dict[str, int] = Field(default_factory=dict)


class EvalRequest(BaseModel):
    """What POST /runs/{id}/eval plays: N episodes, greedy (argmax) or sampled actions."""

    episodes: int = Field(10, ge=1, le=1000)
    greedy: bool = True
    seed: int = Field(12345, ge=0, le=2**31 - 1)


def create_app(nats_url: Optional[str] = None, api_token: Optional[str] = None,
               log_dir: Optional[str] = None) -> FastAPI:
    """log_dir: where each run's tb/, metrics.csv, metrics.jsonl and evals/ go (None: no log files)."""
    token = api_token if api_token is not None else api_token_from_env()
    state: dict[str, Any] = {}
    logs = MetricsLogs(log_dir) if log_dir else None
    evals = EvalJobs(log_dir or tempfile.mkdtemp(prefix="impala-evals-"), ROOT)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        counters: dict = {}
        nc = await bus.connect(nats_url, "gateway", counters)
        assets = await bus.ensure_assets(nc)
        cache = MetricsCache(logs.on_point if logs else None)
        await cache.start(assets.js)
        state.update(nc=nc, assets=assets, cache=cache, counters=counters)
        watcher = asyncio.create_task(watch_lost_runs(assets.runs, counters))
        yield
        watcher.cancel()
        await evals.close()
        await nc.drain()
        if logs:
            logs.close()

    app = FastAPI(title="Distributed IMPALA trainer", version="0.1.0", lifespan=lifespan,
                  description="Start, stop and inspect training runs.")

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        """Refuse bodies that claim to be large before reading them (no unbounded allocation)."""
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return JSONResponse({"detail": f"body larger than {MAX_BODY_BYTES} bytes"}, status_code=413)
        return await call_next(request)

    def require_token(request: Request) -> None:
        if token is None:
            return
        got = request.headers.get("authorization", "")
        if not secrets.compare_digest(got.encode(), f"Bearer {token}".encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    def view(rec: RunRecord) -> RunView:
        cache: MetricsCache = state["cache"]
        m = cache.latest(rec.id) or {}
        c = m.get("counters") or {}
        replay = cache.replay_totals(rec.id)
        return RunView(
            **rec.model_dump(), agent_steps=m.get("agent_steps", 0), steps_per_s=m.get("steps_per_s", 0.0),
            mean_return=m.get("mean_return"), episodes=m.get("episodes", 0), updates=m.get("updates", 0),
            trained_steps=m.get("trained_steps", 0), policy_lag=m.get("policy_lag"),
            data_wait_frac=m.get("data_wait_frac"), elapsed=m.get("elapsed"), solved=m.get("solved"),
            dropped=c.get("dropped_fresh", 0) + c.get("stale_dropped", 0),
            rejected=c.get("rejected", 0) + c.get("rejected_stats", 0) + replay.get("rejected", 0),
            counters=c, replay=replay)

    async def get_record(run_id: str) -> RunRecord:
        try:
            got = await runs.read(state["assets"].runs, run_id)
        except Exception:
            got = None  # invalid key for the KV: cannot exist
        if got is None:
            raise HTTPException(404, f"unknown run {run_id!r}")
        return got[0]

    @app.post("/runs", status_code=201, response_model=RunView, dependencies=[Depends(require_token)])
    async def start_run(config: RunConfig) -> RunView:
        rec = RunRecord(id=f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}", config=config)
        await runs.create(state["assets"].runs, rec)
        return view(rec)

    @app.get("/runs", response_model=list[RunView])
    async def list_runs() -> list[RunView]:
        return [view(r) for r in await runs.list_all(state["assets"].runs)]

    @app.get("/runs/{run_id}", response_model=RunView)
    async def get_run(run_id: str) -> RunView:
        return view(await get_record(run_id))

    @app.post("/runs/{run_id}/stop", response_model=RunView, dependencies=[Depends(require_token)])
    async def stop_run(run_id: str) -> RunView:
        rec = await get_record(run_id)
        if rec.state not in ACTIVE_STATES:
            raise HTTPException(409, f"run {run_id} is already {rec.state.value}")
        kv = state["assets"].runs
        try:  # a pending run has no learner to wind it down: it stops at once
            rec = await runs.transition(kv, run_id, {RunState.pending}, RunState.stopped, reason="stop requested")
        except runs.TransitionRefused:
            try:
                rec = await runs.transition(kv, run_id, {RunState.running}, RunState.stopping, reason="stop requested")
            except runs.TransitionRefused:
                rec = await get_record(run_id)  # already stopping or just ended
        return view(rec)

    @app.post("/runs/{run_id}/resume", response_model=RunView, dependencies=[Depends(require_token)])
    async def resume_run(run_id: str) -> RunView:
        """A stopped or failed run goes back to pending; a learner continues it from its newest checkpoint."""
        await get_record(run_id)
        try:
            return view(await runs.request_resume(state["assets"].runs, run_id))
        except runs.TransitionRefused as e:
            raise HTTPException(409, f"cannot resume: {e}")
        except KeyError:
            raise HTTPException(404, f"unknown run {run_id!r}")

    @app.get("/runs/{run_id}/metrics")
    async def run_metrics(run_id: str, since: float = 0.0) -> dict:
        await get_record(run_id)
        points = [p for p in state["cache"].series(run_id) if p.get("time", 0) > since]
        return {"run": run_id, "points": points}

    @app.post("/runs/{run_id}/eval", status_code=202, dependencies=[Depends(require_token)])
    async def start_eval(run_id: str, req: Optional[EvalRequest] = None) -> dict:
        """Evaluate the run's last checkpoint in a child process; poll GET /runs/{id}/evals/{job}."""
        rec = await get_record(run_id)
        if not rec.checkpoint or not Path(rec.checkpoint).exists():
            raise HTTPException(409, f"run {run_id} has no checkpoint on this gateway's disk yet "
                                     "(one is written when the run ends)")
        req = req or EvalRequest()
        state["counters"]["evals_started"] = state["counters"].get("evals_started", 0) + 1
        return evals.start(run_id, rec.checkpoint, req.episodes, req.greedy, req.seed)

    @app.get("/runs/{run_id}/evals")
    async def list_evals(run_id: str) -> list[dict]:
        await get_record(run_id)
        return evals.list(run_id)

    @app.get("/runs/{run_id}/evals/{job_id}")
    async def get_eval(run_id: str, job_id: str) -> dict:
        await get_record(run_id)
        try:
            return evals.get(run_id, job_id)
        except KeyError:
            raise HTTPException(404, f"unknown eval {job_id!r}")

    @app.get("/runs/{run_id}/evals/{job_id}/video")
    async def eval_video(run_id: str, job_id: str) -> FileResponse:
        await get_record(run_id)
        try:
            path = evals.video(run_id, job_id)
        except KeyError:
            path = None
        if path is None:
            raise HTTPException(404, "no video for this eval")
        return FileResponse(path, media_type="image/gif")

    def gateway_counters() -> dict[str, Any]:
        cache = state.get("cache")
        return {**state.get("counters", {}), "metrics_rejected": cache.rejected if cache else 0,
                "log_errors": logs.errors if logs else 0}

    @app.get("/metrics", response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus text exposition: per-run gauges and counters, per-service queues, drops, rejects."""
        run_states = {r.id: r.state.value for r in await runs.list_all(state["assets"].runs)}
        collector = prom.CacheCollector(state["cache"], run_states, gateway_counters())
        return Response(prom.exposition(collector), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/presets")
    async def presets() -> dict[str, dict]:
        """The named runs in configs/*.json, by file stem: what the dashboard's form starts
        from. Only their own fields: the rest comes from the defaults or the env's family
        preset when the run is posted, and the sizes from the learner that trains it."""
        return {p.stem: json.loads(p.read_text()) for p in sorted(PRESETS.glob("*.json"))}

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/run/{run_id}", include_in_schema=False)
    async def run_page(run_id: str) -> FileResponse:
        return FileResponse(STATIC / "run.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz")
    async def healthz() -> dict:
        nc = state.get("nc")
        return {"ok": bool(nc and nc.is_connected), "nats_counters": state.get("counters", {})}

    return app
