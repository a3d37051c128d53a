"""Checkpoints and resume: a run of hours must outlive the learner process.

A checkpoint is everything needed to continue a run where it was: model,
optimiser, target network, counters (updates, agent steps, episodes, trained
steps, the last 100 returns), the run config and the RNG states of torch,
numpy and Python's `random`. All of it is tensors and plain values, so it
loads with `torch.load(path, weights_only=True)`: no pickle of arbitrary
objects, ever. Files are written to a temp name and renamed (a crash never
leaves half a checkpoint under a real name) and only the newest K are kept.

What a checkpoint holds, and how a resumed run takes it back, is the run
session's (RunSession.snapshot and .restore in learner.py): one owner for
that state. Here are the files, the clock, the RNG states and the high-water
marks a resume must not fall below (`reported_floor`).
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from shared import jsapi, wire, wiring

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


def load(path: str | Path) -> dict:
    """The only way checkpoints are read: no arbitrary unpickling."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def newest_readable(store: CheckpointDir, fallback: Optional[str], counters: dict) -> tuple[Optional[dict], Optional[Path]]:
    """The newest checkpoint of a run that loads (a damaged file falls back to the one
    before, counted), or the record's `fallback` path if the folder has none: (state, path),
    or (None, None)."""
    candidates = store.all()[::-1]
    if not candidates and fallback and Path(fallback).is_file():
        candidates = [Path(fallback)]
    for path in candidates:
        try:
            return load(path), path
        except Exception as e:
            log.warning("checkpoint %s unreadable (%s); trying an older one", path, e)
            counters["checkpoint_unreadable"] = counters.get("checkpoint_unreadable", 0) + 1
    return None, None


async def reported_floor(js, run_id: str) -> dict:
    """The run's last learner metrics point and published weights version, or {}:
    the high-water marks a resumed run must not fall below."""
    floor: dict = {}
    try:
        msg = await js.get_last_msg(wiring.METRICS_STREAM, wiring.metrics(run_id, "learner"))
        point = json.loads(msg.data)
        if isinstance(point, dict):
            floor = {k: point.get(k) for k in ("updates", "agent_steps", "episodes", "trained_steps", "elapsed")}
    except Exception as e:  # no metrics yet, or NATS gap: the checkpoint alone decides
        log.info("no metrics floor for %s: %s", run_id, e)
    try:
        _, data = await jsapi.read_object(js, wiring.WEIGHTS_BUCKET, run_id, wire.MAX_RAW_BYTES)
        meta, _, _ = wire.decode_header(data)
        floor["updates"] = max(int(meta.get("version", 0)), int(floor.get("updates") or 0))
    except Exception as e:
        log.info("no weights floor for %s: %s", run_id, e)
    return floor
