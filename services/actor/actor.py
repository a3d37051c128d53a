"""Actor: steps a vector of envs with the latest policy and publishes fragments.

An actor host is outside the trust boundary: its credential lets it publish
fragments and heartbeats, ask the registry for a slot and a run, and read
weights, nothing else (shared/roles.py). So it learns everything it needs from
the learners: its slot (its identity for env seeds and names) from
`actors.join`, the run to serve and its config from `actors.assign`, and
whether to stay from the answers to its heartbeats (services/learner/registry.py).

The env stepping and policy inference run in one worker thread (torch and the
emulators release the GIL), so the event loop stays free for NATS: weight
notices, heartbeats and publishing.

Flow control (the run's `flow`): in `sync` flow the actor acts one fragment on
each weights version: after a fragment it waits for newer weights, and for the
learner to have trained its fragment, or for the learner to say it is short of
data and holds this actor's newest fragment (then no newer weights can come
first, and acting again is still policy lag 0). It waits for nothing else: a
learner that is gone shows as unanswered heartbeats, and the actor leaves. In
`async` flow it never waits once it has weights.
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

from shared import bus, weights, wiring
from shared.config import RunConfig
from shared.envs import VectorEnv
from shared.fragment import Fragment, encode_within
from shared.models import ActorCritic, build_model, load_numpy_state
from shared.service import Counters

log = logging.getLogger("actor")

PUBLISH_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 2.0
HEARTBEAT_S = 1.0
HEARTBEAT_MISSES = 3  # unanswered heartbeats in a row: the run's learner is gone
WEIGHTS_POLL_S = 5.0  # a lost notice costs at most this long
ERROR_BACKOFF_S = 10.0
ENDED_GUARD_S = 5.0  # how long an actor does not rejoin a run it saw end
# Why an actor leaves a run (the learner's answers say the first two, or why else).
ENDING, ENDED, UNANSWERED = "the run is ending", "the run ended", "its learner does not answer"


def env_seed(base: int, slot: int, joins: int) -> int:
    """The seed of an actor's env vector: distinct per slot (1000 apart: an actor steps at
    most 256 envs, seeded base, base + 1, ...), and per run it joins in its life."""
    return (base + 1000 * slot + (1 << 24) * (joins - 1)) % (1 << 31)


class Rollout:
    """The env vector plus the policy, producing one fragment per call (in a thread)."""

    def __init__(self, cfg: RunConfig, run_id: str, actor_id: str, seed: int, env_threads: int):
        self.cfg, self.run_id, self.actor_id = cfg, run_id, actor_id
        # Inference gets as many threads as the emulators: the policy's forward at a
        # small batch is as long as an env step, and both wait for each other.
        # (torch's thread count is per process: one Rollout per actor process.)
        torch.set_num_threads(env_threads)
        self.env = VectorEnv(cfg, cfg.num_envs, seed, num_threads=env_threads)
        self.spec = self.env.spec
        self.model: ActorCritic = build_model(cfg, self.spec).eval()
        self.version = -1
        self.obs = self.env.reset()
        self.gen = torch.Generator().manual_seed(seed)
        self.seq = 0  # messages sent so far; the learner counts gaps as lost in transit
        self.steps_per_env = 0  # agent steps each env has taken: a fragment's t0
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
        bootstrap = None if self.spec.clip_rewards else np.zeros((T, N), np.float32)
        life_lost = np.zeros((T, N), np.uint8) if self.cfg.life_loss_terminal else None
        for t in range(T):
            obs_rows[t] = self.obs[:, -1] if stacked else self.obs
            logits, _ = self.model(torch.from_numpy(self.obs))
            act = torch.multinomial(torch.softmax(logits, -1), 1, generator=self.gen).squeeze(-1)
            a = act.numpy().astype(np.int32)
            self.obs, rew, term, trunc, final = self.env.step(a)
            if final is not None and bootstrap is not None:
                # Time-limit truncation is not failure: the learner bootstraps from the final state's value.
                _, v = self.model(torch.from_numpy(final))
                bootstrap[t] = np.where(trunc, self.cfg.gamma * v.numpy(), 0.0)
            actions[t], logits_buf[t], rewards[t], dones[t] = a, logits.numpy(), rew, term | trunc
            if life_lost is not None:
                life_lost[t] = self.env.life_lost
        obs_rows[T] = self.obs[:, -1] if stacked else self.obs
        frag = Fragment(self.run_id, self.actor_id, max(self.version, 0), obs_rows, actions, logits_buf,
                        rewards, dones, context, bootstrap, life_lost, seq=self.seq + 1, env_seed=self.seed,
                        t0=self.steps_per_env)
        payloads = encode_within(frag, max_bytes)
        self.seq += len(payloads)
        self.steps_per_env += T
        return payloads, T * N

    def close(self) -> None:
        self.env.close()


class Actor:
    def __init__(self, nats_url: Optional[str], index: Optional[int] = None, run_id: Optional[str] = None,
                 env_threads: int = 1):
        """index: a fixed slot (repeatable runs); None: the registry hands one out."""
        self.nats_url, self.slot, self.fixed_run = nats_url, index, run_id
        self.env_threads = env_threads
        self.counters = Counters()
        self.joins = 0
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rollout")
        self.host = f"{socket.gethostname()}-{os.getpid()}"

    async def main(self, stop: asyncio.Event) -> None:
        self.nc = await bus.connect(self.nats_url, "actor", self.counters, inbox_prefix=wiring.ACTOR_INBOX_PREFIX)
        self.js = self.nc.jetstream(timeout=5)
        while self.slot is None and not stop.is_set():
            reply = await self._request(wiring.ACTOR_JOIN, {"host": self.host})
            slot = None if reply is None else reply.get("slot")
            if isinstance(slot, int) and not isinstance(slot, bool) and 0 <= slot < 2**31:
                self.slot = slot
            else:
                if reply is not None:
                    self.counters.inc("bad_replies")
                await _sleep_or_stop(stop, 1.0)
        log.info("actor %s ready in slot %s", self.host, self.slot)
        ended: dict[str, float] = {}  # run -> when this actor saw it end
        while not stop.is_set():
            assignment = await self._assignment()
            # A registry may list a run that just ended for a moment (it caches the run list);
            # the same run may also be resumed later, so the guard only lasts a few seconds.
            if assignment is None or time.monotonic() - ended.get(assignment[0], -ENDED_GUARD_S) < ENDED_GUARD_S:
                await _sleep_or_stop(stop, 1.0)
                continue
            try:
                if await self._serve(*assignment, stop) in (ENDING, ENDED):
                    ended = {r: t for r, t in ended.items() if time.monotonic() - t < ENDED_GUARD_S}
                    ended[assignment[0]] = time.monotonic()
            except Exception:
                log.exception("actor %s: run %s failed here; going idle", self.slot, assignment[0])
                await _sleep_or_stop(stop, 1.0)
        await self.nc.drain()

    async def _request(self, subject: str, body: dict) -> Optional[dict]:
        """One request to the learners; their JSON object reply, or None (no answer, or not an object)."""
        try:
            reply = json.loads((await self.nc.request(subject, json.dumps(body).encode(), REQUEST_TIMEOUT_S)).data)
        except Exception as e:  # no learner yet, a NATS gap, or not JSON
            log.debug("%s: %s", subject, e)
            return None
        return reply if isinstance(reply, dict) else None

    async def _assignment(self) -> Optional[tuple[str, str, RunConfig]]:
        """(run id, learner id, config) of the run the registry gives this actor, or None."""
        reply = await self._request(wiring.ACTOR_ASSIGN, {"slot": self.slot, "run": self.fixed_run})
        if not reply:
            return None
        try:
            run_id = wiring.check_run_id(reply["run"])
            cfg = RunConfig.model_validate(reply["config"], context={"stored": True})
            if not cfg.sized:
                raise ValueError("sizes not settled")
            return run_id, str(reply.get("learner")), cfg
        except (KeyError, TypeError, ValueError) as e:
            self.counters.inc("bad_replies")
            log.warning("bad assignment: %s", e)
            return None

    async def _serve(self, run_id: str, learner_id: str, cfg: RunConfig, stop: asyncio.Event) -> Optional[str]:
        """Serve one run until told to leave, or the learner is gone; why it left."""
        self.joins += 1
        actor_id = f"a{self.slot}-{uuid.uuid4().hex[:6]}"
        state = Serving(actor_id, self.slot, self.host)
        loop = asyncio.get_running_loop()
        beats = asyncio.create_task(self._heartbeats(run_id, state))
        shutdown = asyncio.create_task(_leave_on(stop, state))
        log.info("actor %s joins run %s as %s", self.slot, run_id, actor_id)
        try:
            try:
                rollout = await loop.run_in_executor(self.pool, Rollout, cfg, run_id, actor_id,
                                                     env_seed(cfg.seed, self.slot, self.joins), self.env_threads)
            except Exception as e:  # the env cannot be built here (a module missing on this host, ...)
                state.error = f"{type(e).__name__}: {e}"[:500]
                log.error("actor %s cannot serve run %s: %s", self.slot, run_id, state.error)
                await self._beat(run_id, state)  # the learner shows it; the run goes on with the others
                await _sleep_or_stop(stop, ERROR_BACKOFF_S)
                return None
            await self._act(rollout, run_id, cfg, state, stop)
        finally:
            beats.cancel()
            shutdown.cancel()
            state.leave("leaving")
            await self._beat(run_id, state, final=True)
            log.info("actor %s leaves run %s after %d steps (%s)", self.slot, run_id, state.steps, state.left)
        return state.left

    async def _act(self, rollout: Rollout, run_id: str, cfg: RunConfig, state: "Serving", stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        feed = WeightsFeed(self, run_id, state, cfg.round_deadline_s)
        sub = await self.nc.subscribe(wiring.weights(run_id), cb=feed.on_notice)
        fetcher = asyncio.create_task(feed.run())
        acted: Optional[int] = None  # the weights version of this actor's last fragment
        sent_at = time.monotonic()  # when it went out
        try:
            while state.left is None and not stop.is_set():
                if rollout.version < 0 or (cfg.flow == "sync" and acted is not None):
                    await feed.wait_for_turn(acted, (state.actor_id, rollout.seq), sent_at)
                    if state.left is not None or stop.is_set():
                        break
                if feed.ready is not None and feed.ready[0] > rollout.version:
                    version, arrays = feed.ready
                    load_numpy_state(rollout.model, arrays)  # between rollouts: the worker is idle
                    rollout.version = version
                if rollout.version < 0:
                    continue
                payloads, n = await loop.run_in_executor(self.pool, rollout, self.nc.max_payload)
                acted = rollout.version
                for payload in payloads:
                    try:  # bounded: a stalled client must show up as a counted failure, not a silent hang
                        await asyncio.wait_for(self.nc.publish(wiring.traj(run_id), payload), PUBLISH_TIMEOUT_S)
                    except Exception as e:
                        self.counters.inc("publish_failed")
                        state.publish_failed += 1
                        log.warning("publish failed (%d bytes): %s", len(payload), e)
                sent_at = time.monotonic()
                state.steps += n
                state.fragments += 1
                state.version = rollout.version
        finally:
            fetcher.cancel()
            await _quietly(sub.unsubscribe())
            await loop.run_in_executor(self.pool, rollout.close)

    async def _heartbeats(self, run_id: str, state: "Serving") -> None:
        """One heartbeat a second; the run's learner answers each. It may tell the actor to
        leave (the run is ending, or another run lacks actors); no answer three times in a
        row means it is gone."""
        misses = 0
        while state.left is None:
            answer = await self._beat(run_id, state)
            if answer is None:
                misses += 1
                if misses >= HEARTBEAT_MISSES:
                    state.leave(UNANSWERED)
                    break
            else:
                misses = 0
                if isinstance(answer.get("leave"), str):
                    state.leave(answer["leave"][:200])
                    break
            await asyncio.sleep(HEARTBEAT_S)

    async def _beat(self, run_id: str, state: "Serving", final: bool = False) -> Optional[dict]:
        """Send one heartbeat (a final one goes unanswered); the learner's answer, or None."""
        body = json.dumps(state.heartbeat(final)).encode()
        subject = wiring.actor_heartbeat(run_id)
        try:
            if final:
                await self.nc.publish(subject, body)
                return None
            reply = json.loads((await self.nc.request(subject, body, REQUEST_TIMEOUT_S)).data)
            return reply if isinstance(reply, dict) else None
        except Exception:
            return None


class Serving:
    """This actor's state in the run it serves: what its heartbeats say (advisory: the
    learner counts steps and returns from the fragments) and why it left."""

    def __init__(self, actor_id: str, slot: int, host: str = ""):
        self.actor_id, self.slot, self.host = actor_id, slot, host
        self.steps = self.fragments = self.publish_failed = 0
        self.version = -1
        self.t0 = time.monotonic()
        self.left: Optional[str] = None
        self.error: Optional[str] = None
        self.left_event = asyncio.Event()

    def leave(self, why: str) -> None:
        if self.left is None:
            self.left = why
        self.left_event.set()

    def heartbeat(self, final: bool) -> dict:
        msg = {"actor": self.actor_id, "slot": self.slot, "host": self.host, "steps": self.steps,
               "fragments": self.fragments,
               "publish_failed": self.publish_failed, "version": self.version,
               "sps": self.steps / max(time.monotonic() - self.t0, 1e-6), "left": final}
        if self.error:
            msg["error"] = self.error
        return msg


class WeightsFeed:
    """Fetches new weights in the background whenever a notice arrives (and every few
    seconds in case one was lost), so a fetch never holds up a rollout; `ready` is the
    newest (version, arrays)."""

    def __init__(self, actor: Actor, run_id: str, state: Serving, round_deadline_s: float):
        self.actor, self.run_id, self.state = actor, run_id, state
        self.round_deadline_s = round_deadline_s
        self.ready: Optional[tuple[int, dict]] = None
        self.pending: dict[str, int] = {}  # per actor, its fragments the learner holds untrained (last notice)
        self.short: Optional[tuple[int, dict[str, int]]] = None  # (version, have) while the learner is short of data
        self.short_at = 0.0  # when that notice came (time.monotonic)
        self.notice = asyncio.Event()
        self.fetched = asyncio.Event()

    async def on_notice(self, msg) -> None:
        try:
            notice = weights.parse_notice(msg.data)
        except (ValueError, RecursionError):  # deeply nested JSON recurses
            self.actor.counters.inc("rejected_notices")
            return
        if notice.ended:
            self.state.leave(ENDED)
            self.fetched.set()
            return
        self.pending = notice.pending
        self.short = (notice.version, notice.short) if notice.short is not None else None
        self.short_at = time.monotonic()
        if notice.short is None or self.ready is None or notice.version > self.ready[0]:
            self.notice.set()  # weights to fetch
        else:
            self.fetched.set()  # nothing to fetch: wakes the waiters to read the notice

    async def run(self) -> None:
        while True:
            self.notice.clear()
            try:
                got = await weights.fetch(self.actor.js, self.run_id)
            except Exception as e:  # corrupt or forged object, replaced while read, or a NATS gap
                self.actor.counters.inc("bad_weights")
                log.debug("weights for %s not loaded: %s", self.run_id, e)
                got = None
            if got is not None and (self.ready is None or got[0] > self.ready[0]):
                self.ready = got
            self.fetched.set()  # wakes waiters: new weights, or new pending figures
            await _wait_event(self.notice, 0.5 if got is None else WEIGHTS_POLL_S)

    async def wait_for_turn(self, acted: Optional[int], sent: tuple[str, int], sent_at: float) -> None:
        """Until this actor may act its next fragment (see `turn`), or leaves the run."""
        while (why := self.turn(acted, sent, sent_at)) is None and self.state.left is None:
            self.fetched.clear()
            waits = {asyncio.ensure_future(self.fetched.wait()), asyncio.ensure_future(self.state.left_event.wait())}
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
        if why == "lost":
            self.actor.counters.inc("lost_fragments")
            log.info("run %s: fragment %d of %s did not reach the learner; acting again", self.run_id, sent[1], sent[0])

    def turn(self, acted: Optional[int], sent: tuple[str, int], sent_at: float) -> Optional[str]:
        """Why this actor may act its next fragment now, or None. Weights are here and,
        after a fragment acted on version `acted`: newer weights are here and the learner
        holds none of this actor's fragments untrained ("weights"), or the learner is
        short of data, has no newer weights than ours and holds this actor's newest
        fragment (`sent`: its id and sequence number: "held") or has lost it ("lost").
        Only its own fragments count: other actors' fragments of the next round may
        already be in, and waiting for them to be trained would wait for ours."""
        if self.ready is None:
            return None
        if acted is None:
            return "first"
        if self.ready[0] > acted and self.pending.get(sent[0], 0) == 0:
            return "weights"
        if self.short is not None and self.ready[0] >= self.short[0]:
            held = self.short[1].get(sent[0], 0)  # sequence numbers start at 1
            if held == sent[1]:
                return "held"
            # A notice that came round_deadline_s or more after our newest fragment went out
            # (at `sent_at`, time.monotonic) and holds none up to it: that fragment was lost
            # in transit (a broker restart, a dropped connection). No weights can come
            # without data, so act again on these; the learner counts the sequence gap.
            if held < sent[1] and self.short_at - sent_at >= self.round_deadline_s:
                return "lost"
        return None


async def _leave_on(stop: asyncio.Event, state: Serving) -> None:
    await stop.wait()
    state.leave("the actor is shutting down")


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
