"""Run records on a real nats-server: revision-checked transitions, one claimant per run."""
import asyncio

import pytest

from shared import bus, runs
from shared.config import RunConfig, RunRecord, RunState


async def test_only_one_of_many_concurrent_claims_wins(nats_stack):
    conns = [await bus.connect(nats_stack.nats_url, f"c{i}") for i in range(4)]
    try:
        assets = [await bus.ensure_assets(c) for c in conns]
        await runs.create(assets[0].runs, RunRecord(id="r1", config=RunConfig()))

        async def claim(i):
            try:
                await runs.transition(assets[i].runs, "r1", {RunState.pending}, RunState.running, learner_id=f"L{i}")
                return i
            except runs.TransitionRefused:
                return None

        winners = [w for w in await asyncio.gather(*(claim(i) for i in range(4))) if w is not None]
        assert len(winners) == 1
        rec, _ = await runs.read(assets[0].runs, "r1")
        assert rec.state == RunState.running and rec.learner_id == f"L{winners[0]}"
    finally:
        for c in conns:
            await c.close()


async def test_transition_refused_from_wrong_state(nc):
    assets = await bus.ensure_assets(nc)
    await runs.create(assets.runs, RunRecord(id="r2", config=RunConfig(), state=RunState.finished))
    with pytest.raises(runs.TransitionRefused):
        await runs.transition(assets.runs, "r2", {RunState.running}, RunState.stopping)
    with pytest.raises(KeyError):
        await runs.transition(assets.runs, "nope", {RunState.running}, RunState.stopping)
    assert [r.id for r in await runs.list_all(assets.runs)] == ["r2"]
