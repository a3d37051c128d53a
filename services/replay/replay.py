"""Replay shard: keeps recent fragments of every active run and serves samples.

Shards share the trajectory stream through a queue group (each fragment goes
to one shard) and answer sample requests through another, so adding shards
adds capacity without any coordination. Fragments are header-checked against
their run's config before they are kept; anything else is dropped and counted.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Optional

from services.replay.store import FragmentStore
from shared import bus, runs, wire, wiring
from shared.config import RunConfig, RunState
from shared.envs import EnvSpec, env_spec
from shared.fragment import check_header
from shared.service import Counters

log = logging.getLogger("replay")

RUN_CACHE_S = 2.0
METRICS_S = 2.0
REPLY_MARGIN = 64 * 1024


class RunEntry:
    def __init__(self, cfg: RunConfig, spec: EnvSpec, state: RunState):
        self.cfg, self.spec, self.state = cfg, spec, state
        self.store = FragmentStore(cfg.replay_capacity, int(cfg.replay_capacity_mb * 1024 * 1024))
        self.checked = time.time()
        self.counters = Counters()


class ReplayShard:
    def __init__(self, nats_url: Optional[str], shard: Optional[str] = None):
        self.nats_url = nats_url
        self.shard = shard or uuid.uuid4().hex[:6]
        self.runs: dict[str, RunEntry] = {}
        self.counters = Counters()  # for messages that belong to no known run

    async def main(self, stop: asyncio.Event) -> None:
        self.nc = await bus.connect(self.nats_url, f"replay-{self.shard}", self.counters)
        self.assets = await bus.ensure_assets(self.nc, create=False)
        await self.nc.subscribe(wiring.TRAJ_WILDCARD, queue=wiring.REPLAY_QUEUE, cb=self._on_traj,
                                pending_msgs_limit=4096, pending_bytes_limit=256 * 1024 * 1024)
        await self.nc.subscribe(wiring.REPLAY_SAMPLE_WILDCARD, queue=wiring.REPLAY_QUEUE, cb=self._on_sample)
        log.info("replay shard %s ready", self.shard)
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), METRICS_S)
            except asyncio.TimeoutError:
                await self._publish_metrics()
        await self.nc.drain()

    async def _entry(self, run_id: str) -> Optional[RunEntry]:
        """The run's entry, refreshed from the KV every few seconds; None if the run is not active."""
        entry = self.runs.get(run_id)
        if entry is not None and time.time() - entry.checked < RUN_CACHE_S:
            return entry if entry.state == RunState.running else None
        got = await runs.read(self.assets.runs, run_id)
        if got is None:
            self.runs.pop(run_id, None)
            return None
        rec = got[0]
        if entry is None:
            if rec.state != RunState.running:
                return None
            spec = await asyncio.get_running_loop().run_in_executor(None, env_spec, rec.config)
            entry = self.runs[run_id] = RunEntry(rec.config, spec, rec.state)
        entry.state, entry.checked = rec.state, time.time()
        if rec.state not in (RunState.running, RunState.stopping):
            del self.runs[run_id]  # run over: free its memory
            return None
        return entry

    async def _on_traj(self, msg) -> None:
        try:
            run_id = wiring.run_from_subject(msg.subject)
            entry = await self._entry(run_id)
        except Exception:
            entry = None
        if entry is None:
            self.counters.inc("unknown_run")
            return
        try:
            check_header(msg.data, run_id, entry.spec, entry.cfg.unroll_length)
        except wire.WireError as e:
            entry.counters.inc("rejected")
            log.debug("rejected fragment for %s: %s", run_id, e)
            return
        entry.counters.inc("received")
        if not entry.store.add(msg.data):
            entry.counters.inc("too_large")

    async def _on_sample(self, msg) -> None:
        try:
            run_id = wiring.run_from_subject(msg.subject)
            req = json.loads(msg.data)
            n = int(req["n"])
            if not 0 < n <= 4096:
                raise ValueError("n out of range")
        except Exception:
            self.counters.inc("bad_requests")
            return
        entry = self.runs.get(run_id)
        blobs = entry.store.sample(n, self.nc.max_payload - REPLY_MARGIN) if entry else []
        if entry:
            entry.counters.inc("served", len(blobs))
        if msg.reply:
            await msg.respond(wire.pack_blobs(blobs))

    async def _publish_metrics(self) -> None:
        for run_id, entry in list(self.runs.items()):
            point = {"time": time.time(), "shard": self.shard, "fragments": len(entry.store),
                     "bytes": entry.store.nbytes, "evicted": entry.store.evicted,
                     "counters": dict(entry.counters), "shard_counters": dict(self.counters)}
            try:
                await self.assets.js.publish(wiring.metrics(run_id, f"replay-{self.shard}"), json.dumps(point).encode())
            except Exception as e:
                log.debug("replay metrics failed: %s", e)
