"""Evaluation jobs (EvalJobs in ../evals.py): start one on a run's last checkpoint, list them, fetch a GIF."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Body, Depends, HTTPException
from fastapi.responses import FileResponse

from services.gateway.schemas import NEEDS_TOKEN, UNKNOWN_RUN, WITH_BODY, EvalBody, EvalJob, EvalRequest, refused
from services.gateway.state import State, require_token

router = APIRouter(prefix="/runs/{run_id}", tags=["evals"])
UNKNOWN_JOB = refused(404, "no such run or eval job")


@router.post("/eval", status_code=202, response_model=EvalJob, dependencies=[Depends(require_token)],
             responses={**NEEDS_TOKEN, **UNKNOWN_RUN, **WITH_BODY,
                        **refused(409, "the run has no checkpoint on the gateway's disk yet")})
async def start_eval(run_id: str, state: State,
                     req: Annotated[EvalBody | None, Body(description="no body, or null: the defaults")] = None
                     ) -> EvalJob:
    """Evaluate the run's last checkpoint (no body: 10 greedy episodes); poll GET /runs/{id}/evals/{job}."""
    rec = await state.record(run_id)
    if not rec.checkpoint or not Path(rec.checkpoint).exists():
        raise HTTPException(409, f"run {run_id} has no checkpoint on this gateway's disk yet "
                                 "(one is written when the run ends)")
    req = req or EvalRequest()
    state.count("evals_started")
    return EvalJob.model_validate(state.evals.start(run_id, rec.checkpoint, req.episodes, req.greedy, req.seed))


@router.get("/evals", response_model=list[EvalJob], responses=UNKNOWN_RUN)
async def list_evals(run_id: str, state: State) -> list[EvalJob]:
    await state.record(run_id)
    return [EvalJob.model_validate(job) for job in state.evals.list(run_id)]


@router.get("/evals/{job_id}", response_model=EvalJob, responses=UNKNOWN_JOB)
async def get_eval(run_id: str, job_id: str, state: State) -> EvalJob:
    await state.record(run_id)
    try:
        return EvalJob.model_validate(state.evals.get(run_id, job_id))
    except KeyError:
        raise HTTPException(404, f"unknown eval {job_id!r}")


@router.get("/evals/{job_id}/video", response_class=FileResponse,
            responses={200: {"content": {"image/gif": {"schema": {"type": "string", "format": "binary"}}},
                             "description": "one recorded episode"},
                       **refused(404, "no such run or eval job, or the job has no video (yet)")})
async def eval_video(run_id: str, job_id: str, state: State) -> FileResponse:
    await state.record(run_id)
    try:
        path = state.evals.video(run_id, job_id)
    except KeyError:
        path = None
    if path is None:
        raise HTTPException(404, "no video for this eval")
    return FileResponse(path, media_type="image/gif")
