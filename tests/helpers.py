"""Helpers the end-to-end tests share: a started stack and polling without timing assertions."""
from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Awaitable, Callable, Iterator

from services.launcher.stack import Stack


@contextlib.contextmanager
def started_stack(tmp_path_factory, name: str, actors: int) -> Iterator[Stack]:
    """nats-server, gateway, learner, replay and `actors` actors, each its own process."""
    stack = Stack(tmp_path_factory.mktemp(name))
    try:
        stack.start_all(actors=actors)
        yield stack
    finally:
        stack.close()


async def poll(probe: Callable[[], Awaitable[Any]], ok: Callable[[Any], bool], timeout: float, what: str) -> Any:
    """Call probe() until ok(value); generous timeouts for a busy 2-core box."""
    deadline = time.time() + timeout
    while True:
        value = await probe()
        if ok(value):
            return value
        if time.time() > deadline:
            raise TimeoutError(f"{what}: still {value} after {timeout} s")
        await asyncio.sleep(0.5)


def random_batch(T: int, B: int, seed: int = 0) -> dict:
    """A time-major learner batch of a 4-float, 2-action env, random but seeded."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return {"obs": torch.randn(T + 1, B, 4, generator=g), "actions": torch.randint(0, 2, (T, B), generator=g).int(),
            "logits": torch.randn(T, B, 2, generator=g), "rewards": torch.randn(T, B, generator=g),
            "dones": (torch.rand(T, B, generator=g) < 0.1).to(torch.uint8)}
