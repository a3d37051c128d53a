"""A run's progress, counted by the learner from the fragments it validated.

An actor host is outside the trust boundary, so nothing it *claims* moves a
run: agent steps are the steps of the fragments that passed validation, and
episode returns are summed from their raw rewards and done flags. A forged
stats or heartbeat message cannot end a run or change its counters; a forged
fragment is data, trained on like any other, and bounded like any other.
"""
from __future__ import annotations

import collections
import time
from typing import Optional

import numpy as np


class Progress:
    """Agent steps, the last 100 episode returns, and when the target was first reached."""

    def __init__(self, window: int = 100, steps_offset: int = 0, episodes_offset: int = 0):
        self.steps = 0  # agent steps of validated fresh fragments, this session
        self.steps_offset = steps_offset  # the steps of earlier sessions (a resumed run)
        self.returns: collections.deque[float] = collections.deque(maxlen=window)
        self.lengths: collections.deque[int] = collections.deque(maxlen=window)
        self.episodes = episodes_offset
        self.solved: Optional[dict] = None

    @property
    def agent_steps(self) -> int:
        return self.steps_offset + self.steps

    @property
    def mean_return(self) -> Optional[float]:
        return sum(self.returns) / len(self.returns) if self.returns else None

    @property
    def window_full(self) -> bool:
        return len(self.returns) == self.returns.maxlen

    def add_steps(self, n: int) -> None:
        self.steps += n

    def add_episodes(self, finished: list[tuple[float, int]]) -> None:
        for ret, length in finished:
            self.returns.append(ret)
            self.lengths.append(length)
            self.episodes += 1

    def check_solved(self, target: Optional[float], elapsed: float) -> bool:
        if target is None or not self.window_full or self.mean_return < target:
            return self.solved is not None
        if self.solved is None:
            # The mean that met the target: episodes that end while the run winds down
            # may move the run's last mean a little below it.
            self.solved = {"agent_steps": self.agent_steps, "seconds": elapsed, "time": time.time(),
                           "mean_return": self.mean_return}
        return True


class EpisodeTracker:
    """Episode returns and lengths summed from each actor's fragments, env column by
    env column, across fragments. An episode counts only if every one of its steps
    was seen: a column is known from the start of the actor's run (a fragment with
    t0 0, when the actor has just reset its envs) or from its first done flag, and a
    gap in the actor's messages (lost in transit) forgets all its open episodes.
    Remembers at most `max_actors` actors (least recently seen forgotten), so forged
    actor ids cannot grow it without bound."""

    def __init__(self, num_envs: int, max_actors: int = 4096):
        self.num_envs, self.max_actors = num_envs, max_actors
        self.open: collections.OrderedDict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = collections.OrderedDict()

    def add(self, actor: str, col0: int, t0: int, rewards: np.ndarray, dones: np.ndarray) -> list[tuple[float, int]]:
        """One message's columns col0.. of `actor`: the episodes it completes (raw return, length)."""
        state = self.open.pop(actor, None)
        if state is None:
            state = (np.zeros(self.num_envs), np.zeros(self.num_envs, np.int64), np.zeros(self.num_envs, bool))
        self.open[actor] = state
        if len(self.open) > self.max_actors:
            self.open.popitem(last=False)
        ret, length, known = (a[col0:col0 + rewards.shape[1]] for a in state)
        if t0 == 0:
            known[:], ret[:], length[:] = True, 0.0, 0
        finished = []
        for t in range(rewards.shape[0]):
            ret += rewards[t]
            length += 1
            for i in np.flatnonzero(dones[t]):
                if known[i]:
                    finished.append((float(ret[i]), int(length[i])))
                ret[i], length[i], known[i] = 0.0, 0, True
        return finished

    def lost(self, actor: str) -> None:
        """Messages of `actor` went missing: its open episodes cannot be counted."""
        self.open.pop(actor, None)


class SequenceGaps:
    """Counts fragments lost in transit (e.g. while nats-server restarts) from gaps
    in each actor's sequence numbers. Remembers at most `max_actors` actors (least
    recently seen forgotten), so forged actor ids cannot grow it without bound."""

    def __init__(self, max_actors: int = 4096):
        self.last: collections.OrderedDict[str, int] = collections.OrderedDict()
        self.max_actors = max_actors

    def observe(self, actor: str, seq: int) -> int:
        """Record one arrival; returns how many fragments of this actor went missing before it."""
        prev = self.last.pop(actor, None)
        self.last[actor] = max(seq, prev or 0)
        if len(self.last) > self.max_actors:
            self.last.popitem(last=False)
        return max(0, seq - prev - 1) if prev is not None else 0
