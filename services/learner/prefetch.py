"""Parallel data loading: batches are assembled ahead of the optimiser.

NATS callbacks check each fresh fragment's header, count its steps and
episodes from its rewards and done flags (the run's progress comes from the
data, not from what actors claim: see progress.py), and drop it into a bounded
deque (oldest dropped and counted when full). The prefetch task pulls them, asks a replay shard for
its share, decodes and validates in a thread pool, drops fragments staler
than max_policy_lag, collates, and moves the batch to the device (pinned
memory and non-blocking copies on a side stream on CUDA), keeping up to
`prefetch_batches` ready in an asyncio queue. The optimiser's wait on that
queue is the data-wait time the learner reports.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import logging
import math
import time
from typing import Awaitable, Callable, Optional

import numpy as np
import torch

from services.learner.progress import SequenceGaps
from shared import wire, wiring
from shared.config import RunConfig
from shared.envs import EnvSpec
from shared.fragment import Fragment, check_header, collate, decode_fragment, decode_outcomes
from shared.service import Counters

log = logging.getLogger("learner.prefetch")
MAX_HEARD = 4096  # actors remembered by their last fragment: forged ids cannot grow it without bound

ReplayFetch = Callable[[int], Awaitable[list[bytes]]]
# Called with each fresh fragment's checked meta, rewards and done flags (the run's progress).
Account = Callable[[dict, np.ndarray, np.ndarray], None]


class Prefetcher:
    def __init__(self, cfg: RunConfig, spec: EnvSpec, run_id: str, device: torch.device,
                 version: Callable[[], int], counters: Counters, replay: Optional[ReplayFetch] = None,
                 pool: Optional[concurrent.futures.Executor] = None, fresh_capacity: Optional[int] = None,
                 columns: Optional[int] = None, gaps: Optional[SequenceGaps] = None, share: tuple[int, int] = (0, 1),
                 members: Optional[Callable[[], set[str]]] = None, account: Optional[Account] = None,
                 lost: Optional[Callable[[str], None]] = None):
        """members: the actors serving the run (their heartbeats); default: those heard from.
        account / lost: the run's progress (rank 0 only): each fragment's outcomes, and an
        actor whose messages went missing."""
        self.cfg, self.spec, self.run_id, self.device = cfg, spec, run_id, device
        self.members = members or (lambda: set(self.heard))
        self.account, self.lost = account, lost
        self.rank, self.world = share  # this rank takes its 1/world of every fragment's env columns
        self.version, self.counters, self.replay = version, counters, replay
        self.pool = pool or concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="decode")
        self.columns = columns or cfg.batch_columns  # this rank's share of the batch
        per_batch = math.ceil(self.columns / cfg.num_envs)
        self.fresh: collections.deque[tuple[bytes, int, str]] = collections.deque()  # (message, env columns, actor)
        # Fresh env columns per actor received and neither trained (see `consumed`) nor dropped: wherever
        # they are in the pipeline (queued, decoding, a split fragment's rest, assembled batches).
        self.pending: collections.Counter[str] = collections.Counter()
        self.assembled: collections.deque[collections.Counter[str]] = collections.deque()  # per batch made, not yet trained
        self.heard: dict[str, float] = {}  # actor -> when its newest fragment arrived
        self.first_heard: Optional[float] = None  # when the run's first fragment arrived (see `short_of`)
        self.benched: set[str] = set()  # actors that missed a round's deadline, until they send again
        self.round_started: Optional[float] = None  # when the weights of the current round went out
        self.round_wait_max = 0.0  # the longest a round's batch waited for its last actor (seconds)
        self.clock: Callable[[], float] = time.monotonic
        self.fresh_capacity = fresh_capacity or max(8, 4 * per_batch)
        self.arrived = asyncio.Event()
        # Set whenever the batch being assembled starts to wait for more fresh fragments: the
        # learner's loop may then tell actors in sync flow that it is short of theirs (`short_of`)
        # at once; checked at its next poll instead, each round of a run that lost an actor
        # waited for that poll.
        self.waiting = asyncio.Event()
        self.leftover: Optional[Fragment] = None  # the unused columns of the last fresh fragment
        # While the batch being made waits for fresh fragments (none left in the pipeline): its
        # fresh fragments so far, maybe none; None while it is not waiting.
        self.waiting_with: Optional[list[Fragment]] = None
        self.gaps = gaps  # per-actor sequence numbers: messages lost in transit
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=cfg.prefetch_batches)
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def offer(self, data: bytes) -> None:
        """Called for every fresh fragment; never blocks, never grows without bound.
        The cheap header + checksum check comes first, so every bad message is counted
        exactly once and none is queued."""
        try:
            meta = check_header(data, self.run_id, self.spec, self.cfg.unroll_length)
            outcomes = decode_outcomes(data, meta) if self.account is not None else None
        except wire.WireError:
            self.counters.inc("rejected")
            return
        actor = meta["actor"]
        if self.gaps is not None and (lost := self.gaps.observe(actor, meta.get("seq", 0))):
            self.counters.inc("lost_in_transit", lost)
            if self.lost is not None:
                self.lost(actor)
        if outcomes is not None:
            self.account(meta, *outcomes)
        self.counters.inc("fresh_fragments")
        self.counters.inc("fresh_bytes", len(data))
        self.heard[actor] = self.clock()
        if len(self.heard) > MAX_HEARD:
            del self.heard[min(self.heard, key=self.heard.get)]
        self.benched.discard(actor)  # it has caught up: it takes part in rounds again
        if self.first_heard is None:
            self.first_heard = self.heard[actor]
        lo, hi = self.my_columns(meta["columns"])
        if hi == lo:  # a fragment of fewer envs than ranks: none of it is this rank's
            return
        if len(self.fresh) >= self.fresh_capacity:
            _, columns, actor = self.fresh.popleft()
            self._settle(actor, columns)
            self.counters.inc("dropped_fresh")
        self.fresh.append((data, hi - lo, meta["actor"]))
        self.pending[meta["actor"]] += hi - lo
        self.arrived.set()

    def my_columns(self, columns: int) -> tuple[int, int]:
        """This rank's slice of a fragment's env columns. Why every rank takes a share
        of every fragment, rather than NATS handing each fragment to one rank: with
        actors in sync flow each round of fragments must fill every rank's
        batch at once, or a rank that got none waits out round_deadline_s while the actors
        wait for the weights that need its step."""
        return self.rank * columns // self.world, (self.rank + 1) * columns // self.world

    def consumed(self) -> None:
        """The optimiser has trained on the oldest batch made and not yet trained
        (batches are trained in the order they are made)."""
        for actor, columns in self.assembled.popleft().items():
            self._settle(actor, columns)

    def _settle(self, actor: str, columns: int) -> None:
        """`columns` of an actor's fresh columns are trained or dropped: no longer pending."""
        self.pending[actor] -= columns
        if self.pending[actor] <= 0:
            del self.pending[actor]

    def _fragments(self, columns: int) -> int:
        """Fresh fragments' worth of `columns` of this rank's share."""
        return -(-columns // max(1, self.cfg.num_envs // self.world))

    def pending_fragments(self) -> dict[str, int]:
        """Per actor: its fragments received and not yet trained on. Each actor in sync
        flow paces itself by its own count, so it must count columns wherever they are:
        one that is being decoded or assembled, left out, would let its actor act ahead
        on old weights (a policy lag of one batch) while the learner is still busy. Why
        per actor rather than one backlog: with one, a fragment of the next round that
        came early would hold every other actor back."""
        return {actor: self._fragments(columns) for actor, columns in self.pending.items()}

    def roster(self) -> set[str]:
        """The actors a round waits for: those serving the run (alive by their heartbeats)
        less those that missed a round's deadline and have not sent a fragment since."""
        return self.members() - self.benched

    def new_round(self) -> None:
        """New weights went out: the actors' next fragments are a new round (sync flow)."""
        self.round_started = self.clock()

    def awaited(self) -> bool:
        """Some actor has no fragment here: it is waiting for the next weights (or none
        has been heard from), so they should go out at once."""
        roster = self.roster()
        return not roster or any(actor not in self.pending for actor in roster)

    def short_of(self) -> Optional[dict[str, int]]:
        """While the batch being made waits for fresh fragments: each actor in it and the
        sequence number of its newest fragment there, once every actor taking part
        (`roster`) has one in it, or once the round is overdue; None otherwise. Actors in
        sync flow wait for weights that cannot come until more data does, so one whose
        newest fragment is listed may act again on the weights it has, and one whose newest
        fragment is missing long after it went out knows it was lost (see the actor's
        `WeightsFeed.turn`). Why the overdue round is announced even with nothing in
        the batch: a run whose every fragment of the round was lost in transit (a broker
        restart) would otherwise wait forever, its actors for weights, it for them.

        None while the round is still coming in: an actor let go early would fill the
        batch with its own next fragment, and the late actor's fragment would then train
        with the next batch, a version late. But a round waits at most round_deadline_s
        from its weights' publication: then the actors with nothing in it are benched
        (left out of rounds until they send again) and the round goes on without them.
        For the same reason it is None while fewer than the config's num_actors serve
        the run, for round_deadline_s after the run's first fragment: at the start the
        actors that start last would otherwise find the first batches filled by the
        first one, a race that made a seed's run differ from one run to the next."""
        if self.waiting_with is None:
            return None
        now = self.clock()
        if (len(self.members()) < (self.cfg.num_actors or 1) and self.first_heard is not None
                and now - self.first_heard < self.cfg.round_deadline_s):
            return None
        have: dict[str, int] = {}
        for f in self.waiting_with:
            have[f.actor_id] = max(f.seq, have.get(f.actor_id, 0))
        roster = self.roster()
        overdue = self.round_started is not None and now - self.round_started >= self.cfg.round_deadline_s
        if roster - have.keys() and have and overdue:
            late = roster - have.keys() - set(self.pending)
            self.benched |= late
            self.counters.inc("round_deadline_missed", len(late))
            roster -= late
        return have if (have and roster <= have.keys()) or overdue else None

    async def subscribe(self, nc) -> object:
        """Receive all of this run's fresh fragments (every rank: see `my_columns`)."""
        async def on_traj(msg) -> None:
            self.offer(msg.data)

        return await nc.subscribe(wiring.traj(self.run_id), cb=on_traj,
                                  pending_msgs_limit=4096, pending_bytes_limit=256 * 1024 * 1024)

    async def run(self) -> None:
        """Forever: build a batch, put it on the queue (waits while the queue is full)."""
        while True:
            batch = await self.next_batch()
            await self.queue.put(batch)

    async def next_batch(self) -> dict[str, torch.Tensor]:
        """Exactly `columns` env columns: replayed ones first, then fresh ones. A fresh
        fragment larger than what is still needed is split; its rest starts the next batch."""
        cfg = self.cfg
        need = self.columns
        want_replay = int(round(need * cfg.replay_proportion)) if self.replay else 0
        parts: list[Fragment] = []
        if want_replay:
            n = math.ceil(want_replay / cfg.num_envs)
            got = await self._decode_all(await self.replay(n), fresh=False)
            parts += _take(got, want_replay)
        replayed = len(parts)
        fresh_cols, fresh_parts = 0, []
        while (missing := need - sum(f.num_columns for f in parts)) > 0:
            if self.leftover is None:
                if not self.fresh:
                    self.waiting_with = fresh_parts
                    self.waiting.set()
                    self.arrived.clear()
                    try:
                        await self.arrived.wait()
                    finally:
                        self.waiting_with = None
                    continue
                data, columns, actor = self.fresh.popleft()
                self.leftover = (await self._decode_all([data], fresh=True) or [None])[0]
                if self.leftover is None:  # rejected or stale: counted, and no longer pending
                    self._settle(actor, columns)
                    continue
                if self.world > 1:
                    self.leftover = self.leftover.columns(*self.my_columns(self.leftover.num_columns))
            f = self.leftover
            if f.num_columns > missing:
                f, self.leftover = f.columns(0, missing), f.columns(missing, f.num_columns)
            else:
                self.leftover = None
            parts.append(f)
            fresh_parts.append(f)
            fresh_cols += f.num_columns
        if fresh_parts and self.round_started is not None:
            self.round_wait_max = max(self.round_wait_max, self.clock() - self.round_started)
        # Fresh columns in the order of their env seeds, not of arrival. Why: which actor's
        # fragment of a round comes first is a race, and a minibatch takes samples by column,
        # so a swap changed the whole run after it; ordered, a seed's run at policy lag 0
        # repeats on the same machine (Python's sort is stable: one actor's parts keep their order).
        parts = parts[:replayed] + sorted(fresh_parts, key=lambda f: f.env_seed)
        batch = await asyncio.get_running_loop().run_in_executor(self.pool, self._collate_to_device, parts)
        batch["fresh_steps"] = torch.tensor(fresh_cols * cfg.unroll_length)
        by_actor: collections.Counter[str] = collections.Counter()
        for f in fresh_parts:
            by_actor[f.actor_id] += f.num_columns
        self.assembled.append(by_actor)
        return batch

    async def _decode_all(self, blobs: list[bytes], fresh: bool) -> list[Fragment]:
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(*(loop.run_in_executor(self.pool, self._decode, b) for b in blobs))
        out = []
        now = self.version()
        for f in results:
            if f is None:
                continue
            if fresh and now - f.version > self.cfg.max_policy_lag:
                self.counters.inc("stale_dropped")
                continue
            out.append(f)
        return out

    def _decode(self, data: bytes) -> Optional[Fragment]:
        try:
            return decode_fragment(data, self.run_id, self.spec, self.cfg.unroll_length)
        except wire.WireError as e:
            self.counters.inc("rejected")
            log.debug("rejected fragment: %s", e)
            return None

    def _collate_to_device(self, frags: list[Fragment]) -> dict[str, torch.Tensor]:
        """Runs in the decode pool, so waiting for the copy blocks only that thread."""
        tensors = {k: torch.from_numpy(v) for k, v in collate(frags).items()}
        if self.stream is None:
            return tensors
        with torch.cuda.stream(self.stream):
            out = {k: t.pin_memory().to(self.device, non_blocking=True) for k, t in tensors.items()}
        self.stream.synchronize()  # the copy overlapped the optimiser's work; this waits only for it
        return out


def _take(frags: list[Fragment], columns: int) -> list[Fragment]:
    """At most `columns` env columns from a list of fragments (the last one cut if needed)."""
    out, have = [], 0
    for f in frags:
        if have >= columns:
            break
        f = f.columns(0, min(f.num_columns, columns - have))
        out.append(f)
        have += f.num_columns
    return out


def replay_fetcher(nc, run_id: str, counters: Counters) -> ReplayFetch:
    """Ask one replay shard (queue group) for n fragments; a miss trains on fresh data only."""
    async def fetch(n: int) -> list[bytes]:
        try:
            msg = await nc.request(wiring.replay_sample(run_id), json.dumps({"n": n}).encode(), timeout=1.0)
            return wire.unpack_blobs(msg.data, max_count=n)
        except Exception as e:  # no shard yet, timeout, or a bad reply
            counters.inc("replay_misses")
            log.debug("replay fetch failed: %s", e)
            return []
    return fetch
