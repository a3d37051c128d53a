"""Run records on a real nats-server: revision-checked transitions, one claimant per run."""
import asyncio
import time

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


async def test_lost_learner_is_requeued_to_resume_and_owner_is_checked(nc):
    assets = await bus.ensure_assets(nc)
    cfg = RunConfig(heartbeat_timeout_s=5)
    old = time.time() - 60
    await runs.create(assets.runs, RunRecord(id="lost", config=cfg, state=RunState.running, learner_id="L1",
                                             heartbeat=old))
    await runs.create(assets.runs, RunRecord(id="alive", config=cfg, state=RunState.running, learner_id="L2",
                                             heartbeat=time.time()))
    await runs.create(assets.runs, RunRecord(id="winding", config=cfg, state=RunState.stopping, learner_id="L3",
                                             heartbeat=old))
    assert sorted(await runs.requeue_lost(assets.runs)) == ["lost", "winding"]
    lost, _ = await runs.read(assets.runs, "lost")
    assert lost.state == RunState.pending and lost.resume and lost.resumes == 1 and "lost" in lost.reason
    assert lost.learner_id is None
    assert (await runs.read(assets.runs, "winding"))[0].state == RunState.stopped
    assert (await runs.read(assets.runs, "alive"))[0].state == RunState.running
    # The old learner's heartbeat is refused once another learner owns the run.
    await runs.transition(assets.runs, "lost", {RunState.pending}, RunState.running, learner_id="L9")
    with pytest.raises(runs.TransitionRefused):
        await runs.transition(assets.runs, "lost", {RunState.running}, None, owner="L1", heartbeat=time.time())
    await runs.transition(assets.runs, "lost", {RunState.running}, None, owner="L9", heartbeat=time.time())


async def test_resume_only_from_stopped_or_failed(nc):
    assets = await bus.ensure_assets(nc)
    for state in RunState:
        await runs.create(assets.runs, RunRecord(id=f"s-{state.value}", config=RunConfig(), state=state))
        if state in runs.RESUMABLE:
            rec = await runs.request_resume(assets.runs, f"s-{state.value}")
            assert rec.state == RunState.pending and rec.resume and rec.resumes == 1
        else:
            with pytest.raises(runs.TransitionRefused):
                await runs.request_resume(assets.runs, f"s-{state.value}")
    # finished is terminal: no transition leaves it
    with pytest.raises(runs.TransitionRefused):
        await runs.transition(assets.runs, "s-finished", {RunState.finished}, RunState.running)
