"""Checkpoints and resume: a run of hours must outlive the learner process.

A checkpoint is everything needed to continue a run where it was: model,
optimiser, target network, counters (updates, agent steps, episodes, trained
steps, the last 100 returns), the run config and the RNG states of torch,
numpy and Python's `random`. All of it is tensors and plain values, so it
loads with `torch.load(path, weights_only=True)`: no pickle of arbitrary
objects, ever. Files are written to a temp name and renamed (a crash never
leaves half a checkpoint under a real name) and only the newest K are kept.

On resume the counters are raised to whatever the run had already reported
(its last metrics point and the last published weights version), because the
work between the checkpoint and the crash did happen: agent steps and
updates never go backwards, and the policy version keeps rising, so actors
holding weights from the lost stretch still load the resumed ones.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from shared import wire, wiring
from services.learner.progress import Progress

if TYPE_CHECKING:  # pragma: no cover
    from services.learner.learner import RunSession

log = logging.getLogger("learner.checkpoints")

_NAME = re.compile(r"^ckpt_(\d{9})\.pt$")


class CheckpointDir:
    """One run's checkpoint folder: atomic writes, newest-K retention, newest lookup."""

    def __init__(self, root: str | Path, run_id: str, keep: int):
        self.path = Path(root) / wiring.check_run_id(run_id)
        self.keep = keep

    def save(self, state: dict, updates: int) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        final = self.path / f"ckpt_{updates:09d}.pt"
        tmp = self.path / f".ckpt_{updates:09d}.{os.getpid()}.tmp"
        torch.save(state, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        self._prune()
        return final

    def all(self) -> list[Path]:
        """Checkpoints, oldest first (names sort by update count)."""
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.iterdir() if _NAME.match(p.name))

    def newest(self) -> Optional[Path]:
        found = self.all()
        return found[-1] if found else None

    def _prune(self) -> None:
        for old in self.all()[:-self.keep]:
            old.unlink(missing_ok=True)


class CheckpointClock:
    """Says when the next checkpoint is due: every `interval_s` seconds and/or
    every `every_updates` updates (0 switches either off)."""

    def __init__(self, interval_s: float, every_updates: int, updates: int = 0):
        self.interval_s, self.every_updates = interval_s, every_updates
        self.last_time, self.last_updates = time.time(), updates

    def due(self, updates: int) -> bool:
        by_time = self.interval_s > 0 and time.time() - self.last_time >= self.interval_s
        by_count = self.every_updates > 0 and updates - self.last_updates >= self.every_updates
        return by_time or by_count

    def mark(self, updates: int) -> None:
        self.last_time, self.last_updates = time.time(), updates


# ---------------------------------------------------------------- RNG states
def rng_state() -> dict:
    """torch, numpy and Python RNG states as tensors and plain values (weights_only-safe)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": {"version": int(py_state[0]), "state": torch.tensor(py_state[1], dtype=torch.int64)},
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), None))


# ---------------------------------------------------------- session capture
def snapshot(session: "RunSession") -> dict:
    """Everything to continue the run; call from the training thread (consistent state)."""
    pr = session.progress
    return session.trainer.state() | {
        "config": session.cfg.model_dump(mode="json"), "run_id": session.run_id,
        "agent_steps": pr.agent_steps, "episodes": pr.episodes, "version": session.version,
        "returns": list(pr.returns), "lengths": list(pr.lengths),
        "trained_steps": session.trained_steps,
        "elapsed": time.time() - session.t0, "saved_at": time.time(), "rng": rng_state(),
    }


def load(path: str | Path) -> dict:
    """The only way checkpoints are read: no arbitrary unpickling."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def restore(session: "RunSession", state: dict, floor: dict) -> None:
    """Put a checkpoint back into a fresh session; counters raised to `floor`
    (what the run had already reported) so none goes backwards."""
    tr = session.trainer
    tr.load_state(state)
    if floor.get("updates") is not None:  # +1: newer than any version actors may already hold
        tr.updates = tr.acted_version = max(tr.updates, int(floor["updates"]) + 1)
    session.version = tr.updates
    steps = max(int(state["agent_steps"]), int(floor.get("agent_steps") or 0))
    episodes = max(int(state["episodes"]), int(floor.get("episodes") or 0))
    session.progress = Progress(steps_offset=steps, episodes_offset=episodes)
    session.progress.returns.extend(float(r) for r in state.get("returns", []))
    session.progress.lengths.extend(int(n) for n in state.get("lengths", []))
    session.trained_steps = max(int(state.get("trained_steps", 0)), int(floor.get("trained_steps") or 0))
    elapsed = max(float(state.get("elapsed", 0.0)), float(floor.get("elapsed") or 0.0))
    session.t0 = time.time() - elapsed
    session.series_prev = (time.time(), steps, session.trained_steps)
    if state.get("rng") is not None:
        set_rng_state(state["rng"])


async def reported_floor(session: "RunSession") -> dict:
    """The run's last learner metrics point and published weights version, or {}:
    the high-water marks a resumed run must not fall below."""
    floor: dict = {}
    try:
        msg = await session.assets.js.get_last_msg(wiring.METRICS_STREAM, wiring.metrics(session.run_id, "learner"))
        point = json.loads(msg.data)
        if isinstance(point, dict):
            floor = {k: point.get(k) for k in ("updates", "agent_steps", "episodes", "trained_steps", "elapsed")}
    except Exception as e:  # no metrics yet, or NATS gap: the checkpoint alone decides
        log.info("no metrics floor for %s: %s", session.run_id, e)
    try:
        res = await session.assets.weights.get(session.run_id)
        meta, _, _ = wire.decode_header(res.data)
        floor["updates"] = max(int(meta.get("version", 0)), int(floor.get("updates") or 0))
    except Exception as e:
        log.info("no weights floor for %s: %s", session.run_id, e)
    return floor


async def resume(session: "RunSession", root: Path) -> Optional[Path]:
    """Load the run's newest checkpoint into the session (if there is one)."""
    store = CheckpointDir(root, session.run_id, session.cfg.checkpoint_keep)
    candidates = store.all()[::-1]
    if not candidates and session.rec.checkpoint and Path(session.rec.checkpoint).is_file():
        candidates = [Path(session.rec.checkpoint)]
    state, newest = None, None
    for newest in candidates:  # newest first; a damaged file falls back to the one before
        try:
            state = load(newest)
            break
        except Exception as e:
            log.warning("checkpoint %s unreadable (%s); trying an older one", newest, e)
            session.counters.inc("checkpoint_unreadable")
    if state is None:
        log.warning("run %s: resume asked but no checkpoint found in %s; starting fresh", session.run_id, store.path)
        session.counters.inc("resume_without_checkpoint")
        return None
    floor = await reported_floor(session)
    # on the training thread, like all of the learner's torch work (RunSession says why)
    await asyncio.get_running_loop().run_in_executor(session.train_pool, restore, session, state, floor)
    session.counters.inc("resumed")
    log.info("run %s resumed from %s (updates %d, agent steps %d)", session.run_id, newest,
             session.trainer.updates, session.progress.agent_steps)
    return newest
