"""Actor scaling: 1, 2 and 4 actor processes, sampled agent steps/s for each, the
bytes each actor puts on the wire, and nats-server's CPU share per 10k agent
steps/s. Actors run on their own network-namespace "hosts" (veth links to the
server namespace) where namespaces can be made, else on loopback.

    python bench/scaling.py [--actors 1 2 4] [--window 30] [--env CartPole-v1]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time

from common import write_result  # noqa: F401  (sets sys.path)
from hosted import hosted_stack
from procstat import cpu_seconds

from services.launcher.stack import ROOT, Stack
from shared import bus, wiring
from shared.client import GatewayClient


async def measure(stack: Stack, config: dict, warmup: float, window: float) -> dict:
    nats_pid = stack.procs["nats"].pid
    async with GatewayClient(stack.gateway_url, stack.api_token, timeout=60) as gw:
        await gw.wait_ready(120)
        run = await gw.start_run(config)
        rid = run["id"]
        deadline = time.time() + 180
        while (await gw.run(rid))["agent_steps"] == 0 and time.time() < deadline:
            await asyncio.sleep(1)
        await asyncio.sleep(warmup)
        v0, c0, t0 = await gw.run(rid), cpu_seconds(nats_pid), time.time()
        await asyncio.sleep(window)
        v1, c1, t1 = await gw.run(rid), cpu_seconds(nats_pid), time.time()
        wire_bytes = await traj_bytes_per_s(stack, rid, 10.0)
        await gw.stop(rid)
        await gw.wait_final(rid, 120)
    sps = (v1["agent_steps"] - v0["agent_steps"]) / (t1 - t0)
    nats_share = (c1 - c0) / (t1 - t0)  # CPU seconds per second: 1.0 = one core
    return {"agent_steps_per_s": round(sps, 1), "trained_steps_per_s": round(
                (v1["trained_steps"] - v0["trained_steps"]) / (t1 - t0), 1),
            "nats_cpu_share": round(nats_share, 4),
            "nats_cpu_share_per_10k_steps_per_s": round(nats_share / (sps / 10_000), 4) if sps else None,
            "traj_bytes_per_s": round(wire_bytes, 1), "bytes_per_agent_step": round(wire_bytes / sps, 1) if sps else None,
            "dropped": v1["dropped"], "window_s": round(t1 - t0, 1)}


async def traj_bytes_per_s(stack: Stack, rid: str, seconds: float) -> float:
    """Bytes/s of trajectory messages, seen by one extra subscriber (after the CPU window)."""
    nc = await bus.connect(stack.nats_url, "scaling-probe")
    total = [0]

    async def on_msg(msg) -> None:
        total[0] += len(msg.data)

    sub = await nc.subscribe(wiring.traj(rid), cb=on_msg)
    await asyncio.sleep(seconds)
    await sub.unsubscribe()
    await nc.close()
    return total[0] / seconds


def one(n: int, config: dict, warmup: float, window: float) -> tuple[dict, str]:
    with hosted_stack(n) as hs:
        for i in range(n):
            hs.start_actor(i)
        r = asyncio.run(measure(hs.stack, dict(config, num_actors=n), warmup, window))
        where = hs.where
    r["actors"] = n
    r["steps_per_s_per_actor"] = round(r["agent_steps_per_s"] / n, 1)
    r["traj_bytes_per_s_per_actor"] = round(r["traj_bytes_per_s"] / n, 1)
    print(json.dumps(r), flush=True)
    return r, where


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--window", type=float, default=30)
    p.add_argument("--warmup", type=float, default=10)
    p.add_argument("--env", default="CartPole-v1")
    a = p.parse_args()
    config = json.loads((ROOT / "configs" / "cartpole.json").read_text())
    config.update(env_id=a.env, num_envs=32, unroll_length=32, batch_size=1024, actor_wait=0.0,
                  target_return=None, max_seconds=3600, publish_interval=1.0)
    measured = [one(n, config, a.warmup, a.window) for n in a.actors]
    write_result("scaling", {"config": config, "actor_hosts": measured[0][1], "rows": [r for r, _ in measured]})


if __name__ == "__main__":
    main()
