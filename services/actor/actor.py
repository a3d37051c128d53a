"""Actor: steps a vector of envs with the latest policy and publishes fragments.

The env stepping and policy inference run in one worker thread (torch and the
emulators release the GIL), so the event loop stays free for NATS: weight
notices, the run-state watch and publishing. An actor joins whatever run is
running (or the one it was told), at any time, and goes idle when it ends.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import logging
import os
import socket
import time
import uuid
from typing import Optional

import numpy as np
import torch

from shared import bus, runs, weights, wiring
from shared.config import RunConfig, RunRecord, RunState
from shared.envs import VectorEnv
from shared.fragment import Fragment, encode_within
from shared.models import ActorCritic, build_model, load_numpy_state
from shared.service import Counters

log = logging.getLogger("actor")

PUBLISH_TIMEOUT_S = 5.0


class Rollout:
    """The env vector plus the policy, producing one fragment per call (in a thread)."""

    def __init__(self, cfg: RunConfig, run_id: str, actor_id: str, seed: int, env_threads: int):
        self.cfg, self.run_id, self.actor_id = cfg, run_id, actor_id
        # Inference gets as many threads as the emulators: measured when the learner
        # sat idle while the actor stepped, the Pong policy's forward at batch 8 took
        # 0.90 ms on 2 threads against 1.40 ms on 1 (env step 1.8 ms). Now that the
        # learner trains ahead meanwhile, 1 thread was no faster in the whole stack
        # (753 against 743 agent steps/s, docs/benchmarks.md), so the rule stays.
        # (torch's thread count is per process: one Rollout per actor process.)
        torch.set_num_threads(env_threads)
        self.env = VectorEnv(cfg, cfg.num_envs, seed, num_threads=env_threads)
        self.spec = self.env.spec
        self.model: ActorCritic = build_model(cfg, self.spec).eval()
        self.version = -1
        self.obs = self.env.reset()
        n = cfg.num_envs
        self.ep_return = np.zeros(n, np.float64)
        self.ep_length = np.zeros(n, np.int64)
        self.finished: list[tuple[float, int]] = []
        self.gen = torch.Generator().manual_seed(seed)
        self.seq = 0  # fragments made so far; the learner counts gaps as lost in transit
        self.seed = seed

    @torch.inference_mode()
    def __call__(self, max_bytes: int) -> tuple[list[bytes], int]:
        """One fragment of unroll_length steps of every env, as messages of at most
        max_bytes each (see encode_within), and its agent steps."""
        T, N = self.cfg.unroll_length, self.cfg.num_envs
        stacked = self.spec.frame_stack > 0
        obs_rows = np.empty((T + 1, N) + (self.obs.shape[2:] if stacked else self.obs.shape[1:]), self.obs.dtype)
        context = self.obs[:, :-1].copy() if stacked else None
        actions = np.empty((T, N), np.int32)
        logits_buf = np.empty((T, N, self.spec.num_actions), np.float32)
        rewards = np.empty((T, N), np.float32)
        dones = np.empty((T, N), np.uint8)
        for t in range(T):
            obs_rows[t] = self.obs[:, -1] if stacked else self.obs
            logits, _ = self.model(torch.from_numpy(self.obs))
            act = torch.multinomial(torch.softmax(logits, -1), 1, generator=self.gen).squeeze(-1)
            a = act.numpy().astype(np.int32)
            self.obs, rew, term, trunc, final = self.env.step(a)
            learn_rew = rew.copy()
            if final is not None and not self.spec.clip_rewards:
                # Time-limit truncation is not failure: bootstrap from the final state's value.
                _, v = self.model(torch.from_numpy(final))
                learn_rew += np.where(trunc, self.cfg.gamma * v.numpy(), 0.0).astype(np.float32)
            done = term | trunc
            actions[t], logits_buf[t], rewards[t], dones[t] = a, logits.numpy(), learn_rew, done
            self.ep_return += rew
            self.ep_length += 1
            for i in np.flatnonzero(done):
                self.finished.append((float(self.ep_return[i]), int(self.ep_length[i])))
                self.ep_return[i], self.ep_length[i] = 0.0, 0
        obs_rows[T] = self.obs[:, -1] if stacked else self.obs
        frag = Fragment(self.run_id, self.actor_id, max(self.version, 0), obs_rows, actions, logits_buf,
                        rewards, dones, context, seq=self.seq + 1, env_seed=self.seed)
        payloads = encode_within(frag, max_bytes)
        self.seq += len(payloads)
        return payloads, T * N

    def close(self) -> None:
        self.env.close()


class Actor:
    def __init__(self, nats_url: Optional[str], index: int = 0, run_id: Optional[str] = None,
                 env_threads: int = 1):
        self.nats_url, self.index, self.fixed_run = nats_url, index, run_id
        self.env_threads = env_threads
        self.counters = Counters()
        self.joins = 0
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rollout")

    async def main(self, stop: asyncio.Event) -> None:
        self.nc = await bus.connect(self.nats_url, f"actor-{self.index}", self.counters)
        self.assets = await bus.ensure_assets(self.nc)
        log.info("actor %d ready", self.index)
        while not stop.is_set():
            rec = await self._find_run()
            if rec is None:
                await _sleep_or_stop(stop, 0.5)
                continue
            try:
                await self._serve(rec, stop)
            except Exception:
                log.exception("actor %d: run %s failed here; going idle", self.index, rec.id)
                await _sleep_or_stop(stop, 1.0)
        await self.nc.drain()

    async def _find_run(self) -> Optional[RunRecord]:
        try:
            if self.fixed_run:
                got = await runs.read(self.assets.runs, self.fixed_run)
                return got[0] if got and got[0].state == RunState.running else None
            running = [r for r in await runs.list_all(self.assets.runs) if r.state == RunState.running]
            return running[-1] if running else None
        except Exception as e:  # NATS down or reconnecting: try again later
            log.debug("find run: %s", e)
            return None

    async def _serve(self, rec: RunRecord, stop: asyncio.Event) -> None:
        cfg, run_id = rec.config, rec.id
        actor_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.joins += 1
        seed = cfg.seed + 1000 * self.index + 100_000 * self.joins
        loop = asyncio.get_running_loop()
        rollout = await loop.run_in_executor(self.pool, Rollout, cfg, run_id, actor_id, seed, self.env_threads)
        latest = WeightsFeed(self, run_id)
        sub = await self.nc.subscribe(wiring.weights(run_id), cb=latest.on_notice)
        fetcher = asyncio.create_task(latest.run())
        active = asyncio.Event()
        active.set()
        watcher = asyncio.create_task(self._watch_state(run_id, rec.learner_id, active, stop, latest))
        log.info("actor %d joins run %s as %s", self.index, run_id, actor_id)
        steps, last_stats, t_start = 0, 0.0, time.time()
        counts = {"wait_timeouts": 0, "publish_failed": 0}  # this run's, in every stats message
        used: collections.deque[int] = collections.deque(maxlen=cfg.actor_lead)  # versions of recent fragments
        try:
            while active.is_set() and not stop.is_set() and not latest.abandoned:
                if rollout.version < 0:
                    await latest.wait_newer(-1, 1.0)
                elif cfg.actor_wait > 0 and len(used) == cfg.actor_lead:
                    # Flow control: act at most actor_lead fragments ahead of the newest weights and of
                    # what the learner has trained of ours, or at once when the learner holds our newest
                    # fragment and still cannot train (its batch needs more than one round of actors
                    # gives); never wait forever: actor_wait only keeps a lost learner from stalling us.
                    newer = await latest.wait_newer(used[0], cfg.actor_wait, max_pending=cfg.actor_lead,
                                                    sent=(actor_id, rollout.seq))
                    if not active.is_set() or stop.is_set():
                        break
                    if not newer:
                        counts["wait_timeouts"] += 1  # this fragment is acted ahead: it will train at a policy lag
                if latest.ready is not None and latest.ready[0] > rollout.version:
                    version, arrays = latest.ready
                    load_numpy_state(rollout.model, arrays)  # between rollouts: the worker is idle
                    rollout.version = version
                if rollout.version < 0:
                    continue
                payloads, n = await loop.run_in_executor(self.pool, rollout, self.nc.max_payload)
                used.append(rollout.version)
                for payload in payloads:
                    try:  # bounded: a stalled client must show up as a counted failure, not a silent hang
                        await asyncio.wait_for(self.nc.publish(wiring.traj(run_id), payload), PUBLISH_TIMEOUT_S)
                    except Exception as e:
                        self.counters.inc("publish_failed")
                        counts["publish_failed"] += 1
                        log.warning("publish failed (%d bytes): %s", len(payload), e)
                steps += n
                now = time.time()
                if now - last_stats > 0.5:
                    await self._publish_stats(run_id, actor_id, steps, rollout, now - t_start, counts)
                    last_stats = now
            await self._publish_stats(run_id, actor_id, steps, rollout, time.time() - t_start, counts, left=True)
        finally:
            watcher.cancel()
            fetcher.cancel()
            await _quietly(sub.unsubscribe())
            await loop.run_in_executor(self.pool, rollout.close)
            log.info("actor %d leaves run %s after %d steps", self.index, run_id, steps)

    async def _publish_stats(self, run_id: str, actor_id: str, steps: int, rollout: Rollout, elapsed: float,
                             counts: dict[str, int], left: bool = False) -> None:
        """`left`: the last message of this actor in the run, so the learner's rounds stop waiting for it."""
        episodes, rollout.finished = rollout.finished, []
        msg = {"actor": actor_id, "steps": steps, "episodes": episodes, "version": rollout.version,
               "sps": steps / max(elapsed, 1e-6), **counts, "counters": dict(self.counters), "left": left}
        try:
            await asyncio.wait_for(self.nc.publish(wiring.actor_stats(run_id), json.dumps(msg).encode()),
                                   PUBLISH_TIMEOUT_S)
        except Exception:
            self.counters.inc("publish_failed")

    async def _watch_state(self, run_id: str, learner_id: Optional[str], active: asyncio.Event,
                           stop: asyncio.Event, feed: "WeightsFeed") -> None:
        """Leave when the run stops running or changes learner (a resumed run counts
        steps afresh per actor join, so the new learner never double counts ours)."""
        try:
            while not stop.is_set():
                try:
                    got = await runs.read(self.assets.runs, run_id)
                    if got is None or got[0].state != RunState.running or got[0].learner_id != learner_id:
                        active.clear()
                        return
                except Exception:
                    pass  # NATS gap: keep acting; the data path counts its own losses
                await _sleep_or_stop(stop, 1.0)
        finally:
            feed.abandon()  # a wait for weights (up to actor_wait) must not hold up leaving


class WeightsFeed:
    """Fetches new weights in the background whenever a notice arrives, so a
    fetch never holds up a rollout; `ready` is the newest (version, arrays)."""

    def __init__(self, actor: "Actor", run_id: str):
        self.actor, self.run_id = actor, run_id
        self.ready: Optional[tuple[int, dict]] = None
        self.pending: dict[str, int] = {}  # per actor, its fragments the learner holds untrained (last notice)
        self.short: Optional[tuple[int, dict[str, int]]] = None  # (version, have) while the learner is short of data
        self.notice = asyncio.Event()
        self.fetched = asyncio.Event()
        self.abandoned = False

    def abandon(self) -> None:
        """Ends every wait at once: the actor is leaving the run."""
        self.abandoned = True
        self.fetched.set()

    async def on_notice(self, msg) -> None:
        try:
            notice = weights.parse_notice(msg.data)
        except (ValueError, RecursionError):  # deeply nested JSON recurses
            self.actor.counters.inc("rejected_notices")
            return
        self.pending = notice.pending
        self.short = (notice.version, notice.short) if notice.short is not None else None
        if notice.short is None or self.ready is None or notice.version > self.ready[0]:
            self.notice.set()  # weights to fetch
        else:
            self.fetched.set()  # nothing to fetch: wakes the waiters to read the notice

    async def run(self) -> None:
        while True:
            self.notice.clear()
            try:
                got = await weights.fetch(self.actor.assets, self.run_id)
            except Exception as e:  # corrupt or forged object, or a NATS gap: keep the old weights
                self.actor.counters.inc("bad_weights")
                log.debug("weights for %s not loaded: %s", self.run_id, e)
                got = None
            if got is not None and (self.ready is None or got[0] > self.ready[0]):
                self.ready = got
            self.fetched.set()  # wakes waiters: new weights, or new pending figures
            # Nothing published yet (or a failed fetch): poll as well as wait for a notice.
            await _wait_event(self.notice, 0.5 if got is None else 3600.0)

    async def wait_newer(self, version: int, timeout: float, max_pending: Optional[int] = None,
                         sent: Optional[tuple[str, int]] = None) -> bool:
        """Until weights newer than `version` are here and (if given) the learner holds
        fewer than max_pending untrained fragments of this actor, or the learner says
        it holds `sent` (this actor's id and newest fragment) and is short of data
        (True); or until the timeout passes or the actor leaves the run (False). Only
        the actor's own fragments count: other actors' fragments of the next round
        may already be in, and waiting for them to be trained would wait for ours."""
        deadline = time.time() + timeout
        while not self._may_act(version, max_pending, sent):
            if self.abandoned or time.time() >= deadline:
                return False
            self.fetched.clear()
            await _wait_event(self.fetched, deadline - time.time())
        return True

    def _may_act(self, version: int, max_pending: Optional[int], sent: Optional[tuple[str, int]]) -> bool:
        if self.ready is None:
            return False
        if sent is not None and self.short is not None:
            short_version, have = self.short
            if self.ready[0] >= short_version and have.get(sent[0]) == sent[1]:
                return True
        mine = self.pending.get(sent[0], 0) if sent is not None else 0
        return self.ready[0] > version and (max_pending is None or mine < max_pending)


async def _wait_event(ev: asyncio.Event, timeout: float) -> None:
    try:
        await asyncio.wait_for(ev.wait(), max(timeout, 0.0))
    except asyncio.TimeoutError:
        pass


async def _quietly(coro) -> None:
    try:
        await coro
    except Exception:
        pass


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass
