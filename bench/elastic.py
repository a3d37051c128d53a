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
import tempfile
import time

from common import write_result  # noqa: F401  (sets sys.path)

from services.launcher import netns
from services.launcher.stack import ROOT, Stack
from shared.client import GatewayClient


async def phase_rate(gw: GatewayClient, rid: str, seconds: float, settle: float = 8.0) -> float:
    """Agent steps/s over `seconds`, after `settle` seconds for joins/leaves to take effect."""
    await asyncio.sleep(settle)
    v0, t0 = await gw.run(rid), time.time()
    await asyncio.sleep(seconds)
    v1, t1 = await gw.run(rid), time.time()
    return (v1["agent_steps"] - v0["agent_steps"]) / (t1 - t0)


async def elastic(stack: Stack, hosts, config: dict, seconds: float) -> dict:
    def add(i: int) -> None:
        extra = ("--nats", stack.nats_url_at(hosts.server_addr_for(i + 1))) if hosts else ()
        stack.start("actor", "--index", str(i), *extra, name=f"actor-{i}", netns=hosts.hosts[i] if hosts else None)

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
    config.update(num_envs=32, unroll_length=32, batch_size=1024, actor_wait=0.0, target_return=None,
                  max_seconds=3600, publish_interval=1.0, num_actors=1)
    reason = netns.unavailable_reason()
    hosts = netns.Hosts(3) if reason is None else None
    try:
        with tempfile.TemporaryDirectory() as d:
            kw = dict(host=hosts.server_addr, nats_bind="0.0.0.0", netns=hosts.server) if hosts else {}
            with Stack(d, **kw) as stack:
                stack.start_nats()
                stack.start("gateway")
                stack.start("learner", "--checkpoint-dir", str(stack.run_dir / "ckpt"))
                result = asyncio.run(elastic(stack, hosts, config, a.phase))
    finally:
        if hosts:
            hosts.close()
    write_result("elastic", {"config": config, "actor_hosts": "network namespaces + veth" if hosts
                             else f"loopback ({reason})", **result})


if __name__ == "__main__":
    main()
