"""Gateway: the REST API over the run records (KV) and the metrics stream.

POST /runs validates a RunConfig (422 names the field), writes a pending
record; a learner claims it. Every mutating call needs the bearer token
(RL_API_TOKEN, or one generated and printed at start). A background watch
requeues runs whose learner stopped heart-beating, to resume. The gateway
also serves the web dashboard (`/`, `/run/{id}`, `/static`), Prometheus text
at `/metrics`, evaluation jobs (`POST /runs/{id}/eval`), and, with a log dir,
writes each run's TensorBoard events, CSV and JSONL from the metrics stream.

This module only assembles the app; the routes are in routes/ (one module per
concern), what they share in state.py, what they take and give in schemas.py.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount

from services.gateway.evals import EvalJobs
from services.gateway.logs import MetricsLogs
from services.gateway.metrics_cache import MetricsCache
from services.gateway.routes import evals, ops, pages, runs
from services.gateway.schemas import MAX_BODY_BYTES
from services.gateway.state import GatewayState
from shared import bus
from shared import runs as run_records

API_TOKEN_ENV = "RL_API_TOKEN"
WATCH_S = 2.0
ROOT = Path(__file__).resolve().parents[2]
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
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
    watch = run_records.LostRunWatch(kv, counters)
    while True:
        for run_id in await watch.sweep():
            log.warning("run %s lost its learner; requeued to resume", run_id)
        await asyncio.sleep(WATCH_S)


def create_app(nats_url: str | None = None, api_token: str | None = None, log_dir: str | None = None) -> FastAPI:
    """log_dir: where each run's tb/, metrics.csv, metrics.jsonl and evals/ go (None: no log files)."""
    token = api_token if api_token is not None else api_token_from_env()
    logs = MetricsLogs(log_dir) if log_dir else None
    eval_jobs = EvalJobs(log_dir or tempfile.mkdtemp(prefix="impala-evals-"), ROOT)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        counters: dict[str, int] = {}
        nc = await bus.connect(nats_url, "gateway", counters)
        assets = await bus.ensure_assets(nc)
        cache = MetricsCache(logs.on_point if logs else None)
        await cache.start(assets.js)
        app.state.gateway = GatewayState(nc=nc, assets=assets, cache=cache, counters=counters, evals=eval_jobs,
                                         logs=logs, api_token=token)
        watcher = asyncio.create_task(watch_lost_runs(assets.runs, counters))
        yield
        watcher.cancel()
        await eval_jobs.close()
        await nc.drain()
        if logs:
            logs.close()

    app = FastAPI(title="Distributed IMPALA trainer", version="0.1.0", lifespan=lifespan,
                  description="Start, stop and inspect training runs.")
    app.middleware("http")(limit_body)
    app.add_exception_handler(405, method_not_allowed)
    for module in (runs, evals, ops, pages):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=pages.STATIC), name="static")
    return app


async def limit_body(request: Request, call_next) -> Response:
    """Refuse bodies that claim to be large before reading them (no unbounded allocation)."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
        return JSONResponse({"detail": f"body larger than {MAX_BODY_BYTES} bytes"}, status_code=413)
    return await call_next(request)


async def method_not_allowed(request: Request, exc: Exception) -> Response:
    """A 405 whose Allow header lists every method of the path (RFC 9110). Starlette lists
    only those of the first route whose path matched: `Allow: POST` for /runs, whose GET is
    another route. So each method is tried against the routes."""
    headers = dict(getattr(exc, "headers", None) or {})
    probe = {"type": "http", "path": request.scope["path"], "root_path": request.scope.get("root_path", "")}
    allowed = [method for method in METHODS if any(
        not isinstance(route, Mount) and route.matches({**probe, "method": method})[0] == Match.FULL
        for route in request.app.router.routes)]
    if allowed:
        headers["Allow"] = ", ".join(allowed)
    detail = exc.detail if isinstance(exc, StarletteHTTPException) else "Method Not Allowed"
    return JSONResponse({"detail": detail}, status_code=405, headers=headers)
