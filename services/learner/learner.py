"""Learner: claims a pending run, trains on fresh and replayed fragments,
publishes weights, metrics and checkpoints.

The event loop owns NATS; the optimiser runs in one worker thread and the
decoding in a small pool, so receiving, assembling and training overlap.
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
from pathlib import Path
from typing import Optional

import nats.errors
import torch

from services.learner import checkpoints, distributed
from services.learner.prefetch import Prefetcher, replay_fetcher
from services.learner.progress import EpisodeTracker, Progress, SequenceGaps
from services.learner.registry import Membership, Registry, parse_heartbeat
from services.learner.trainer import Trainer
from shared import bus, runs, weights, wiring
from shared.config import RunRecord, RunState, resolve_sizes
from shared.envs import EnvRefused, EnvSpec, check_env
from shared.models import state_to_numpy
from shared.service import Counters, free_port

log = logging.getLogger("learner")

HEARTBEAT_S = 1.0
METRICS_S = 1.0
RATE_WINDOW_S = 10.0  # steps/s over this window: a per-second figure flips between a round's burst and 0
# What a run's end may wait on the broker (its end record, last metrics) once the checkpoint is on
# disk: compose sends SIGKILL 10 s after SIGTERM, and a learner whose nats-server is gone must
# still leave in time; its run, not marked ended, is requeued and resumes from that checkpoint.
END_ON_BROKER_S = 4.0


class Learner:
    def __init__(self, nats_url: Optional[str], checkpoint_dir: str | Path, devices: str = "auto",
                 run_id: Optional[str] = None, log_dir: Optional[str] = None):
        self.nats_url, self.fixed_run, self.log_dir = nats_url, run_id, log_dir
        self.checkpoint_dir = Path(checkpoint_dir)
        self.devices = distributed.visible_devices(devices)
        self.device = torch.device(self.devices[0])
        self.learner_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.counters = Counters()

    async def main(self, stop: asyncio.Event) -> None:
        self.nc = await bus.connect(self.nats_url, "learner", self.counters)
        self.assets = await bus.ensure_assets(self.nc)
        self.membership = Membership()
        self.registry = Registry(self.nc, self.assets, self.membership, self.counters)
        await self.registry.start()
        log.info("learner %s ready on %s", self.learner_id, ", ".join(self.devices))
        watch = runs.LostRunWatch(self.assets.runs, self.counters)
        while not stop.is_set():
            await watch.sweep()  # an idle learner notices runs whose learner died, and may take them over
            rec = await self._claim()
            if rec is None:
                try:
                    await asyncio.wait_for(stop.wait(), 0.5)
                except asyncio.TimeoutError:
                    pass
                continue
            try:  # anything that goes wrong with one run fails that run, never this learner
                session = await RunSession.start(self, rec)
                await session.train(stop)
            except Exception as e:
                log.exception("run %s failed", rec.id)
                why = str(e) if isinstance(e, EnvRefused) else f"learner error: {type(e).__name__}: {e}"
                await _quietly(runs.transition(self.assets.runs, rec.id, {RunState.running, RunState.stopping},
                                               RunState.failed, owner=self.learner_id, reason=why[:1000]))
        await self._leave_broker()

    async def _leave_broker(self) -> None:
        """Drain when connected (what was published gets out); close at once while reconnecting."""
        try:
            if self.nc.is_connected:
                await asyncio.wait_for(self.nc.drain(), END_ON_BROKER_S)
        except (TimeoutError, nats.errors.Error, OSError) as e:
            log.warning("learner %s: leaving the broker: %s", self.learner_id, type(e).__name__)
        if not self.nc.is_closed:
            try:
                await self.nc.close()
            except (nats.errors.Error, OSError):
                pass  # the connection was already lost

    async def _claim(self) -> Optional[RunRecord]:
        """Move the oldest pending run to running, revision-checked: one learner per run.
        The sizes the run leaves to the machine are settled here, for this learner's
        machine and devices, and written into the record the actors read."""
        try:
            pending = [r for r in await runs.list_all(self.assets.runs) if r.state == RunState.pending
                       and (self.fixed_run is None or r.id == self.fixed_run)]
        except Exception as e:
            log.debug("listing runs failed: %s", e)
            return None
        for rec in pending:
            try:
                sized = resolve_sizes(rec.config, devices=len(self.devices))
                return await runs.transition(self.assets.runs, rec.id, {RunState.pending}, RunState.running,
                                             learner_id=self.learner_id, heartbeat=time.time(), config=sized)
            except (runs.TransitionRefused, KeyError):
                continue
        return None


class RunSession:
    """One run on this learner: from claim to checkpoint and final state.

    All of a run's torch work (building the trainer, steps, publishing, checkpoints,
    resume) runs on the one `train_pool` thread. Why: every thread that once runs a
    parallel op keeps its own OpenMP team, and with more OpenMP threads than cores
    libgomp stops spinning between ops; a trainer built on the event-loop thread
    made each Pong step on 2 cores slower: 0.96 s against 0.83 s on synthetic
    batches, 1.02 s against 0.77 s in the stack."""

    @classmethod
    async def start(cls, learner: Learner, rec: RunRecord) -> "RunSession":
        """A session for a claimed run, once its env has been built, reset and stepped here
        (raises EnvRefused with the reason if it cannot be), off the event loop."""
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="train")
        spec = await asyncio.get_running_loop().run_in_executor(pool, check_env, rec.config, rec.config.seed)
        if not rec.config.sized:
            rec = rec.model_copy(update={"config": resolve_sizes(rec.config, devices=len(learner.devices))})
        if rec.config.max_agent_steps is not None and rec.config.target_return is None and rec.config.max_seconds is None:
            log.info("run %s stops after %d agent steps (its only stop condition)", rec.id, rec.config.max_agent_steps)
        session = cls(learner, rec, spec, pool)
        session.trainer = await asyncio.get_running_loop().run_in_executor(
            pool, Trainer, session.cfg, spec, learner.device)
        return session

    def __init__(self, learner: Learner, rec: RunRecord, spec: EnvSpec,
                 train_pool: concurrent.futures.ThreadPoolExecutor):
        self.learner, self.rec, self.run_id, self.cfg = learner, rec, rec.id, rec.config
        self.nc, self.assets = learner.nc, learner.assets
        self.counters = Counters()
        self.spec = spec
        torch.set_num_threads(self.cfg.learner_threads)
        torch.manual_seed(self.cfg.seed)
        self.train_pool = train_pool
        self.trainer: Trainer
        self.progress = Progress()
        self.version = 0
        self.t0 = time.time()
        self.trained_steps = 0
        self.data_wait = 0.0  # seconds the training thread sat idle waiting for a batch
        self.train_time = 0.0  # seconds it trained (steps and the passes trained ahead)
        self.ahead_until = 0.0  # perf_counter when the passes trained ahead ended (inf while they run)
        self.ahead: Optional[asyncio.Future] = None
        self.acting: tuple[int, dict] = (0, {})  # (version, weights) actors act on: set after each step
        self.last_losses: dict[str, float] = {}
        self.last_lag = 0.0
        self.stop_reason: Optional[str] = None
        self.final_state = RunState.finished
        self.publishing: Optional[asyncio.Task] = None
        self.publish_wanted = asyncio.Event()
        self.prefetch: Optional[Prefetcher] = None
        self.last_publish = 0.0
        self.published_version = -1
        self.last_short: tuple[Optional[dict[str, int]], float] = (None, 0.0)  # the last short-of-data notice, and when
        self.rates = RateWindow(RATE_WINDOW_S)
        self.last_actor_error: Optional[str] = None
        self.ckpt_dir = checkpoints.CheckpointDir(learner.checkpoint_dir, self.run_id, self.cfg.checkpoint_keep)
        self.ckpt_clock = checkpoints.CheckpointClock(self.cfg.checkpoint_interval_s, self.cfg.checkpoint_every_updates)
        self.last_checkpoint: Optional[str] = rec.checkpoint

    # ------------------------------------------------------------------ main
    async def train(self, stop: asyncio.Event) -> None:
        cfg, devices = self.cfg, self.learner.devices
        log.info("run %s: %s on %s, devices %s, %s", self.run_id, cfg.algorithm, cfg.env_id, devices,
                 self.trainer.precision())
        distributed.check_shares(cfg, len(devices))
        loop = asyncio.get_running_loop()
        if self.rec.resume:
            await self.resume()
            self.ckpt_clock.mark(self.trainer.updates)
        followers = []
        if len(devices) > 1:
            port = free_port()
            followers = distributed.spawn_followers(self.run_id, devices, port, self.learner.log_dir)
            await loop.run_in_executor(self.train_pool, self._join_group, port, len(devices))
        await loop.run_in_executor(self.train_pool, self._snapshot)
        episodes = EpisodeTracker(cfg.num_envs)
        prefetch = self.prefetch = Prefetcher(
            cfg, self.spec, self.run_id, self.learner.device, lambda: self.version, self.counters,
            replay_fetcher(self.nc, self.run_id, self.counters) if cfg.replay_proportion > 0 else None,
            columns=cfg.batch_columns // len(devices), gaps=SequenceGaps(), share=(0, len(devices)),
            members=lambda: set(self.learner.membership.live(self.run_id)),
            account=lambda meta, rewards, dones: self._account_fragment(episodes, meta, rewards, dones),
            lost=episodes.lost)
        subs = [await prefetch.subscribe(self.nc),
                await self.nc.subscribe(wiring.actor_heartbeat(self.run_id), cb=self._on_heartbeat)]
        # The first weights go out once fragments can be received, and start the first round's
        # deadline: an actor that never sends its first fragment holds the run up for
        # round_deadline_s, not until its heartbeats expire.
        await self._publish_weights()
        side = [asyncio.create_task(self._heartbeat(stop)), asyncio.create_task(self._metrics_loop()),
                asyncio.create_task(self._publisher())]
        if cfg.prefetch:
            side.append(asyncio.create_task(prefetch.run()))
        try:
            while self.stop_reason is None:
                t = time.perf_counter()
                get = asyncio.create_task(prefetch.queue.get() if cfg.prefetch else prefetch.next_batch())
                while not get.done() and self.stop_reason is None:
                    waiting = asyncio.ensure_future(prefetch.waiting.wait())
                    await asyncio.wait({get, waiting}, timeout=0.25, return_when=asyncio.FIRST_COMPLETED)
                    waiting.cancel()
                    prefetch.waiting.clear()
                    self._check_stop()
                    await self._announce_if_short()
                    if self._unpublished() and time.time() - self.last_publish >= cfg.publish_interval:
                        self.publish_wanted.set()
                if not get.done():
                    get.cancel()
                    break
                batch = get.result()
                ready = time.perf_counter()  # the wait counts from when the passes trained ahead ended
                self.data_wait += max(0.0, ready - max(t, min(self.ahead_until, ready)))
                stats = await loop.run_in_executor(self.train_pool, self._step, batch)
                prefetch.consumed()
                self._account(stats)
                if self._publish_due():
                    self.publish_wanted.set()
                if cfg.train_ahead:  # while the actors act on the weights just published
                    self.ahead_until = float("inf")
                    self.ahead = loop.run_in_executor(self.train_pool, self._train_ahead)
                if self.ckpt_clock.due(self.trainer.updates):
                    await self._checkpoint()
                self._check_stop()
        finally:
            if self.ahead is not None:  # every rank trains ahead after every step: finish in step
                await _quietly(self.ahead)
            for task in side:
                task.cancel()
            for s in subs:
                await _quietly(s.unsubscribe())
            if self.publishing is not None:
                if not self.nc.is_connected:
                    self.publishing.cancel()  # the broker is gone: the checkpoint holds these weights
                await asyncio.wait({self.publishing})
            for p in followers:
                p.terminate()
            distributed.shutdown()
        await self._finish()

    def _account_fragment(self, episodes: EpisodeTracker, meta: dict, rewards, dones) -> None:
        """A validated fresh fragment: its steps and the episodes it completes are the run's progress."""
        self.progress.add_steps(int(rewards.size))
        self.progress.add_episodes(episodes.add(meta["actor"], meta.get("col0", 0), meta.get("t0", 0), rewards, dones))

    async def _on_heartbeat(self, msg) -> None:
        """An actor of this run says it is alive (every learner records it: registry.py);
        the answer tells it to stay, or to leave: the run is ending, or it is a surplus
        actor and another run lacks actors."""
        try:
            hb = parse_heartbeat(msg.data)
        except ValueError:
            self.counters.inc("rejected_heartbeats")
            return
        member = self.learner.membership.observe(self.run_id, hb)
        if hb.get("error"):
            self.counters.inc("actor_errors")
            self.last_actor_error = f"{hb['actor']}: {hb['error']}"
        if not msg.reply or member is None:
            return
        answer: dict = {"ok": True}
        if self.stop_reason is not None:
            answer = {"leave": "the run is ending"}  # services/actor/actor.py: ENDING
        elif await self._surplus(hb["actor"]):
            answer = {"leave": "another run needs actors"}
        try:
            await msg.respond(json.dumps(answer).encode())
        except Exception:
            pass

    async def _surplus(self, actor: str) -> bool:
        """Whether this actor is one of those that joined last beyond num_actors while
        another running run has fewer actors than it wants."""
        live = self.learner.membership.live(self.run_id)
        extra = len(live) - (self.cfg.num_actors or 1)
        if extra <= 0:
            return False
        newest = sorted(live, key=lambda a: live[a].joined)[-extra:]
        return actor in newest and await self.learner.registry.deficit_elsewhere(self.run_id)

    def _step(self, batch: dict) -> dict[str, float]:
        """One step, then the weights actors will act on (training thread)."""
        t = time.perf_counter()
        stats = self.trainer.step(batch)
        self._snapshot()
        self.train_time += time.perf_counter() - t
        return stats

    def _train_ahead(self) -> None:
        """The next step's passes over older batches (training thread), while actors act."""
        t = time.perf_counter()
        on_cpu = self.learner.device.type == "cpu"
        self.trainer.train_ahead(self._share_cores if on_cpu else lambda i, n: None)
        if on_cpu:
            torch.set_num_threads(self.cfg.learner_threads)
        self.ahead_until = time.perf_counter()
        self.train_time += self.ahead_until - t

    def _share_cores(self, i: int, n: int) -> None:
        """Before the i-th of n passes trained ahead on the CPU: all but the last on half
        the learner's threads, since the actors are acting then and their emulators and
        inference need cores (two full thread teams at once only take turns), the last
        on all of them (docs/decisions.md). A fixed rule rather than one timed on the
        fragments' arrival keeps a seed's run repeatable: the thread count changes the
        order of floating-point sums."""
        full = self.cfg.learner_threads
        torch.set_num_threads(max(1, full // 2) if i < max(1, n - 1) else full)

    def _snapshot(self) -> None:
        """Copy the weights actors act on with their version, in the training thread and
        before the passes trained ahead move them (a publish sends this copy)."""
        self.acting = (self.trainer.acted_version, state_to_numpy(self.trainer.model))

    def _publish_due(self) -> bool:
        """After a step: publish every publish_interval, and in sync flow at once whenever
        an actor has no fresh fragment here: it is waiting for exactly these weights, and
        holding them back for the interval would stall the run (docs/decisions.md: at a
        lag of one batch Pong learned about half as fast per agent step as at lag 0)."""
        if time.time() - self.last_publish >= self.cfg.publish_interval:
            return True
        return self.cfg.flow == "sync" and self.prefetch is not None and self.prefetch.awaited()

    def _unpublished(self) -> bool:
        """Weights newer than the last ones published wait for the interval. Why publish
        them while no batch comes: in async flow, actors acting on the last published
        weights may all be too stale to train (max_policy_lag) once the learner trained
        on past them, and with publications only after steps no step would come again."""
        return self.acting[0] > self.published_version

    async def _publisher(self) -> None:
        """Publishes the newest weights whenever asked; asks made while a publish is
        under way coalesce into one more, so the last version is never left out.
        The publish itself is shielded: cancelling this loop at the end of a run
        leaves it to finish (and `train` waits for it)."""
        while True:
            await self.publish_wanted.wait()
            self.publish_wanted.clear()
            self.last_publish = time.time()
            self.publishing = asyncio.create_task(self._publish_weights())
            await asyncio.shield(self.publishing)

    async def _announce_if_short(self) -> None:
        """While the batch waits for fragments that actors in sync flow hold back (they
        wait for weights that cannot come first), tell them; again each second, for
        actors that join and for those whose fragment was lost on the way. Why: otherwise
        they would wait for each other forever."""
        have = self.prefetch.short_of() if self.prefetch is not None and self.cfg.flow == "sync" else None
        if have is None or (have == self.last_short[0] and time.time() - self.last_short[1] < 1.0):
            return
        self.last_short = (have, time.time())
        try:
            await weights.announce_short(self.nc, self.run_id, self.version, self._pending(), have)
        except Exception as e:
            self.counters.inc("weights_publish_failed")
            log.debug("short-of-data notice failed: %s", e)

    def _pending(self) -> dict[str, int]:
        """Per actor, its fresh fragments received and not yet trained on (it paces itself by them)."""
        return {} if self.prefetch is None else self.prefetch.pending_fragments()

    def _join_group(self, port: int, world: int) -> None:
        """Rank 0 of the data-parallel group; everyone starts from this trainer's state."""
        distributed.init(0, world, port, self.learner.devices[0])
        self.trainer.join_rank0()

    def _account(self, stats: dict[str, float]) -> None:
        self.trained_steps += int(stats.pop("trained_steps"))
        self.last_lag = stats.pop("policy_lag")
        self.counters.inc("fresh_batches")
        if self.last_lag > 0:
            self.counters.inc("lagged_batches")  # a sync run whose rounds fill its batches counts none
        self.version = self.acting[0]
        self.last_losses = stats

    def _check_stop(self) -> None:
        if self.stop_reason is not None:
            return
        cfg, elapsed = self.cfg, time.time() - self.t0
        if self.progress.check_solved(cfg.target_return, elapsed):
            self.stop_reason = f"mean return {self.progress.mean_return:.1f} >= {cfg.target_return}"
        elif cfg.max_agent_steps is not None and self._steps_budget_spent(cfg.max_agent_steps):
            self.stop_reason = f"agent steps {self.progress.agent_steps} >= {cfg.max_agent_steps}"
        elif cfg.max_seconds is not None and elapsed >= cfg.max_seconds:
            self.stop_reason = f"{elapsed:.0f} s >= max_seconds {cfg.max_seconds}"

    def _steps_budget_spent(self, budget: int) -> bool:
        """max_agent_steps is spent once the actors report that many agent steps sampled
        and the learner has trained that many fresh ones, or holds none untrained. Why
        not on the samples alone: the stats that reach the budget come with the last
        fragments, and stopping on them dropped those fragments untrained while they were
        still being decoded and assembled (a test's run of two batches trained one)."""
        if self.progress.agent_steps < budget:
            return False
        return self.trainer.fresh_steps >= budget or not any(self._pending().values())

    # --------------------------------------------------------------- side tasks
    async def _heartbeat(self, stop: asyncio.Event) -> None:
        """Keep the record's heartbeat fresh; notice stop requests and a shutdown."""
        while self.stop_reason is None:
            if stop.is_set():
                self.stop_reason, self.final_state = "learner shut down", RunState.stopped
                break
            try:
                rec = await runs.transition(self.assets.runs, self.run_id, {RunState.running}, None,
                                            owner=self.learner.learner_id, heartbeat=time.time(),
                                            checkpoint=self.last_checkpoint)
                self.rec = rec
            except runs.TransitionRefused as e:  # stop requested, or the run was taken over
                self.stop_reason, self.final_state = f"stop requested ({e})", RunState.stopped
                break
            except Exception as e:
                log.debug("heartbeat failed: %s", e)
            await asyncio.sleep(HEARTBEAT_S)

    async def _metrics_loop(self) -> None:
        while True:
            await asyncio.sleep(METRICS_S)
            await self._publish_metrics()

    def metrics_point(self) -> dict:
        now = time.time()
        steps = self.progress.agent_steps
        steps_per_s, trained_per_s = self.rates.add(now, steps, self.trained_steps)
        busy = self.data_wait + self.train_time
        members = self.learner.membership.live(self.run_id)
        return {
            "time": now, "elapsed": now - self.t0, "agent_steps": steps,
            "steps_per_s": steps_per_s,
            "trained_steps": self.trained_steps, "fresh_trained_steps": self.trainer.fresh_steps,
            "trained_per_s": trained_per_s,
            "updates": self.trainer.updates, "version": self.version,
            "mean_return": self.progress.mean_return, "episodes": self.progress.episodes,
            "mean_length": (sum(self.progress.lengths) / len(self.progress.lengths)) if self.progress.lengths else None,
            "policy_lag": self.last_lag, "data_wait_frac": self.data_wait / busy if busy else None,
            "wire_bytes_per_step": self.counters.get("fresh_bytes", 0) / steps if steps else None,
            "losses": self.last_losses,
            # what the actors say of themselves (advisory; the run's counters come from the fragments)
            "counters": {**self.learner.counters, **self.counters,
                         "actor_publish_failed": sum(m.stats.get("publish_failed", 0) for m in members.values())},
            "actors": len(members), "last_actor_error": self.last_actor_error, "solved": self.progress.solved,
            "round_wait_max_s": (self.prefetch.round_wait_max if self.prefetch is not None and self.cfg.flow == "sync"
                                 else None),
            "queues": ({"fresh": len(self.prefetch.fresh), "batches": self.prefetch.queue.qsize()}
                       if self.prefetch is not None else {}),
        }

    async def _publish_metrics(self, point: Optional[dict] = None) -> None:
        point = point or self.metrics_point()
        try:
            await self.assets.js.publish(wiring.metrics(self.run_id, "learner"), json.dumps(point).encode())
        except Exception as e:
            self.counters.inc("metrics_failed")
            log.debug("metrics publish failed: %s", e)

    async def _publish_weights(self) -> None:
        version, arrays = self.acting  # read together in the training thread (see _snapshot)
        try:
            await weights.publish(self.assets, self.nc, self.run_id, version, arrays, pending=self._pending())
            self.published_version = max(self.published_version, version)
            if self.prefetch is not None:
                self.prefetch.new_round()
        except Exception as e:
            self.counters.inc("weights_publish_failed")
            log.warning("weights publish failed: %s", e)

    # ------------------------------------------------------------------ end
    async def _finish(self) -> None:
        log.info("run %s ends: %s", self.run_id, self.stop_reason)
        path = await self._checkpoint()  # on disk first: what a resume needs, whatever the broker does
        point = self.metrics_point()
        point["final"] = True
        try:
            async with asyncio.timeout(END_ON_BROKER_S):
                await _quietly(weights.announce_end(self.nc, self.run_id, self.version))
                await self._publish_metrics(point)
                await runs.transition(self.assets.runs, self.run_id, {RunState.running, RunState.stopping},
                                      self.final_state, owner=self.learner.learner_id, reason=self.stop_reason,
                                      checkpoint=str(path), resume=False)
        except (runs.TransitionRefused, KeyError) as e:
            log.warning("could not record the end of run %s: %s", self.run_id, e)
        except (TimeoutError, nats.errors.Error) as e:
            log.warning("run %s: the broker did not take its end (%s); it resumes from %s when requeued",
                        self.run_id, type(e).__name__, path)

    async def _checkpoint(self) -> Path:
        """Periodic and final checkpoints (services/learner/checkpoints.py), in the
        training thread so the state is consistent; loads with weights_only=True."""
        path = await asyncio.get_running_loop().run_in_executor(self.train_pool, self.save_checkpoint)
        self.ckpt_clock.mark(self.trainer.updates)
        self.last_checkpoint = str(path)
        self.counters.inc("checkpoints")
        return path

    def save_checkpoint(self) -> Path:
        return self.ckpt_dir.save(self.snapshot(), self.trainer.updates)

    # ---------------------------------------------------------- the run's state
    def snapshot(self) -> dict:
        """Everything to continue the run, as tensors and plain values (a checkpoint loads
        with weights_only=True). Called on the training thread: a consistent state."""
        pr = self.progress
        return self.trainer.state() | {
            "config": self.cfg.model_dump(mode="json"), "run_id": self.run_id,
            "agent_steps": pr.agent_steps, "episodes": pr.episodes, "version": self.version,
            "returns": list(pr.returns), "lengths": list(pr.lengths), "trained_steps": self.trained_steps,
            "elapsed": time.time() - self.t0, "saved_at": time.time(), "rng": checkpoints.rng_state()}

    def restore(self, state: dict, floor: dict) -> None:
        """Take a snapshot back (training thread), with its counters raised to `floor`, what the
        run had already reported: the work between the checkpoint and a crash did happen, so
        agent steps and updates never go backwards, and the policy version keeps rising (actors
        holding weights from the lost stretch still load the resumed ones)."""
        tr = self.trainer
        tr.load_state(state)
        if floor.get("updates") is not None:  # +1: newer than any version actors may already hold
            tr.updates = tr.acted_version = max(tr.updates, int(floor["updates"]) + 1)
        self.version = tr.updates
        steps = max(int(state["agent_steps"]), int(floor.get("agent_steps") or 0))
        episodes = max(int(state["episodes"]), int(floor.get("episodes") or 0))
        self.progress = Progress(steps_offset=steps, episodes_offset=episodes)
        self.progress.returns.extend(float(r) for r in state.get("returns", []))
        self.progress.lengths.extend(int(n) for n in state.get("lengths", []))
        self.trained_steps = max(int(state.get("trained_steps", 0)), int(floor.get("trained_steps") or 0))
        self.t0 = time.time() - max(float(state.get("elapsed", 0.0)), float(floor.get("elapsed") or 0.0))
        self.rates = RateWindow(RATE_WINDOW_S)  # a rate across the restart would count the checkpoint's steps
        if state.get("rng") is not None:
            checkpoints.set_rng_state(state["rng"])

    async def resume(self) -> Optional[Path]:
        """Continue from the run's newest readable checkpoint, if it has one."""
        state, path = checkpoints.newest_readable(self.ckpt_dir, self.rec.checkpoint, self.counters)
        if state is None:
            log.warning("run %s: resume asked but no checkpoint found in %s; starting fresh", self.run_id,
                        self.ckpt_dir.path)
            self.counters.inc("resume_without_checkpoint")
            return None
        floor = await checkpoints.reported_floor(self.assets.js, self.run_id)
        await asyncio.get_running_loop().run_in_executor(self.train_pool, self.restore, state, floor)
        self.counters.inc("resumed")
        log.info("run %s resumed from %s (updates %d, agent steps %d)", self.run_id, path, self.trainer.updates,
                 self.progress.agent_steps)
        return path


class RateWindow:
    """Steps per second over the last `window` seconds, the one rate every view shows (the
    launcher, the CLI, the dashboard, Prometheus). A per-second rate of a sync run flips
    between a round's burst and 0 while its real rate is in between."""

    def __init__(self, window: float):
        self.window = window
        self.points: collections.deque[tuple[float, int, int]] = collections.deque()

    def add(self, now: float, steps: int, trained: int) -> tuple[float, float]:
        """Record the counters at `now`; (agent steps/s, trained steps/s) over the window."""
        self.points.append((now, steps, trained))
        while len(self.points) > 2 and now - self.points[1][0] >= self.window:
            self.points.popleft()
        t0, s0, r0 = self.points[0]
        dt = now - t0
        return ((steps - s0) / dt, (trained - r0) / dt) if dt > 0 else (0.0, 0.0)


async def _quietly(coro) -> None:
    try:
        await coro
    except Exception:
        pass
