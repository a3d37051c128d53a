"""Policy weights through the JetStream object store, and the notice that follows.

The learner puts the encoded state dict (shared.wire, never pickle) under the
run id and then publishes a small notice with the version; actors fetch on
notice. Fetching reads all chunks with one batched pull (nats-py's own
ObjectStore.get takes ~0.5 s for a 5 MB object here; this takes ~20 ms) and
checks the object's SHA-256 digest before decoding.
"""
from __future__ import annotations

import base64
import hashlib
import json
from typing import NamedTuple, Optional

import numpy as np
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from shared import wire, wiring
from shared.bus import Assets

MAX_WEIGHTS_BYTES = wire.MAX_RAW_BYTES


async def publish(assets: Assets, nc, run_id: str, version: int, arrays: dict[str, np.ndarray],
                  pending: Optional[dict[str, int]] = None) -> int:
    """Store a version and announce it with what the learner holds untrained: per
    actor, its fresh fragments received and not yet trained on. Each actor paces
    itself by its own count (see services/actor/actor.py, WeightsFeed)."""
    data = wire.encode({"kind": "weights", "run": run_id, "version": version}, arrays)
    await assets.weights.put(run_id, data)
    await nc.publish(wiring.weights(run_id), json.dumps({"version": version, "pending": pending or {}}).encode())
    return len(data)


async def announce_short(nc, run_id: str, version: int, pending: dict[str, int], have: dict[str, int]) -> None:
    """Tell actors the learner cannot train before more fragments come: `have` maps
    each actor in its partial batch to the sequence number of the newest fragment it
    holds from it. An actor whose own newest fragment is listed may act the next one
    on the weights it has, without waiting (still lag 0: no newer weights can come
    first); any other actor keeps waiting, so a repeated notice never lets one run ahead."""
    msg = {"version": version, "pending": pending, "short": have}
    await nc.publish(wiring.weights(run_id), json.dumps(msg).encode())


class Notice(NamedTuple):
    version: int
    pending: dict[str, int]  # per actor: its fragments the learner holds untrained
    short: Optional[dict[str, int]]  # set when the learner is short of data (announce_short)


MAX_NOTICE_ACTORS = 4096


def parse_notice(data: bytes) -> Notice:
    """A weights notice; ValueError if it is not one."""
    msg = json.loads(data)
    if not isinstance(msg, dict):
        raise ValueError("bad weights notice")
    version, pending, short = msg.get("version"), msg.get("pending", {}), msg.get("short")
    if not (wire.is_count(version) and _actor_counts(pending) and (short is None or _actor_counts(short))):
        raise ValueError("bad weights notice")
    return Notice(version, pending, short)


def _actor_counts(d: object) -> bool:
    """A map of actor id to count, of bounded size."""
    return (isinstance(d, dict) and len(d) <= MAX_NOTICE_ACTORS
            and all(isinstance(k, str) and wire.is_count(v) for k, v in d.items()))


async def fetch(assets: Assets, run_id: str, timeout: float = 2.0) -> Optional[tuple[int, dict[str, np.ndarray]]]:
    """(version, arrays) of the newest stored weights of a run, or None if there are none yet.
    Raises wire.WireError (or ValueError) if the stored object is not valid weights, and a
    timeout if it was replaced while being read (its old chunks are purged): bounded, unlike
    nats-py's ObjectStore.get, which waits forever for chunks that no longer exist."""
    try:
        info = await assets.weights.get_info(run_id)
    except Exception:
        return None
    if not info.nuid or not info.chunks or info.size > MAX_WEIGHTS_BYTES:
        raise ValueError("bad weights object")
    stream = f"OBJ_{wiring.WEIGHTS_BUCKET}"
    sub = await assets.js.pull_subscribe(
        f"$O.{wiring.WEIGHTS_BUCKET}.C.{info.nuid}", durable=None, stream=stream,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, mem_storage=True,
                              inactive_threshold=10.0))
    try:
        parts: list[bytes] = []
        while len(parts) < info.chunks:
            parts += [m.data for m in await sub.fetch(info.chunks - len(parts), timeout=timeout)]
    finally:
        await sub.unsubscribe()
    data = b"".join(parts)
    digest = base64.urlsafe_b64decode(info.digest.split("=", 1)[1] + "==") if info.digest else b""
    if len(data) != info.size or hashlib.sha256(data).digest() != digest:
        raise ValueError("weights object does not match its digest (replaced while reading?)")
    meta, arrays = wire.decode(data)
    if meta.get("kind") != "weights" or meta.get("run") != run_id or not isinstance(meta.get("version"), int):
        raise wire.WireError("not weights of this run")
    return meta["version"], arrays
