"""Run progress the learner aggregates from actor stats messages."""
from __future__ import annotations

import collections
import json
import math
import time
from typing import Optional

from shared import wire
from shared.service import Counters

MAX_EPISODES_PER_MSG = 10_000


class Progress:
    """Agent steps (sum of each actor's cumulative count), the last 100 episode
    returns, and when the target was first reached."""

    def __init__(self, window: int = 100, steps_offset: int = 0, episodes_offset: int = 0):
        self.actor_steps: dict[str, int] = {}
        self.steps_offset = steps_offset
        self.returns: collections.deque[float] = collections.deque(maxlen=window)
        self.lengths: collections.deque[int] = collections.deque(maxlen=window)
        self.episodes = episodes_offset
        # Per actor, cumulative: fragments acted after a flow-control wait ran out, and
        # messages the broker refused (whatever the cause, they never reach the learner).
        self.actor_counts: dict[str, dict[str, int]] = {"wait_timeouts": {}, "publish_failed": {}}
        self.solved: Optional[dict] = None

    @property
    def agent_steps(self) -> int:
        return self.steps_offset + sum(self.actor_steps.values())

    @property
    def mean_return(self) -> Optional[float]:
        return sum(self.returns) / len(self.returns) if self.returns else None

    @property
    def wait_timeouts(self) -> int:
        """Fragments any actor acted after its wait for newer weights ran out (actor_wait):
        each such fragment trains at a policy lag, so a lag-0 run should count none."""
        return sum(self.actor_counts["wait_timeouts"].values())

    @property
    def publish_failed(self) -> int:
        """Messages (fragments or their parts) the actors could not publish. The learner's
        sequence gaps (lost_in_transit) see one only when a later message arrives; an
        actor none of whose messages get through shows up here alone."""
        return sum(self.actor_counts["publish_failed"].values())

    @property
    def window_full(self) -> bool:
        return len(self.returns) == self.returns.maxlen

    def on_stats(self, data: bytes, counters: Counters) -> Optional[str]:
        """Apply one actor stats message; malformed ones are counted and ignored.
        Returns the actor's id if the message says it has left the run."""
        try:
            msg = json.loads(data)
            actor, steps, episodes = msg["actor"], msg["steps"], msg["episodes"]
            if not (isinstance(actor, str) and 0 < len(actor) <= 128 and isinstance(steps, int) and steps >= 0
                    and isinstance(episodes, list) and len(episodes) <= MAX_EPISODES_PER_MSG):
                raise ValueError("bad field")
            parsed = [(float(r), int(n)) for r, n in episodes]
            if not all(math.isfinite(r) for r, _ in parsed):
                raise ValueError("non-finite return")
        except (ValueError, KeyError, TypeError, RecursionError):  # deeply nested JSON recurses
            counters.inc("rejected_stats")
            return None
        self.actor_steps[actor] = max(steps, self.actor_steps.get(actor, 0))
        for key, per_actor in self.actor_counts.items():
            if wire.is_count(count := msg.get(key)):
                per_actor[actor] = max(count, per_actor.get(actor, 0))
        for r, n in parsed:
            self.returns.append(r)
            self.lengths.append(n)
            self.episodes += 1
        return actor if msg.get("left") is True else None

    def check_solved(self, target: Optional[float], elapsed: float) -> bool:
        if target is None or not self.window_full or self.mean_return < target:
            return self.solved is not None
        if self.solved is None:
            self.solved = {"agent_steps": self.agent_steps, "seconds": elapsed, "time": time.time()}
        return True


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
