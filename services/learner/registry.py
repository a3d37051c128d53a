"""Actor membership and placement, answered by every learner process.

Actors hold no rights on the broker beyond their data path (shared/roles.py), so
everything they need to join comes from here, over request/reply in the queue
group `registry` (any learner answers, idle or busy):

- `actors.join`: a slot, the actor's identity for its env seeds and its name,
  from a compare-and-set counter in the `actors` KV bucket, so N actor
  processes started the same way (`--scale actor=N`, N VMs) get N different
  slots, whichever learner answers. `--index` skips this (repeatable runs).
- `actors.assign`: the run to serve, with its config: the running run furthest
  below its num_actors; past that, an async run (sync rounds take exactly
  num_actors); an actor started for one run (`--run`) gets that run.

Membership comes from heartbeats with a time-to-live: each actor sends one a
second on `actors.<run>.hb` (a request the run's learner answers; see
learner.py), and every learner watches them all, so placement sees every run's
live actors. Entries expire after MEMBER_TTL_S without a heartbeat, and the
table is bounded (least recently seen forgotten), so forged heartbeats can
neither grow it nor pin a run's count for long.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import re
import time
from typing import Any, Callable, Optional

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from shared import runs, wire, wiring
from shared.config import RunRecord, RunState

log = logging.getLogger("learner.registry")

MEMBER_TTL_S = 5.0  # an actor silent for this long has left (it sends a heartbeat every second)
MAX_MEMBERS = 4096
RUNS_CACHE_S = 1.0
SLOT_KEY = "next-slot"
_ACTOR_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_STAT_KEYS = ("steps", "publish_failed", "fragments")


@dataclasses.dataclass
class Member:
    run: str
    slot: int
    seen: float  # clock of its newest heartbeat
    joined: float  # clock of its first heartbeat for this run
    stats: dict[str, Any]  # advisory: what the actor says of itself (never a run's counters)
    error: Optional[str] = None  # the actor could not serve the run (its env failed there), as it says


def parse_heartbeat(data: bytes) -> dict[str, Any]:
    """A heartbeat's fields, checked; ValueError if it is not one."""
    try:
        msg = json.loads(data)
    except (ValueError, RecursionError):  # deeply nested JSON recurses
        raise ValueError("not JSON") from None
    if not isinstance(msg, dict):
        raise ValueError("not an object")
    actor, slot = msg.get("actor"), msg.get("slot")
    if not isinstance(actor, str) or not _ACTOR_ID.match(actor) or not wire.is_count(slot, 2**31):
        raise ValueError("bad actor or slot")
    out: dict[str, Any] = {"actor": actor, "slot": slot, "left": msg.get("left") is True}
    for key in _STAT_KEYS:
        if wire.is_count(msg.get(key, 0)):
            out[key] = msg.get(key, 0)
    sps, version = msg.get("sps"), msg.get("version")
    out["sps"] = float(sps) if isinstance(sps, (int, float)) and math.isfinite(sps) and sps >= 0 else 0.0
    out["version"] = version if isinstance(version, int) and not isinstance(version, bool) else None
    if isinstance(msg.get("error"), str):
        out["error"] = msg["error"][:500]
    if isinstance(msg.get("host"), str):
        out["host"] = msg["host"][:128]
    return out


class Membership:
    """Who serves which run: every actor heard from within MEMBER_TTL_S."""

    def __init__(self, max_members: int = MAX_MEMBERS, clock: Callable[[], float] = time.monotonic):
        self.members: collections.OrderedDict[str, Member] = collections.OrderedDict()
        self.max_members, self.clock = max_members, clock

    def observe(self, run: str, hb: dict[str, Any]) -> Optional[Member]:
        """Record one heartbeat (parsed); a leaving actor is forgotten at once."""
        actor = hb["actor"]
        old = self.members.pop(actor, None)
        if hb["left"]:
            return None
        now = self.clock()
        joined = old.joined if old is not None and old.run == run else now
        stats = {k: hb[k] for k in (*_STAT_KEYS, "sps", "version", "host") if k in hb}
        member = self.members[actor] = Member(run, hb["slot"], now, joined, stats, hb.get("error"))
        while len(self.members) > self.max_members:
            self.members.popitem(last=False)
        return member

    def _expire(self) -> None:
        horizon = self.clock() - MEMBER_TTL_S
        while self.members:
            actor, m = next(iter(self.members.items()))
            if m.seen >= horizon:
                break
            del self.members[actor]

    def live(self, run: str) -> dict[str, Member]:
        self._expire()
        return {a: m for a, m in self.members.items() if m.run == run}

    def counts(self) -> collections.Counter[str]:
        self._expire()
        return collections.Counter(m.run for m in self.members.values())


class Registry:
    """The join and assign handlers, and the watch on every heartbeat."""

    def __init__(self, nc, assets, membership: Membership, counters: dict):
        self.nc, self.assets, self.membership, self.counters = nc, assets, membership, counters
        self._runs: tuple[float, list[RunRecord]] = (0.0, [])

    async def start(self) -> None:
        await self.nc.subscribe(wiring.ACTOR_JOIN, queue=wiring.REGISTRY_QUEUE, cb=self._on_join)
        await self.nc.subscribe(wiring.ACTOR_ASSIGN, queue=wiring.REGISTRY_QUEUE, cb=self._on_assign)
        await self.nc.subscribe(wiring.ACTOR_HEARTBEAT_WILDCARD, cb=self._on_heartbeat)

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1

    async def _on_heartbeat(self, msg) -> None:
        try:
            run = wiring.run_from_subject(msg.subject)
            self.membership.observe(run, parse_heartbeat(msg.data))
        except ValueError:
            self._count("heartbeats_rejected_any_run")

    async def _on_join(self, msg) -> None:
        if not msg.reply:
            return
        try:
            slot = await self.next_slot()
        except Exception as e:  # JetStream gap: the actor asks again
            log.warning("no slot handed out: %s", e)
            return
        await msg.respond(json.dumps({"slot": slot}).encode())

    async def next_slot(self) -> int:
        """The next free slot, by compare-and-set on the counter (safe with many learners)."""
        kv = self.assets.actors
        for _ in range(100):
            try:
                entry = await kv.get(SLOT_KEY)
                slot = int(entry.value)
                await kv.update(SLOT_KEY, str(slot + 1).encode(), last=entry.revision)
                return slot
            except KeyNotFoundError:
                try:
                    await kv.create(SLOT_KEY, b"1")
                    return 0
                except Exception:
                    continue
            except KeyWrongLastSequenceError:
                continue
        raise RuntimeError("the slot counter kept changing")

    async def running(self) -> list[RunRecord]:
        at, cached = self._runs
        if time.monotonic() - at > RUNS_CACHE_S:
            cached = [r for r in await runs.list_all(self.assets.runs) if r.state == RunState.running]
            self._runs = (time.monotonic(), cached)
        return cached

    async def _on_assign(self, msg) -> None:
        if not msg.reply:
            return
        try:
            req = json.loads(msg.data)
            wanted = req.get("run") if isinstance(req, dict) else None
            if wanted is not None:
                wiring.check_run_id(wanted)
        except (ValueError, RecursionError, TypeError):
            self._count("bad_assign_requests")
            return
        try:
            rec = pick_run(await self.running(), self.membership.counts(), wanted)
        except Exception as e:  # JetStream gap: no answer, the actor asks again
            log.debug("assign: %s", e)
            return
        answer = {} if rec is None else {"run": rec.id, "learner": rec.learner_id,
                                         "config": rec.config.model_dump(mode="json")}
        await msg.respond(json.dumps(answer).encode())

    async def deficit_elsewhere(self, run_id: str) -> bool:
        """Whether another running run has fewer live actors than it wants."""
        counts = self.membership.counts()
        return any(r.id != run_id and counts[r.id] < (r.config.num_actors or 1) for r in await self.running())


def pick_run(running: list[RunRecord], counts: collections.Counter[str],
             wanted: Optional[str] = None) -> Optional[RunRecord]:
    """The run an idle actor should serve: `wanted` if it is running; else the running
    run furthest below its num_actors (the oldest first); else the async run with the
    fewest actors per wanted actor; else none (sync rounds take exactly num_actors)."""
    if wanted is not None:
        return next((r for r in running if r.id == wanted), None)
    short = [r for r in running if counts[r.id] < (r.config.num_actors or 1)]
    if short:
        return max(short, key=lambda r: ((r.config.num_actors or 1) - counts[r.id], -r.created_at))
    free = [r for r in running if r.config.flow == "async"]
    if free:
        return min(free, key=lambda r: (counts[r.id] / (r.config.num_actors or 1), r.created_at))
    return None
