"""The wiring table: every NATS subject, stream, bucket and queue group.

The whole data flow reads here in one place; services never spell a subject.

    actors  --ACTOR_JOIN, ACTOR_ASSIGN (request/reply, queue group)--> any learner (slot, run to serve)
    actors  --ACTOR_HEARTBEAT (request/reply, JSON)--> the run's learner (membership; every learner watches)
    actors  --TRAJ (core, lz4)------------------> learner (fresh), replay shards (queue group)
    learner --REPLAY_SAMPLE (request/reply)-----> one replay shard
    learner --WEIGHTS_BUCKET object + WEIGHTS notice--> actors (direct gets: no consumer)
    learner, replay --METRICS (JetStream stream)--> gateway
    gateway, learner <--> RUNS_BUCKET (JetStream KV, revision-checked)
    learner <--> ACTORS_BUCKET (JetStream KV: the actors' slot counter)

Who may publish and subscribe to which of these is shared/roles.py's table.
"""
from __future__ import annotations

import re

# JetStream assets
RUNS_BUCKET = "runs"  # KV: run id -> RunRecord JSON
WEIGHTS_BUCKET = "weights"  # object store: run id -> encoded state dict
METRICS_STREAM = "METRICS"  # stream over metrics.>
METRICS_WILDCARD = "metrics.>"

ACTORS_BUCKET = "actors"  # KV: the counter that hands out actor slots

# Queue groups
REPLAY_QUEUE = "replay"  # shards split the trajectory stream and answer samples
REGISTRY_QUEUE = "registry"  # learners share the actors' join and assign requests

# Actors (see services/learner/registry.py)
ACTOR_JOIN = "actors.join"  # request: a slot for a new actor process
ACTOR_ASSIGN = "actors.assign"  # request: which run to serve, and its config
ACTOR_HEARTBEAT_WILDCARD = "actors.*.hb"
ACTOR_INBOX_PREFIX = "_INBOX_actor"  # actors' reply subjects: the only ones their credential may subscribe to

_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_run_id(run_id: str) -> str:
    """Run ids become subject tokens, so they must be plain tokens."""
    if not _RUN_ID.match(run_id):
        raise ValueError(f"bad run id {run_id!r}")
    return run_id


def traj(run_id: str) -> str:
    """Trajectory fragments of one run (actors publish)."""
    return f"traj.{check_run_id(run_id)}"


TRAJ_WILDCARD = "traj.*"


def actor_heartbeat(run_id: str) -> str:
    """An actor's heartbeat for the run it serves (JSON request; its learner answers)."""
    return f"actors.{check_run_id(run_id)}.hb"


def weights(run_id: str) -> str:
    """Notice that a new weights version is in the object store."""
    return f"weights.{check_run_id(run_id)}"


WEIGHTS_WILDCARD = "weights.*"


def replay_sample(run_id: str) -> str:
    """Request/reply: ask one replay shard for fragments of a run."""
    return f"replay.{check_run_id(run_id)}.sample"


REPLAY_SAMPLE_WILDCARD = "replay.*.sample"


def metrics(run_id: str, source: str) -> str:
    """Metrics points of one run from one source (learner, replay-<shard>)."""
    return f"metrics.{check_run_id(run_id)}.{source}"


def run_from_subject(subject: str) -> str:
    """Second token of traj.<run>, replay.<run>.sample, metrics.<run>.<src>, actors.<run>.hb."""
    parts = subject.split(".")
    if len(parts) < 2:
        raise ValueError(f"no run id in subject {subject!r}")
    return check_run_id(parts[1])
