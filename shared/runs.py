"""Run records in the JetStream KV bucket, changed only by revision-checked updates.

A learner claims a run by moving it pending -> running at the revision it
read; if another learner got there first, the update fails and the run is
not claimed twice.

The whole state machine is the TRANSITIONS table below (docs/operations.md
draws it); `transition` refuses anything not in it:

    pending  -> running   a learner claims it (fresh, or resume=True: from its newest checkpoint)
    pending  -> stopped   POST /stop before any learner took it
    running  -> running   heartbeat (only by the owning learner)
    running  -> stopping  POST /stop; the learner checkpoints and writes stopped
    running  -> pending   heartbeat older than heartbeat_timeout_s: learner lost, requeued with resume=True
    running/stopping -> stopped | finished | failed   the owning learner ends the run
    stopping -> stopped   heartbeat lost while stopping
    stopped/failed -> pending   POST /resume (resume=True)
"""
from __future__ import annotations

import time
from typing import Iterable, Optional

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from shared.config import RunRecord, RunState
from shared.jsapi import Bucket


class TransitionRefused(Exception):
    """The run is not in a state that allows this transition (or was changed meanwhile)."""


S = RunState
TRANSITIONS: dict[RunState, set[RunState]] = {
    S.pending: {S.running, S.stopped},
    S.running: {S.running, S.stopping, S.pending, S.stopped, S.finished, S.failed},
    S.stopping: {S.stopping, S.stopped, S.finished, S.failed},
    S.stopped: {S.pending},
    S.failed: {S.pending},
    S.finished: set(),
}
RESUMABLE = {S.stopped, S.failed}


async def read(kv: Bucket, run_id: str) -> Optional[tuple[RunRecord, int]]:
    try:
        entry = await kv.get(run_id)
    except KeyNotFoundError:
        return None
    if entry.value is None:
        return None
    return RunRecord.model_validate_json(entry.value, context={"stored": True}), entry.revision


async def create(kv: Bucket, record: RunRecord) -> int:
    return await kv.create(record.id, record.model_dump_json().encode())


async def list_all(kv: Bucket) -> list[RunRecord]:
    out = []
    keys = await run_ids(kv)
    for k in keys:
        got = await read(kv, k)
        if got:
            out.append(got[0])
    return sorted(out, key=lambda r: r.created_at)


async def run_ids(kv: Bucket) -> list[str]:
    """Every key of the runs bucket (shared/jsapi.py says why not `KeyValue.keys()`).
    Keys whose latest entry is a delete are left for `read` to skip."""
    return await kv.keys()


async def transition(kv: Bucket, run_id: str, allowed_from: Iterable[RunState], to: Optional[RunState],
                     retries: int = 5, owner: Optional[str] = None, **fields) -> RunRecord:
    """Move a run to state `to` (None: keep state, just update fields) if it is
    in one of `allowed_from` (and, with `owner`, still held by that learner);
    compare-and-set on the revision, retried on races."""
    allowed = set(allowed_from)
    for _ in range(retries):
        got = await read(kv, run_id)
        if got is None:
            raise KeyError(run_id)
        rec, rev = got
        if rec.state not in allowed:
            raise TransitionRefused(f"run {run_id} is {rec.state.value}")
        if to is not None and to not in TRANSITIONS[rec.state]:
            raise TransitionRefused(f"run {run_id}: {rec.state.value} -> {to.value} is not a transition")
        if owner is not None and rec.learner_id != owner:
            raise TransitionRefused(f"run {run_id} is held by {rec.learner_id}, not {owner}")
        new = rec.model_copy(update={**fields, "updated_at": time.time(),
                                     **({"state": to} if to is not None else {})})
        try:
            await kv.update(run_id, new.model_dump_json().encode(), last=rev)
            return new
        except KeyWrongLastSequenceError:
            continue
    raise TransitionRefused(f"run {run_id} kept changing; gave up")


async def request_resume(kv: Bucket, run_id: str) -> RunRecord:
    """stopped/failed -> pending with resume=True: a learner continues from the newest checkpoint."""
    got = await read(kv, run_id)
    if got is None:
        raise KeyError(run_id)
    return await transition(kv, run_id, RESUMABLE, RunState.pending, resume=True, learner_id=None,
                            heartbeat=None, resumes=got[0].resumes + 1, reason="resume requested")


async def requeue_lost(kv: Bucket, now: Optional[float] = None) -> list[str]:
    """Find runs whose learner stopped heart-beating and mark them: a running run
    goes back to pending with resume=True (any learner takes it over from its
    newest checkpoint); a stopping one is recorded as stopped. Returns their ids."""
    now = time.time() if now is None else now
    done = []
    for rec in await list_all(kv):
        if rec.state not in (RunState.running, RunState.stopping):
            continue
        age = now - (rec.heartbeat or rec.updated_at)
        if age <= rec.config.heartbeat_timeout_s:
            continue
        why = f"learner {rec.learner_id} lost (no heartbeat for {age:.0f} s)"
        try:
            if rec.state == RunState.running:
                await transition(kv, rec.id, {RunState.running}, RunState.pending, owner=rec.learner_id,
                                 resume=True, learner_id=None, heartbeat=None, resumes=rec.resumes + 1,
                                 reason=why + "; resuming from the newest checkpoint")
            else:
                await transition(kv, rec.id, {RunState.stopping}, RunState.stopped, owner=rec.learner_id,
                                 reason=why + " while stopping")
            done.append(rec.id)
        except (TransitionRefused, KeyError):
            continue  # it heart-beat or changed meanwhile: not lost after all
    return done


class LostRunWatch:
    """Calls requeue_lost, but only once this observer itself has been connected
    for longer than the timeout: after a NATS outage every heartbeat looks old,
    and the learners need a moment to refresh theirs before anyone judges."""

    def __init__(self, kv: Bucket, counters: dict, grace_s: float = 20.0):
        self.kv, self.counters, self.grace_s = kv, counters, grace_s
        self.reconnects = counters.get("reconnects", 0)
        self.since = 0.0  # a fresh connection judges at once; only a reconnect waits out the grace

    async def sweep(self) -> list[str]:
        if self.counters.get("reconnects", 0) != self.reconnects:
            self.reconnects, self.since = self.counters.get("reconnects", 0), time.time()
        if time.time() - self.since < self.grace_s:
            return []
        try:
            return await requeue_lost(self.kv)
        except Exception:  # NATS gap: judge next time
            return []
