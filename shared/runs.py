"""Run records in the JetStream KV bucket, changed only by revision-checked updates.

A learner claims a run by moving it pending -> running at the revision it
read; if another learner got there first, the update fails and the run is
not claimed twice.
"""
from __future__ import annotations

import time
from typing import Iterable, Optional

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

from shared.config import RunRecord, RunState


class TransitionRefused(Exception):
    """The run is not in a state that allows this transition (or was changed meanwhile)."""


async def read(kv: KeyValue, run_id: str) -> Optional[tuple[RunRecord, int]]:
    try:
        entry = await kv.get(run_id)
    except KeyNotFoundError:
        return None
    if entry.value is None:
        return None
    return RunRecord.model_validate_json(entry.value), entry.revision


async def create(kv: KeyValue, record: RunRecord) -> int:
    return await kv.create(record.id, record.model_dump_json().encode())


async def list_all(kv: KeyValue) -> list[RunRecord]:
    try:
        keys = await kv.keys()
    except NoKeysError:
        return []
    out = []
    for k in keys:
        got = await read(kv, k)
        if got:
            out.append(got[0])
    return sorted(out, key=lambda r: r.created_at)


async def transition(kv: KeyValue, run_id: str, allowed_from: Iterable[RunState], to: Optional[RunState],
                     retries: int = 5, **fields) -> RunRecord:
    """Move a run to state `to` (None: keep state, just update fields) if it is
    in one of `allowed_from`; compare-and-set on the revision, retried on races."""
    allowed = set(allowed_from)
    for _ in range(retries):
        got = await read(kv, run_id)
        if got is None:
            raise KeyError(run_id)
        rec, rev = got
        if rec.state not in allowed:
            raise TransitionRefused(f"run {run_id} is {rec.state.value}")
        new = rec.model_copy(update={**fields, "updated_at": time.time(),
                                     **({"state": to} if to is not None else {})})
        try:
            await kv.update(run_id, new.model_dump_json().encode(), last=rev)
            return new
        except KeyWrongLastSequenceError:
            continue
    raise TransitionRefused(f"run {run_id} kept changing; gave up")
