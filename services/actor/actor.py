"""Actor: steps a vector of envs with the latest policy and publishes fragments.

The env stepping and policy inference run in one worker thread (torch and the
emulators release the GIL), so the event loop stays free for NATS: weight
notices, the run-state watch and publishing. An actor joins whatever run is
running (or the one it was told), at any time, and goes idle when it ends.
"""
from __future__ import annotations

import asyncio
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

from shared import bus, runs, wire, wiring
from shared.config import RunConfig, RunRecord, RunState
from shared.envs import VectorEnv
from shared.fragment import Fragment, encode_fragment
from shared.models import ActorCritic, build_model, load_numpy_state
from shared.service import Counters

log = logging.getLogger("actor")


class Rollout:
    """The env vector plus the policy, producing one fragment per call (in a thread)."""

    def __init__(self, cfg: RunConfig, run_id: str, actor_id: str, seed: int, env_threads: int):
        self.cfg, self.run_id, self.actor_id = cfg, run_id, actor_id
        self.env = VectorEnv(cfg.env_id, cfg.num_envs, seed, num_threads=env_threads)
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

    @torch.inference_mode()
    def __call__(self) -> tuple[bytes, int]:
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
        self.seq += 1
        frag = Fragment(self.run_id, self.actor_id, max(self.version, 0), obs_rows, actions, logits_buf,
                        rewards, dones, context, seq=self.seq)
        return encode_fragment(frag), T * N

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
        torch.set_num_threads(1)
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
        notice = asyncio.Event()
        announced = [-1]

        async def on_notice(msg) -> None:
            try:
                announced[0] = max(announced[0], int(json.loads(msg.data)["version"]))
            except (ValueError, KeyError, TypeError, RecursionError):
                self.counters.inc("rejected_notices")
                return
            notice.set()

        sub = await self.nc.subscribe(wiring.weights(run_id), cb=on_notice)
        active = asyncio.Event()
        active.set()
        watcher = asyncio.create_task(self._watch_state(run_id, rec.learner_id, active, stop))
        log.info("actor %d joins run %s as %s", self.index, run_id, actor_id)
        steps, last_stats, t_start = 0, 0.0, time.time()
        try:
            while active.is_set() and not stop.is_set():
                if rollout.version < 0 or notice.is_set():
                    notice.clear()
                    if not await self._load_weights(rollout, run_id):
                        await asyncio.sleep(0.1)
                        continue
                payload, n = await loop.run_in_executor(self.pool, rollout)
                try:
                    await self.nc.publish(wiring.traj(run_id), payload)
                except Exception as e:
                    self.counters.inc("publish_failed")
                    log.debug("publish failed: %s", e)
                steps += n
                if cfg.actor_wait > 0:
                    # Flow control: let the learner catch up, but never wait forever (it may need
                    # more fragments than one round of actors gives before it can publish).
                    deadline = time.time() + cfg.actor_wait
                    while announced[0] <= rollout.version and time.time() < deadline and active.is_set():
                        notice.clear()
                        await _wait_event(notice, deadline - time.time())
                    if announced[0] > rollout.version:
                        notice.set()
                now = time.time()
                if now - last_stats > 0.5:
                    await self._publish_stats(run_id, actor_id, steps, rollout, now - t_start)
                    last_stats = now
            await self._publish_stats(run_id, actor_id, steps, rollout, time.time() - t_start)
        finally:
            watcher.cancel()
            await _quietly(sub.unsubscribe())
            await loop.run_in_executor(self.pool, rollout.close)
            log.info("actor %d leaves run %s after %d steps", self.index, run_id, steps)

    async def _load_weights(self, rollout: Rollout, run_id: str) -> bool:
        try:
            res = await self.assets.weights.get(run_id)
            meta, arrays = wire.decode(res.data)
            version = int(meta["version"])
            if version > rollout.version:
                load_numpy_state(rollout.model, arrays)
                rollout.version = version
            return True
        except Exception as e:  # not published yet, or unreadable: keep the old weights
            log.debug("weights for %s not loaded: %s", run_id, e)
            if rollout.version >= 0 and not isinstance(e, asyncio.TimeoutError):
                self.counters.inc("bad_weights")
            return rollout.version >= 0

    async def _publish_stats(self, run_id: str, actor_id: str, steps: int, rollout: Rollout, elapsed: float) -> None:
        episodes, rollout.finished = rollout.finished, []
        msg = {"actor": actor_id, "steps": steps, "episodes": episodes, "version": rollout.version,
               "sps": steps / max(elapsed, 1e-6), "counters": dict(self.counters)}
        try:
            await self.nc.publish(wiring.actor_stats(run_id), json.dumps(msg).encode())
        except Exception:
            self.counters.inc("publish_failed")

    async def _watch_state(self, run_id: str, learner_id: Optional[str], active: asyncio.Event,
                           stop: asyncio.Event) -> None:
        """Leave when the run stops running or changes learner (a resumed run counts
        steps afresh per actor join, so the new learner never double counts ours)."""
        while not stop.is_set():
            try:
                got = await runs.read(self.assets.runs, run_id)
                if got is None or got[0].state != RunState.running or got[0].learner_id != learner_id:
                    active.clear()
                    return
            except Exception:
                pass  # NATS gap: keep acting; the data path counts its own losses
            await asyncio.sleep(1.0)


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
