"""Actors on many machines, with real processes: what an actor host sends cannot move a
run's counters or end it (the learner counts steps and returns from the fragments it
validated), idle actors spread over the running runs, and a run with no actors says so."""
import asyncio
import json

import nats
import pytest

from services.launcher.stack import ROOT
from shared import wiring
from shared.client import GatewayClient

from helpers import poll, started_stack

pytestmark = pytest.mark.e2e
PRESET = json.loads((ROOT / "configs" / "cartpole.json").read_text())


@pytest.fixture(scope="module")
def two_learner_stack(tmp_path_factory):
    with started_stack(tmp_path_factory, "trust", actors=2) as stack:
        stack.start("learner", "--checkpoint-dir", str(stack.run_dir / "checkpoints"), name="learner-2")
        yield stack


async def test_forged_stats_and_actor_ids_change_nothing_and_the_run_reaches_its_real_target(two_learner_stack):
    stack = two_learner_stack
    errors: list[str] = []

    async def on_error(e: Exception) -> None:
        errors.append(str(e).lower())

    forger = await nats.connect(stack.url_for("actor"), error_cb=on_error, inbox_prefix=wiring.ACTOR_INBOX_PREFIX)
    try:
        async with GatewayClient(stack.gateway_url, stack.api_token) as gw:
            await gw.wait_ready()
            run = await gw.start_run(dict(PRESET, num_actors=2, max_seconds=600))
            rid = run["id"]
            await poll(lambda: gw.run(rid), lambda v: v["updates"] > 0, 120, "training")
            # The message that once ended a live run with 1e15 agent steps, on its old subject
            # (an actor may not publish there now) and as a heartbeat (with and without a slot),
            # then a thousand forged actor ids, and a forged weights notice.
            forged = {"actor": "x", "steps": 10**15, "episodes": [[1e9, 1]] * 100}
            await forger.publish(f"stats.{rid}", json.dumps(forged).encode())
            await forger.publish(wiring.actor_heartbeat(rid), json.dumps(forged).encode())
            await forger.publish(wiring.actor_heartbeat(rid), json.dumps(forged | {"slot": 0}).encode())
            for i in range(1000):
                hb = {"actor": f"forged-{i}", "slot": i, "steps": 10**15, "fragments": 10**9}
                await forger.publish(wiring.actor_heartbeat(rid), json.dumps(hb).encode())
            await forger.publish(wiring.weights(rid), json.dumps({"version": 0, "ended": True}).encode())
            await forger.flush()
            view = await poll(lambda: gw.run(rid), lambda v: v["counters"].get("rejected_heartbeats", 0) >= 1, 60,
                              "the heartbeat without a slot rejected")
            assert view["agent_steps"] < 10**7 and (view["mean_return"] or 0) <= 500, view
            final = await gw.wait_final(rid, timeout=600)
            points = await gw.metrics(rid)
    finally:
        await forger.close()
    assert any("permissions violation" in e and f"stats.{rid}" in e for e in errors), errors
    assert any("permissions violation" in e and f"weights.{rid}" in e for e in errors), errors
    assert final["state"] == "finished" and "mean return" in final["reason"], final
    assert final["solved"]["mean_return"] >= 475 and final["mean_return"] <= 500, final
    assert final["agent_steps"] < 10**7, final
    steps = [p["agent_steps"] for p in points]
    assert steps == sorted(steps) and max(steps) < 10**7
    # the forged ids were members for a moment (heartbeats are advisory), then expired
    peak = max(range(len(points)), key=lambda i: points[i]["actors"])
    assert points[peak]["actors"] >= 1000 and min(p["actors"] for p in points[peak:]) <= 2


async def test_idle_actors_spread_over_the_running_runs_and_a_run_without_actors_says_so(two_learner_stack):
    stack = two_learner_stack
    config = dict(PRESET, num_actors=1, target_return=None, max_seconds=600, max_agent_steps=30_000)
    async with GatewayClient(stack.gateway_url, stack.api_token) as gw:
        await gw.wait_ready()
        first = await gw.start_run(config)
        second = await gw.start_run(config)
        finals = await asyncio.gather(gw.wait_final(first["id"], 600), gw.wait_final(second["id"], 600))
        for final in finals:
            assert final["state"] == "finished" and final["agent_steps"] >= 30_000, final
        # A sync run that takes both actors, then another: the second has none, and says so,
        # until the first ends and its actors come over.
        busy = await gw.start_run(dict(config, num_actors=2, max_agent_steps=None))
        await poll(lambda: gw.run(busy["id"]), lambda v: v["actors"] == 2 and v["agent_steps"] > 0, 120,
                   "both actors on the first run")
        waiting = await gw.start_run(config)
        view = await poll(lambda: gw.run(waiting["id"]), lambda v: v["state"] == "running", 120, "the run claimed")
        await asyncio.sleep(3)
        view = await gw.run(waiting["id"])
        assert view["state"] == "running" and view["actors"] == 0 and view["agent_steps"] == 0, view
        await gw.stop(busy["id"])
        final = await gw.wait_final(waiting["id"], 600)
        assert final["state"] == "finished" and final["agent_steps"] >= 30_000, final
