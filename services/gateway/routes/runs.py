"""Runs: start one (a pending record a learner claims), list, read, stop, resume, and its metrics series."""
from __future__ import annotations

import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query

from services.gateway.schemas import NEEDS_TOKEN, UNKNOWN_RUN, WITH_BODY, MetricsSeries, RunConfigBody, RunView, refused
from services.gateway.state import State, require_token
from shared import runs
from shared.config import ACTIVE_STATES, RunRecord, RunState

router = APIRouter(prefix="/runs", tags=["runs"])
Since = Annotated[float, Query(allow_inf_nan=False, description="only points after this time (seconds since the "
                                                                "epoch): a poller passes its newest point's")]


@router.post("", status_code=201, response_model=RunView, dependencies=[Depends(require_token)],
             responses={**NEEDS_TOKEN, **WITH_BODY})
async def start_run(config: RunConfigBody, state: State) -> RunView:
    """Validate the config (a 422 names the field) and write a pending run; a learner claims it."""
    rec = RunRecord(id=f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}", config=config)
    await runs.create(state.assets.runs, rec)
    return state.view(rec)


@router.get("", response_model=list[RunView])
async def list_runs(state: State) -> list[RunView]:
    return [state.view(r) for r in await runs.list_all(state.assets.runs)]


@router.get("/{run_id}", response_model=RunView, responses=UNKNOWN_RUN)
async def get_run(run_id: str, state: State) -> RunView:
    return state.view(await state.record(run_id))


@router.post("/{run_id}/stop", response_model=RunView, dependencies=[Depends(require_token)],
             responses={**NEEDS_TOKEN, **UNKNOWN_RUN, **refused(409, "the run has already ended")})
async def stop_run(run_id: str, state: State) -> RunView:
    """A pending run stops at once; a running one goes to stopping, and its learner checkpoints and ends it."""
    rec = await state.record(run_id)
    if rec.state not in ACTIVE_STATES:
        raise HTTPException(409, f"run {run_id} is already {rec.state.value}")
    kv = state.assets.runs
    try:  # a pending run has no learner to wind it down
        rec = await runs.transition(kv, run_id, {RunState.pending}, RunState.stopped, reason="stop requested")
    except runs.TransitionRefused:
        try:
            rec = await runs.transition(kv, run_id, {RunState.running}, RunState.stopping, reason="stop requested")
        except runs.TransitionRefused:
            rec = await state.record(run_id)  # already stopping or just ended
    return state.view(rec)


@router.post("/{run_id}/resume", response_model=RunView, dependencies=[Depends(require_token)],
             responses={**NEEDS_TOKEN, **UNKNOWN_RUN, **refused(409, "the run is not stopped or failed")})
async def resume_run(run_id: str, state: State) -> RunView:
    """A stopped or failed run goes back to pending; a learner continues it from its newest checkpoint."""
    await state.record(run_id)
    try:
        return state.view(await runs.request_resume(state.assets.runs, run_id))
    except runs.TransitionRefused as e:
        raise HTTPException(409, f"cannot resume: {e}")
    except KeyError:
        raise HTTPException(404, f"unknown run {run_id!r}")


@router.get("/{run_id}/metrics", response_model=MetricsSeries, responses=UNKNOWN_RUN)
async def run_metrics(run_id: str, state: State, since: Since = 0.0) -> MetricsSeries:
    await state.record(run_id)
    return MetricsSeries(run=run_id, points=[p for p in state.cache.series(run_id) if p.get("time", 0) > since])
