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
