"""Policy weights through the JetStream object store, and the notices that follow.

The learner puts the encoded state dict (shared.wire, never pickle) under the
run id, in chunks as large as the broker takes (fewer round trips to read),
and then publishes a small notice with the version; actors fetch on notice,
with direct gets (shared/jsapi.py), checking the object's SHA-256 digest
before decoding. When the run ends the learner says so on the same subject,
so its actors leave at once.
"""
from __future__ import annotations

import json
from typing import NamedTuple, Optional

import numpy as np
from nats.js.api import ObjectMeta, ObjectMetaOptions

from shared import jsapi, wire, wiring
from shared.bus import Assets

MAX_WEIGHTS_BYTES = wire.MAX_RAW_BYTES
CHUNK_MARGIN = 4096  # room for the headers beside a chunk within the broker's max_payload


async def publish(assets: Assets, nc, run_id: str, version: int, arrays: dict[str, np.ndarray],
                  pending: Optional[dict[str, int]] = None) -> int:
    """Store a version and announce it with what the learner holds untrained: per
    actor, its fresh fragments received and not yet trained on. Each actor paces
    itself by its own count (see services/actor/actor.py, WeightsFeed)."""
    data = wire.encode({"kind": "weights", "run": run_id, "version": version}, arrays)
    chunk = max(64 * 1024, nc.max_payload - CHUNK_MARGIN)
    await assets.weights.put(run_id, data, meta=ObjectMeta(name=run_id, options=ObjectMetaOptions(max_chunk_size=chunk)))
    await nc.publish(wiring.weights(run_id), json.dumps({"version": version, "pending": pending or {}}).encode())
    return len(data)


async def announce_end(nc, run_id: str, version: int) -> None:
    """The run is over: its actors leave now rather than when their heartbeats go unanswered."""
    await nc.publish(wiring.weights(run_id), json.dumps({"version": version, "ended": True}).encode())


async def announce_short(nc, run_id: str, version: int, pending: dict[str, int], have: dict[str, int]) -> None:
    """Tell actors the learner cannot train before more fragments come: `have` maps
    each actor in its partial batch to the sequence number of the newest fragment it
    holds from it. An actor whose own newest fragment is listed may act the next one
    on the weights it has, without waiting (still lag 0: no newer weights can come
    first); so may one whose newest fragment is missing from a notice that came
    round_deadline_s or more after that fragment went out (it was lost in transit).
    Any other actor keeps waiting, so a repeated notice never lets one run ahead."""
    msg = {"version": version, "pending": pending, "short": have}
    await nc.publish(wiring.weights(run_id), json.dumps(msg).encode())


class Notice(NamedTuple):
    version: int
    pending: dict[str, int]  # per actor: its fragments the learner holds untrained
    short: Optional[dict[str, int]]  # set when the learner is short of data (announce_short)
    ended: bool = False  # the run is over (announce_end)


MAX_NOTICE_ACTORS = 4096


def parse_notice(data: bytes) -> Notice:
    """A weights notice; ValueError if it is not one."""
    msg = json.loads(data)
    if not isinstance(msg, dict):
        raise ValueError("bad weights notice")
    version, pending, short = msg.get("version"), msg.get("pending", {}), msg.get("short")
    if not (wire.is_count(version) and _actor_counts(pending) and (short is None or _actor_counts(short))):
        raise ValueError("bad weights notice")
    return Notice(version, pending, short, msg.get("ended") is True)


def _actor_counts(d: object) -> bool:
    """A map of actor id to count, of bounded size."""
    return (isinstance(d, dict) and len(d) <= MAX_NOTICE_ACTORS
            and all(isinstance(k, str) and wire.is_count(v) for k, v in d.items()))


async def fetch(js, run_id: str) -> Optional[tuple[int, dict[str, np.ndarray]]]:
    """(version, arrays) of the newest stored weights of a run, or None if there are none
    yet. Direct gets only (shared/jsapi.py): an actor's credential may read the weights
    stream and nothing more. Raises wire.WireError or ValueError if the stored object is
    not valid weights of this run, jsapi.ObjectGone if it was replaced while being read."""
    try:
        _, data = await jsapi.read_object(js, wiring.WEIGHTS_BUCKET, run_id, MAX_WEIGHTS_BYTES)
    except jsapi.ObjectGone as e:
        if "replaced" in str(e):
            raise
        return None
    meta, arrays = wire.decode(data)
    if meta.get("kind") != "weights" or meta.get("run") != run_id or not wire.is_count(meta.get("version")):
        raise wire.WireError("not weights of this run")
    return meta["version"], arrays
