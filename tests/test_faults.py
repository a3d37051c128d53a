"""Fault tests with real processes (nats-server, gateway, learner, replay, actors):
SIGKILL the learner and restart it, a second learner on the same run, SIGKILL an
actor, restart nats-server, stop and resume. CartPole, so each run is short."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Awaitable, Callable

import pytest

from services.launcher.stack import ROOT, Stack
from services.learner import checkpoints
from shared.client import GatewayClient

from helpers import poll, started_stack

pytestmark = pytest.mark.e2e
PRESET = json.loads((ROOT / "configs" / "cartpole.json").read_text())
# A slower learning rate (about 400k agent steps to 475 instead of 125k) so that even on an
# idle machine the run is still going when the faults are injected (~20 s in), yet still
# reaches the target after them.
FAULT_CONFIG = dict(PRESET, num_actors=2, learning_rate=1e-4, checkpoint_interval_s=2.0, heartbeat_timeout_s=8.0,
                    max_seconds=600)


@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory):
    with started_stack(tmp_path_factory, "faults", actors=2) as stack:
        yield stack


def learner_args(stack: Stack, *extra: str) -> tuple[str, ...]:
    return ("--checkpoint-dir", str(stack.run_dir / "checkpoints"), *extra)


def assert_never_backwards(points: list[dict], keys=("agent_steps", "updates", "episodes")) -> None:
    points = sorted(points, key=lambda p: p["time"])
    for key in keys:
        series = [p[key] for p in points]
        assert series == sorted(series), f"{key} went backwards: {series}"


async def test_learner_sigkill_resumes_and_second_learner_does_not_claim(fault_stack):
    stack = fault_stack
    async with GatewayClient(stack.gateway_url, stack.api_token) as gw:
        await gw.wait_ready()
        run = await gw.start_run(FAULT_CONFIG)
        rid = run["id"]
        first = await poll(lambda: gw.run(rid), lambda v: v["state"] == "running" and v["updates"] > 0,
                               120, "run starts")
        owner = first["learner_id"]

        # A second learner pointed at the same run cannot claim it while the first heart-beats.
        stack.start("learner", *learner_args(stack, "--run", rid), name="learner-2")
        await asyncio.sleep(12)  # longer than heartbeat_timeout_s: the heartbeat keeps it owned
        view = await gw.run(rid)
        assert view["state"] == "running" and view["learner_id"] == owner
        stack.kill("learner-2")

        # Wait for a periodic checkpoint, then SIGKILL the learner mid-run.
        before = await poll(lambda: gw.run(rid), lambda v: v["checkpoint"] and (v["counters"].get(
            "checkpoints", 0) >= 1 and v["updates"] >= 20) or v["state"] != "running", 120, "first checkpoint")
        assert before["state"] == "running" and before["solved"] is None, "solved before the fault; make it harder"
        stack.kill("learner")
        ckpt = checkpoints.load(before["checkpoint"])  # weights_only=True
        assert ckpt["run_id"] == rid and ckpt["updates"] > 0 and "rng" in ckpt

        # The gateway notices the silent learner and requeues the run; a restarted learner resumes it.
        lost = await poll(lambda: gw.run(rid), lambda v: v["state"] != "running", 60, "lost learner noticed")
        assert lost["state"] == "pending" and lost["resume"] and "lost" in lost["reason"]
        stack.start("learner", *learner_args(stack))
        resumed = await poll(lambda: gw.run(rid), lambda v: v["state"] == "running" and v["learner_id"] != owner
                                 and v["counters"].get("resumed") == 1, 120, "resumed")
        assert resumed["updates"] >= before["updates"] and resumed["agent_steps"] >= before["agent_steps"]
        final = await gw.wait_final(rid, timeout=600)
        points = await gw.metrics(rid)
    assert final["state"] == "finished" and final["solved"] is not None, final
    assert final["solved"]["mean_return"] >= 475 and final["resumes"] == 1
    assert_never_backwards(points)
    newest = checkpoints.load(final["checkpoint"])
    assert newest["updates"] == final["updates"] and newest["agent_steps"] >= before["agent_steps"]
    kept = list(Path(final["checkpoint"]).parent.glob("ckpt_*.pt"))
    assert 1 <= len(kept) <= FAULT_CONFIG.get("checkpoint_keep", 3)


async def test_actor_kill_nats_restart_stop_and_resume(fault_stack):
    stack = fault_stack
    async with GatewayClient(stack.gateway_url, stack.api_token, timeout=60) as gw:
        await gw.wait_ready()
        run = await gw.start_run(dict(FAULT_CONFIG, target_return=None, max_agent_steps=10**9))
        rid = run["id"]
        await poll(lambda: gw.run(rid), lambda v: v["state"] == "running" and v["updates"] > 5, 120, "start")

        # SIGKILL one of two actors: the run goes on with the other.
        stack.kill("actor-1")
        after_kill = (await gw.run(rid))["updates"]
        await poll(lambda: gw.run(rid), lambda v: v["updates"] > after_kill + 20, 120, "training after kill")

        # Restart nats-server (same port, same JetStream store): every service reconnects and carries on.
        stack.kill("nats")
        await asyncio.sleep(2)
        stack.start_nats()
        await gw.wait_ready(timeout=120)
        mid = await poll(_tolerant(gw, rid), lambda v: v.get("state") == "running"
                             and v.get("counters", {}).get("reconnects", 0) >= 1, 120, "learner reconnected")
        await poll(_tolerant(gw, rid), lambda v: v.get("updates", 0) > mid["updates"] + 20, 120,
                       "training after nats restart")

        # An added actor joins (elastic); then stop the run and resume it from its checkpoint.
        stack.start("actor", "--index", "5", name="actor-5")
        stopped = await gw.stop(rid)
        assert stopped["state"] in ("stopping", "stopped")
        stopped = await gw.wait_final(rid, timeout=120)
        assert stopped["state"] == "stopped" and stopped["checkpoint"]
        resumed = await gw.resume(rid)
        assert resumed["state"] == "pending" and resumed["resume"]
        back = await poll(lambda: gw.run(rid), lambda v: v["state"] == "running"
                              and v["counters"].get("resumed") == 1, 120, "resumed after stop")
        assert back["updates"] > stopped["updates"] and back["agent_steps"] >= stopped["agent_steps"]
        await poll(lambda: _latest_point(gw, rid), lambda p: p.get("actors", 0) >= 2, 120, "both actors rejoin")
        await gw.stop(rid)
        final = await gw.wait_final(rid, timeout=120)
        points = await gw.metrics(rid)
        health = await gw._call("GET", "/healthz")
    assert final["state"] == "stopped" and final["updates"] > back["updates"]
    assert_never_backwards(points)
    assert health["ok"] and health["nats_counters"].get("reconnects", 0) >= 1
    for name in ("gateway", "learner", "replay", "actor-0", "actor-5"):
        assert stack.procs[name].poll() is None, f"{name} died"


async def _latest_point(gw: GatewayClient, rid: str) -> dict:
    points = await gw.metrics(rid)
    return points[-1] if points else {}


def _tolerant(gw: GatewayClient, rid: str) -> Callable[[], Awaitable[dict]]:
    """A probe that treats a gateway hiccup while NATS comes back as 'not yet'."""
    async def probe() -> dict:
        try:
            return await gw.run(rid)
        except Exception as e:  # noqa: BLE001 - any error here just means: ask again
            return {"error": str(e)}
    return probe
