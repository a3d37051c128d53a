"""What the REST API takes and gives, as the OpenAPI schema documents it.

Every status a route can answer is declared on it (`responses=`), with the
body it carries: a client generated from /openapi.json, or schemathesis
(tests/test_fuzz_rest.py), sees the API as it is.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from services.gateway.json_types import json_typed
from shared.config import RunConfig, RunState

MAX_BODY_BYTES = 64 * 1024  # a run config is ~2 KB; anything far larger is refused unread


class RunView(BaseModel):
    """A run as clients see it: the record plus its latest progress."""

    id: str
    state: RunState
    config: RunConfig
    created_at: float
    updated_at: float
    learner_id: str | None = None
    heartbeat: float | None = None
    reason: str | None = None
    checkpoint: str | None = None
    resume: bool = False
    resumes: int = 0
    agent_steps: int = 0
    steps_per_s: float = Field(0.0, description="agent steps per second over the learner's last 10 s")
    mean_return: float | None = None
    episodes: int = 0
    updates: int = 0
    trained_steps: int = 0
    policy_lag: float | None = None
    data_wait_frac: float | None = None
    elapsed: float | None = None
    solved: dict | None = Field(None, description="when the run met target_return: agent_steps, seconds, time "
                                "and the mean_return that met it (the run's last mean may be a little lower)")
    actors: int = Field(0, description="actors serving the run (alive by their heartbeats)")
    dropped: int = Field(0, description="fragments dropped: queue overflow and staleness")
    rejected: int = Field(0, description="malformed or foreign messages dropped")
    counters: dict[str, Any] = Field(default_factory=dict)
    replay: dict[str, int] = Field(default_factory=dict)


class MetricsSeries(BaseModel):
    """A run's learner points, oldest first (thinned for long runs: metrics_cache.py)."""

    run: str
    points: list[dict[str, Any]] = Field(description="what the learner published: time, elapsed, agent_steps, "
                                         "steps_per_s, mean_return, losses, counters, ...")


class EvalRequest(BaseModel):
    """What POST /runs/{id}/eval plays: N episodes, greedy (argmax) or sampled actions."""

    episodes: int = Field(10, ge=1, le=1000)
    greedy: bool = True
    seed: int = Field(12345, ge=0, le=2**31 - 1)


class EvalJob(BaseModel):
    """An evaluation job (services/gateway/evals.py): running, done with its result, or failed."""

    id: str
    run: str
    checkpoint: str
    episodes: int
    greedy: bool
    seed: int
    created_at: float
    state: Literal["running", "done", "failed"]
    result: dict[str, Any] | None = Field(None, description="when done: mean_return, std_return, min_return, "
                                             "max_return, returns, lengths, video_frames, ...")
    video_url: str | None = Field(None, description="when done: the episode's GIF")
    error: str | None = Field(None, description="when failed: the end of the eval's log")


class Health(BaseModel):
    ok: bool = Field(description="connected to NATS")
    nats_counters: dict[str, Any]


class ErrorBody(BaseModel):
    """Every refusal but a 422 (FastAPI's HTTPException body)."""

    detail: str


# Bodies are checked for their JSON types before the model sees them (json_types.py says why).
RunConfigBody = Annotated[RunConfig, json_typed(RunConfig)]
EvalBody = Annotated[EvalRequest, json_typed(EvalRequest)]

Responses = dict[int | str, dict[str, Any]]


def refused(status: int, description: str, **extra: Any) -> Responses:
    return {status: {"model": ErrorBody, "description": description, **extra}}


NEEDS_TOKEN = refused(401, "missing or wrong bearer token",
                      headers={"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}})
UNKNOWN_RUN = refused(404, "no such run")
# A body the gateway cannot parse is refused before validation (400: not UTF-8 JSON text)
# or before it is read at all (413: the limit middleware in app.py).
WITH_BODY = {**refused(400, "the body is not JSON text"),
             **refused(413, f"the body is over {MAX_BODY_BYTES} bytes; refused unread")}
