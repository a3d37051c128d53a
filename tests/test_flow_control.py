"""Flow control with real processes. Sync flow: each fragment is acted with the weights
trained on the one before (policy lag 0), because the learner publishes as soon as an
actor waits, whatever its publish_interval; a round waits for its actors, but at most
round_deadline_s for one that stalls. Async flow: actors never wait, and the staleness
bound drops what is too old."""
import asyncio
import json
import os
import signal
import time

import pytest

from services.actor.actor import Actor
from shared import bus, wiring
from shared.client import GatewayClient

from helpers import poll, started_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def one_actor_stack(tmp_path_factory):
    with started_stack(tmp_path_factory, "flow", actors=1) as stack:
        yield stack


async def run_to_end(stack, **config) -> tuple[dict, list[dict]]:
    """One CartPole run of the one actor, 8 envs x 16 steps per fragment, weights held
    back for 60 s by the interval: (final view, metrics series)."""
    config = {"env_id": "CartPole-v1", "num_actors": 1, "num_envs": 8, "unroll_length": 16, "reuse": 1,
              "publish_interval": 60.0, **config}
    async with GatewayClient(stack.gateway_url, stack.api_token) as gw:
        await gw.wait_ready()
        run = await gw.start_run(config)
        final = await gw.wait_final(run["id"], timeout=180)
        points = await gw.metrics(run["id"])
    assert final["state"] == "finished" and final["agent_steps"] >= config["max_agent_steps"], final
    return final, points


async def test_sync_flow_runs_at_policy_lag_0(one_actor_stack):
    # One fragment is one batch; the interval would hold every publication back for 60 s:
    # 12 fragments take seconds only if each is acted on the weights trained on the last.
    final, points = await run_to_end(one_actor_stack, batch_size=128, max_agent_steps=128 * 12)
    trained = [p for p in points if p.get("updates", 0) > 0 and p.get("policy_lag") is not None]
    assert trained, points
    assert max(p["policy_lag"] for p in trained) == 0, [p["policy_lag"] for p in trained]
    counters = final["counters"]
    assert counters["fresh_batches"] >= 12 and counters.get("lagged_batches", 0) == 0, counters


async def test_a_batch_of_two_fragments_from_one_actor_needs_no_deadline(one_actor_stack):
    # After its first fragment of a batch the actor waits for weights that cannot come
    # before its second: the learner says it holds that fragment and is short of data,
    # so the actor acts the second at once. Waiting out the deadline (60 s) on each of
    # the 4 batches instead would take longer than the run is given.
    final, _ = await run_to_end(one_actor_stack, batch_size=256, round_deadline_s=60.0, max_agent_steps=128 * 8)
    counters = final["counters"]
    assert counters["fresh_batches"] >= 4 and counters.get("round_deadline_missed", 0) == 0, counters
    assert counters.get("lagged_batches", 0) == 0, counters


async def test_async_actors_never_wait_and_stale_fragments_are_dropped(one_actor_stack):
    # No new weights for 60 s after the first batch: an actor in sync flow would wait for
    # them; in async flow it acts on, on the weights it has, and with max_policy_lag 0
    # every fragment acted on them after the learner's first step is dropped as stale.
    final, _ = await run_to_end(one_actor_stack, flow="async", batch_size=128, max_policy_lag=0,
                                max_agent_steps=128 * 16)
    counters = final["counters"]
    assert counters["fresh_batches"] >= 1 and counters["stale_dropped"] >= 8, counters
    assert final["agent_steps"] >= 128 * 16 and final["trained_steps"] < final["agent_steps"]


async def test_a_fragment_over_the_brokers_max_payload_arrives_in_parts(one_actor_stack):
    # 128 CartPole envs x 512 steps encode to well over nats-server's 1 MiB max_payload,
    # and the server refuses such a message: the actor sends each fragment as parts of
    # fewer envs, which the learner assembles into its batch.
    final, _ = await run_to_end(one_actor_stack, num_envs=128, unroll_length=512, batch_size=65536,
                                max_agent_steps=65536 * 2)
    counters = final["counters"]
    assert counters.get("fresh_batches", 0) >= 2, counters
    assert counters["fresh_fragments"] >= 2 * counters["fresh_batches"], counters  # parts, not whole fragments
    assert counters.get("lost_in_transit", 0) == 0 and counters.get("rejected", 0) == 0, counters
    assert counters["actor_publish_failed"] == 0, counters


@pytest.fixture(scope="module")
def actorless_stack(tmp_path_factory):
    with started_stack(tmp_path_factory, "lossy", actors=0) as stack:
        yield stack


@pytest.mark.parametrize("lost", [4, 5])
async def test_a_sync_run_goes_on_after_its_only_actors_fragment_is_lost(actorless_stack, monkeypatch, lost):
    """One actor in sync flow, two fragments a batch, and its `lost`th fragment never
    reaches the broker (as when nats-server restarts under it). The 4th: the batch holds
    the 3rd and waits for it; the 5th: the batch holds nothing. Either way the learner
    waits for that fragment and the actor for weights that need it; the learner's
    short-of-data notice, round_deadline_s after it went out, lets the actor act again.
    The actor runs in this process (the real Actor, over the real broker) so that
    exactly one message can be lost."""
    connect, traj_sent = bus.connect, [0]

    async def lossy_connect(*args, **kw):
        nc = await connect(*args, **kw)
        publish = nc.publish

        async def lossy_publish(subject: str, payload: bytes = b"", **more) -> None:
            if subject.startswith("traj."):
                traj_sent[0] += 1
                if traj_sent[0] == lost:
                    return
            await publish(subject, payload, **more)

        nc.publish = lossy_publish
        return nc

    monkeypatch.setattr(bus, "connect", lossy_connect)
    actor, stop = Actor(actorless_stack.url_for("actor")), asyncio.Event()
    serving = asyncio.create_task(actor.main(stop))
    try:
        async with GatewayClient(actorless_stack.gateway_url, actorless_stack.api_token) as gw:
            await gw.wait_ready()
            run = await gw.start_run({"env_id": "CartPole-v1", "num_actors": 1, "num_envs": 8, "unroll_length": 16,
                                      "batch_size": 256, "reuse": 1, "round_deadline_s": 2.0,
                                      "max_agent_steps": 128 * 10})
            final = await gw.wait_final(run["id"], timeout=90)
    finally:
        stop.set()
        await asyncio.wait_for(serving, 60)
    assert final["state"] == "finished" and final["agent_steps"] >= 128 * 10, final
    assert final["counters"].get("lost_in_transit") == 1, final["counters"]
    assert actor.counters["lost_fragments"] == 1 and traj_sent[0] > lost, (actor.counters, traj_sent)


@pytest.fixture(scope="module")
def three_actor_stack(tmp_path_factory):
    with started_stack(tmp_path_factory, "flow3", actors=3) as stack:
        yield stack


async def actor_ids(stack, run_id: str) -> dict[str, int]:
    """Actor id -> process id of the actors serving a run, from their heartbeats."""
    found: dict[str, int] = {}
    nc = await bus.connect(stack.nats_url, "observer")

    async def on_hb(msg) -> None:
        hb = json.loads(msg.data)
        found[hb["actor"]] = int(hb["host"].rsplit("-", 1)[1])

    try:
        await nc.subscribe(wiring.actor_heartbeat(run_id), cb=on_hb)
        await poll(lambda: asyncio.sleep(0, len(found)), lambda n: n >= 3, 60, "heartbeats of three actors")
    finally:
        await nc.close()
    return found


async def test_sync_rounds_go_on_without_a_stopped_actor_and_take_it_back(three_actor_stack):
    # Each of three actors makes a third of every batch. One is SIGSTOPped for 30 s: no
    # round waits for it past round_deadline_s; the other two go on (they fill the
    # batches between them), and after SIGCONT it takes part again.
    stack, deadline = three_actor_stack, 4.0
    config = {"env_id": "CartPole-v1", "num_actors": 3, "num_envs": 4, "unroll_length": 16, "batch_size": 192,
              "reuse": 1, "round_deadline_s": deadline, "publish_interval": 60.0, "max_seconds": 600}
    async with GatewayClient(stack.gateway_url, stack.api_token) as gw:
        await gw.wait_ready()
        run = await gw.start_run(config)
        rid = run["id"]
        await poll(lambda: gw.run(rid), lambda r: r["counters"].get("fresh_batches", 0) >= 5, 120, "first batches")
        ids = await actor_ids(stack, rid)
        victim_id, victim = sorted(ids.items())[0]
        async def batches_per_s(seconds: float) -> float:
            b0 = (await gw.run(rid))["counters"]["fresh_batches"]
            await asyncio.sleep(seconds)
            return ((await gw.run(rid))["counters"]["fresh_batches"] - b0) / seconds

        rate_before = await batches_per_s(8.0)
        before = await gw.run(rid)
        os.kill(victim, signal.SIGSTOP)
        try:
            t_stop = time.time()
            stopped = await poll(lambda: gw.run(rid), lambda r: r["actors"] == 2 and r["counters"]["fresh_batches"]
                                 >= before["counters"]["fresh_batches"] + 10, 60, "training without the stopped actor")
            # the two that go on fill each batch between them (a round and a half), and each time
            # the batch waits for them they hear it at once: far more than a third of the rate
            rate_during = await batches_per_s(8.0)
            await asyncio.sleep(max(0.0, t_stop + 30 - time.time()))
            during = await gw.run(rid)
        finally:
            os.kill(victim, signal.SIGCONT)
        assert during["counters"]["fresh_batches"] > stopped["counters"]["fresh_batches"], during
        assert rate_during > rate_before / 3, (rate_before, rate_during)
        back = await poll(lambda: gw.run(rid), lambda r: r["actors"] == 3, 60, "the actor back")
        assert victim_id in await actor_ids(stack, rid)
        await poll(lambda: gw.run(rid), lambda r: r["counters"]["fresh_batches"] >= back["counters"]["fresh_batches"]
                   + 10, 60, "training with all three")
        await gw.stop(rid)
        final = await gw.wait_final(rid, timeout=120)
        points = await gw.metrics(rid)
    waits = [p["round_wait_max_s"] for p in points if p.get("round_wait_max_s") is not None]
    # a round waits for the stopped actor at most the deadline, plus one more fragment of the others
    assert waits and max(waits) <= deadline + 3.0, max(waits)
    assert final["counters"].get("round_deadline_missed", 0) >= 1, final["counters"]


async def test_async_flow_trains_cartpole_to_475_with_three_actors(three_actor_stack):
    stack = three_actor_stack
    config = {"env_id": "CartPole-v1", "flow": "async", "num_actors": 3, "num_envs": 8, "unroll_length": 16,
              "batch_size": 256, "max_policy_lag": 40, "target_return": 475, "max_seconds": 300}
    async with GatewayClient(stack.gateway_url, stack.api_token) as gw:
        await gw.wait_ready()
        run = await gw.start_run(config)
        final = await gw.wait_final(run["id"], timeout=400)
        points = await gw.metrics(run["id"])
    assert final["state"] == "finished" and final["solved"]["mean_return"] >= 475, final
    assert final["solved"] is not None and max(p["actors"] for p in points) == 3, final
