"""Elastic actors within one run: start with 1 actor, add 2 more, then SIGKILL 2.
Sampled agent steps/s per phase, and proof that nothing else happened (the
run keeps running on the same learner, no rejected messages, every other
process alive). Actors on network-namespace hosts where they can be made.

    python bench/elastic.py [--phase 25]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time

from common import write_result  # noqa: F401  (sets sys.path)
from hosted import HostedStack, hosted_stack

from services.launcher.stack import ROOT
from shared.client import GatewayClient


async def phase_rate(gw: GatewayClient, rid: str, seconds: float, settle: float = 8.0) -> float:
    """Agent steps/s over `seconds`, after `settle` seconds for joins/leaves to take effect."""
    await asyncio.sleep(settle)
    v0, t0 = await gw.run(rid), time.time()
    await asyncio.sleep(seconds)
    v1, t1 = await gw.run(rid), time.time()
    return (v1["agent_steps"] - v0["agent_steps"]) / (t1 - t0)


async def elastic(hs: HostedStack, config: dict, seconds: float) -> dict:
    stack, add = hs.stack, hs.start_actor
    add(0)
    async with GatewayClient(stack.gateway_url, stack.api_token, timeout=60) as gw:
        await gw.wait_ready(120)
        rid = (await gw.start_run(config))["id"]
        deadline = time.time() + 180
        while (await gw.run(rid))["agent_steps"] == 0 and time.time() < deadline:
            await asyncio.sleep(1)
        learner = (await gw.run(rid))["learner_id"]
        phases = [{"actors": 1, "agent_steps_per_s": round(await phase_rate(gw, rid, seconds), 1)}]
        add(1), add(2)
        phases.append({"actors": 3, "agent_steps_per_s": round(await phase_rate(gw, rid, seconds), 1)})
        stack.kill("actor-1"), stack.kill("actor-2")  # SIGKILL
        phases.append({"actors": 1, "after": "SIGKILL of 2", "agent_steps_per_s": round(
            await phase_rate(gw, rid, seconds), 1)})
        view = await gw.run(rid)
        await gw.stop(rid)
        final = await gw.wait_final(rid, 120)
    alive = {n: p.poll() is None for n, p in stack.procs.items()}
    return {"phases": phases, "same_learner": view["learner_id"] == learner, "state_during": view["state"],
            "final_state": final["state"], "rejected": view["rejected"], "processes_alive": alive}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--phase", type=float, default=25)
    a = p.parse_args()
    config = json.loads((ROOT / "configs" / "cartpole.json").read_text())
    config.update(num_envs=32, unroll_length=32, batch_size=1024, flow="async", target_return=None,
                  max_seconds=3600, publish_interval=1.0, num_actors=1)
    with hosted_stack(3) as hs:
        result = asyncio.run(elastic(hs, config, a.phase))
        where = hs.where
    write_result("elastic", {"config": config, "actor_hosts": where, **result})


if __name__ == "__main__":
    main()
