"""Flow control with actor_lead 1 is synchronous: each fragment is acted with
the weights trained on the one before (policy lag 0), because the learner
publishes as soon as it has nothing fresh left to train on, whatever its
publish_interval. Before, the interval held those weights back, the actor
timed out (actor_wait) and acted on weights one batch old."""
import asyncio
import os
import signal

import pytest

from shared.client import GatewayClient

from helpers import poll, started_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def one_actor_stack(tmp_path_factory):
    with started_stack(tmp_path_factory, "flow", actors=1) as stack:
        yield stack


async def run_to_end(stack, **config) -> tuple[dict, list[dict]]:
    """One CartPole run of the one actor, 8 envs x 16 steps per fragment, actor_lead 1,
    and weights held back for 60 s by the interval: (final view, metrics series)."""
    config = {"env_id": "CartPole-v1", "num_actors": 1, "num_envs": 8, "unroll_length": 16, "reuse": 1,
              "publish_interval": 60.0, **config}
    async with GatewayClient(stack.gateway_url, stack.api_token) as gw:
        await gw.wait_ready()
        run = await gw.start_run(config)
        final = await gw.wait_final(run["id"], timeout=120)
        points = await gw.metrics(run["id"])
    assert final["state"] == "finished" and final["agent_steps"] >= config["max_agent_steps"], final
    return final, points


async def test_actor_lead_1_runs_at_policy_lag_0(one_actor_stack):
    # One fragment is one batch; the interval would hold every publication back for
    # 60 s, and an actor that timed out would wait 30 s each time: 12 fragments take
    # seconds, timing out on each would take 360 s.
    final, points = await run_to_end(one_actor_stack, batch_size=128, round_deadline_s=30.0, max_agent_steps=128 * 12)
    trained = [p for p in points if p.get("updates", 0) > 0 and p.get("policy_lag") is not None]
    assert trained, points
    assert max(p["policy_lag"] for p in trained) == 0, [p["policy_lag"] for p in trained]
    counters = final["counters"]
    assert counters["fresh_batches"] >= 12 and counters.get("lagged_batches", 0) == 0, counters
    assert counters["actor_wait_timeouts"] == 0, counters


async def test_a_batch_of_two_fragments_from_one_actor_needs_no_timeout(one_actor_stack):
    # After its first fragment of a batch the actor waits for weights that cannot come
    # before its second: the learner says it holds that fragment and is short of data,
    # so the actor acts the second at once. Waiting out actor_wait (30 s) on each of
    # the 4 batches instead would take longer than the run is given.
    final, points = await run_to_end(one_actor_stack, batch_size=256, round_deadline_s=30.0, max_agent_steps=128 * 8)
    counters = final["counters"]
    assert counters["fresh_batches"] >= 4 and counters["actor_wait_timeouts"] == 0, counters
    assert counters.get("lagged_batches", 0) == 0, counters


async def test_waits_that_run_out_are_counted(one_actor_stack):
    # A 1 ms bound runs out before any learner step can publish, so most fragments
    # are acted ahead; each such wait is counted, so a run off lag 0 says why.
    final, _ = await run_to_end(one_actor_stack, batch_size=128, round_deadline_s=0.001, max_agent_steps=128 * 8)
    counters = final["counters"]
    assert counters["fresh_batches"] >= 1 and counters["actor_wait_timeouts"] >= 1, counters


async def test_a_fragment_over_the_brokers_max_payload_arrives_in_parts(one_actor_stack):
    # 128 CartPole envs x 512 steps encode to well over nats-server's 1 MiB
    # max_payload, and the server refuses such a message: before, the actor's
    # publication failed and the learner never got a batch (a Pong run of 64 envs
    # sampled 200k steps and trained none). Now the actor sends each fragment as
    # parts of fewer envs, which the learner assembles into its batch.
    final, _ = await run_to_end(one_actor_stack, num_envs=128, unroll_length=512, batch_size=65536,
                                round_deadline_s=30.0, max_agent_steps=65536 * 2)
    counters = final["counters"]
    assert counters.get("fresh_batches", 0) >= 2, counters
    assert counters["fresh_fragments"] >= 2 * counters["fresh_batches"], counters  # parts, not whole fragments
    assert counters.get("lost_in_transit", 0) == 0 and counters.get("rejected", 0) == 0, counters
    assert counters["actor_publish_failed"] == 0, counters


@pytest.fixture(scope="module")
def two_actor_stack(tmp_path_factory):
    with started_stack(tmp_path_factory, "flow2", actors=2) as stack:
        yield stack


async def test_two_actors_sharing_each_batch_wait_for_each_other_at_policy_lag_0(two_actor_stack):
    # Each of two actors makes half of every batch (4 + 4 env columns), and one of them
    # stalls for a second now and then (a busy VM, a pause). Before, the learner told
    # the other one that the batch was short as soon as its fragment was in; it filled
    # the batch with its own next fragment, and the stalled one's trained a batch late
    # (once per stall here; on Pong 22 of 87 batches in 3 minutes). Now the batch waits
    # for every actor of the round, and each actor waits only for its own fragments.
    config = {"env_id": "CartPole-v1", "num_envs": 4, "unroll_length": 16, "batch_size": 128, "reuse": 1,
              "round_deadline_s": 30.0, "publish_interval": 60.0, "max_seconds": 15.0}
    slow = two_actor_stack.procs["actor-1"].pid
    async with GatewayClient(two_actor_stack.gateway_url, two_actor_stack.api_token) as gw:
        await gw.wait_ready()
        run = await gw.start_run(config)
        await poll(lambda: gw.run(run["id"]), lambda r: r.get("counters", {}).get("fresh_batches", 0) >= 5,
                   60, "first batches")
        for _ in range(3):
            os.kill(slow, signal.SIGSTOP)
            try:
                await asyncio.sleep(1.0)
            finally:
                os.kill(slow, signal.SIGCONT)
            await asyncio.sleep(1.0)
        final = await gw.wait_final(run["id"], timeout=120)
        points = await gw.metrics(run["id"])
    counters = final["counters"]
    assert final["state"] == "finished" and counters["fresh_batches"] >= 20, final
    assert counters["actor_wait_timeouts"] == 0, counters
    assert max(p.get("actors", 0) for p in points) == 2, points[-1]
    # The start may lag a batch: one actor can join after the other has filled one alone.
    assert counters.get("lagged_batches", 0) <= 2, counters
