"""Actor scaling, in async flow: 1, 2, 4 and 8 actor processes, each on its own
network-namespace "host" (a veth link to the server namespace, TLS, the actor
credential), against a real learner; CartPole-v1 and ALE/Pong-v5. For each: sampled
and trained agent steps/s, the share of fragments dropped (stale or queue
overflow), nats-server's CPU per 10k agent steps/s, bytes on the wire per agent
step. Then the straggler case in sync flow: 4 actors, one SIGSTOPped for 20 s.

    python bench/scaling.py [--actors 1 2 4 8] [--envs CartPole-v1 ALE/Pong-v5] [--window 30]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time

from common import whole_config, write_result
from hosted import hosted_stack
from procstat import cpu_seconds

from services.launcher.stack import Stack
from shared import bus, wiring
from shared.client import GatewayClient

CONFIGS = {  # async flow; every actor the same share of the machine (1 env thread)
    "CartPole-v1": {"num_envs": 32, "unroll_length": 32, "batch_size": 1024, "publish_interval": 1.0},
    "ALE/Pong-v5": {"num_envs": 8, "publish_interval": 1.0},
}


def counters(view: dict) -> dict:
    c = view["counters"]
    return {"sampled": view["agent_steps"], "trained": c.get("fresh_trained_steps", 0) or view["trained_steps"],
            "fragments": c.get("fresh_fragments", 0),
            "dropped": c.get("stale_dropped", 0) + c.get("dropped_fresh", 0)}


async def measure(stack: Stack, config: dict, warmup: float, window: float) -> dict:
    nats_pid = stack.procs["nats"].pid
    async with GatewayClient(stack.gateway_url, stack.api_token, timeout=60) as gw:
        await gw.wait_ready(120)
        run = await gw.start_run(config)
        rid = run["id"]
        deadline = time.time() + 300
        while (await gw.run(rid))["agent_steps"] == 0 and time.time() < deadline:
            await asyncio.sleep(1)
        await asyncio.sleep(warmup)
        v0, c0, t0 = await gw.run(rid), cpu_seconds(nats_pid), time.time()
        p0 = (await gw.metrics(rid))[-1]
        await asyncio.sleep(window)
        v1, c1, t1 = await gw.run(rid), cpu_seconds(nats_pid), time.time()
        p1 = (await gw.metrics(rid))[-1]
        wire_bytes = await traj_bytes_per_s(stack, rid, 10.0)
        await gw.stop(rid)
        await gw.wait_final(rid, 180)
    a, b = counters(v0), counters(v1)
    dt = t1 - t0
    sps = (b["sampled"] - a["sampled"]) / dt
    nats_share = (c1 - c0) / dt  # CPU seconds per second: 1.0 = one core
    fragments = b["fragments"] - a["fragments"]
    return {"sampled_per_s": round(sps, 1),
            "trained_fresh_per_s": round((p1["fresh_trained_steps"] - p0["fresh_trained_steps"]) / dt, 1),
            "dropped_share": round((b["dropped"] - a["dropped"]) / fragments, 3) if fragments else None,
            "policy_lag": v1["policy_lag"], "actors_serving": v1["actors"],
            "nats_cpu_share": round(nats_share, 4),
            "nats_cpu_per_10k_steps_per_s": round(nats_share / (sps / 10_000), 4) if sps else None,
            "traj_bytes_per_s": round(wire_bytes, 1),
            "bytes_per_agent_step": round(wire_bytes / sps, 1) if sps else None, "window_s": round(dt, 1)}


async def traj_bytes_per_s(stack: Stack, rid: str, seconds: float) -> float:
    """Bytes/s of trajectory messages, seen by one extra subscriber (after the CPU window)."""
    nc = await bus.connect(stack.nats_url, "scaling-probe", ca=str(stack.tls.ca) if stack.tls else None)
    total = [0]

    async def on_msg(msg) -> None:
        total[0] += len(msg.data)

    sub = await nc.subscribe(wiring.traj(rid), cb=on_msg)
    await asyncio.sleep(seconds)
    await sub.unsubscribe()
    await nc.close()
    return total[0] / seconds


async def straggler(stack: Stack, config: dict, pid: int, stopped: float) -> dict:
    """Sync flow: trained steps/s before, during and after one actor's SIGSTOP, and how long
    a round waited at most (round_deadline_s bounds it)."""
    async with GatewayClient(stack.gateway_url, stack.api_token, timeout=60) as gw:
        await gw.wait_ready(120)
        rid = (await gw.start_run(config))["id"]
        while (await gw.run(rid))["counters"].get("fresh_batches", 0) < 5:
            await asyncio.sleep(1)

        async def rate(seconds: float) -> float:
            v0 = await gw.run(rid)
            await asyncio.sleep(seconds)
            v1 = await gw.run(rid)
            return round((v1["trained_steps"] - v0["trained_steps"]) / seconds, 1)

        phases = {"before": await rate(stopped)}
        os.kill(pid, signal.SIGSTOP)
        try:
            phases["during"] = await rate(stopped)
        finally:
            os.kill(pid, signal.SIGCONT)
        await asyncio.sleep(5)
        phases["after"] = await rate(stopped)
        view = await gw.run(rid)
        points = await gw.metrics(rid)
        await gw.stop(rid)
        await gw.wait_final(rid, 180)
    waits = [p["round_wait_max_s"] for p in points if p.get("round_wait_max_s") is not None]
    return {"trained_steps_per_s": phases, "round_deadline_s": config["round_deadline_s"],
            "round_wait_max_s": max(waits, default=None),
            "round_deadline_missed": view["counters"].get("round_deadline_missed", 0),
            "lagged_batches": view["counters"].get("lagged_batches", 0),
            "fresh_batches": view["counters"].get("fresh_batches", 0)}


def one(env_id: str, n: int, warmup: float, window: float) -> tuple[dict, dict, str]:
    config = whole_config({"env_id": env_id, "flow": "async", "num_actors": n, "max_seconds": 3600,
                           "target_return": None, **CONFIGS[env_id]})
    with hosted_stack(n) as hs:
        for i in range(n):
            hs.start_actor(i, "--env-threads", "1")
        r = asyncio.run(measure(hs.stack, config, warmup, window))
        where = hs.where
    r = {"env_id": env_id, "actors": n, **r}
    print(json.dumps(r), flush=True)
    return r, config, where


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--envs", nargs="+", default=list(CONFIGS))
    p.add_argument("--window", type=float, default=30)
    p.add_argument("--warmup", type=float, default=15)
    p.add_argument("--stopped", type=float, default=20, help="seconds the straggler is stopped")
    a = p.parse_args()
    rows, configs, where = [], {}, ""
    for env_id in a.envs:
        for n in a.actors:
            r, configs[env_id], where = one(env_id, n, a.warmup, a.window)
            rows.append(r)
    sync = whole_config({"env_id": "CartPole-v1", "num_actors": 4, "num_envs": 4, "batch_size": 256,
                         "round_deadline_s": 2.0, "reuse": 1, "max_seconds": 3600, "target_return": None})
    with hosted_stack(4) as hs:
        procs = [hs.start_actor(i, "--env-threads", "1") for i in range(4)]
        strag = asyncio.run(straggler(hs.stack, sync, procs[0].pid, a.stopped))
    print(json.dumps(strag), flush=True)
    write_result("scaling", {"actor_hosts": where, "configs": configs, "rows": rows,
                             "straggler": {"config": sync, "stopped_s": a.stopped, **strag}})


if __name__ == "__main__":
    main()
