"""A bounded circular store of compressed fragments (one per run per shard).

Bounded both in count and in bytes: when either limit is hit, the oldest
fragments go first. Fragments stay compressed; sampling returns raw bytes.
"""
from __future__ import annotations

import collections
import random
from typing import Optional


class FragmentStore:
    def __init__(self, capacity: int, capacity_bytes: int, seed: Optional[int] = None):
        if capacity < 1 or capacity_bytes < 1:
            raise ValueError("capacity must be positive")
        self.capacity, self.capacity_bytes = capacity, capacity_bytes
        self._items: collections.deque[bytes] = collections.deque()
        self.nbytes = 0
        self.evicted = 0
        self._rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, data: bytes) -> bool:
        """Store one fragment; False (and nothing stored) if it alone exceeds the byte cap."""
        if len(data) > self.capacity_bytes:
            return False
        self._items.append(data)
        self.nbytes += len(data)
        while len(self._items) > self.capacity or self.nbytes > self.capacity_bytes:
            self.nbytes -= len(self._items.popleft())
            self.evicted += 1
        return True

    def sample(self, n: int, max_bytes: int) -> list[bytes]:
        """Up to n uniformly random fragments (with replacement) totalling at most max_bytes."""
        out, total = [], 0
        if not self._items:
            return out
        for _ in range(n):
            item = self._items[self._rng.randrange(len(self._items))]
            if total + len(item) > max_bytes:
                break
            out.append(item)
            total += len(item)
        return out
