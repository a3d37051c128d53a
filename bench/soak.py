"""Soak: actors outrun a deliberately slowed learner for minutes; memory must stay flat.

The learner is slowed honestly, without test hooks: a wide MLP (hidden 1024),
big batches trained 4 times each, one torch thread, and `nice 19`, while the
actors run free (async flow) with many envs. Every bounded queue then
overflows all the time: fresh fragments drop oldest-first (dropped_fresh),
stale ones are dropped (stale_dropped), replay evicts. Peak RSS of every
process is sampled each second; the result says whether each stayed within
its stated bound and compares the first and last minute (flatness).

    python bench/soak.py [--seconds 240] [--actors 2]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time

from common import write_result  # noqa: F401  (sets sys.path)
from procstat import RssTracker

from services.launcher.stack import ROOT, Stack
from shared.client import GatewayClient

# Stated bounds (MiB of resident memory) the soak checks every process against.
BOUNDS_MB = {"nats": 256, "gateway": 300, "learner": 1500, "replay": 900, "actor": 600}


def bound_for(name: str) -> float:
    return BOUNDS_MB["actor" if name.startswith("actor") else name]


async def soak(stack: Stack, config: dict, seconds: float) -> dict:
    pids = {n: p.pid for n, p in stack.procs.items()}
    rss = RssTracker(pids)
    async with GatewayClient(stack.gateway_url, stack.api_token, timeout=60) as gw:
        await gw.wait_ready(120)
        run = await gw.start_run(config)
        rid = run["id"]
        t0 = time.time()
        views = []
        while time.time() - t0 < seconds:
            rss.sample(time.time() - t0)
            if int(time.time() - t0) % 10 == 0:
                v = await gw.run(rid)
                views.append({"t": round(time.time() - t0, 1), "agent_steps": v["agent_steps"],
                              "trained_steps": v["trained_steps"], "dropped": v["dropped"],
                              "counters": v["counters"], "replay_bytes": v["replay"].get("bytes", 0)})
                print(json.dumps(views[-1]), flush=True)
            await asyncio.sleep(1.0)
        last = await gw.run(rid)
        await gw.stop(rid)
        await gw.wait_final(rid, 120)
    elapsed = time.time() - t0
    per_process = {}
    for name in pids:
        first = rss.window_peak(name, 0, 60)
        final = rss.window_peak(name, elapsed - 60, elapsed + 1)
        per_process[name] = {"peak_mb": round(rss.peak.get(name, 0.0), 1), "bound_mb": bound_for(name),
                             "within_bound": rss.peak.get(name, 0.0) <= bound_for(name),
                             "peak_first_minute_mb": first, "peak_last_minute_mb": final}
    return {
        "seconds": round(elapsed, 1), "agent_steps": last["agent_steps"], "trained_steps": last["trained_steps"],
        "sampled_per_s": round(last["agent_steps"] / elapsed, 1),
        "trained_per_s": round(last["trained_steps"] / elapsed, 1),
        "dropped_fresh": last["counters"].get("dropped_fresh", 0),
        "stale_dropped": last["counters"].get("stale_dropped", 0),
        "replay": last["replay"], "per_process": per_process,
        "all_within_bounds": all(p["within_bound"] for p in per_process.values()),
        "progress": views,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=240)
    p.add_argument("--actors", type=int, default=2)
    a = p.parse_args()
    config = json.loads((ROOT / "configs" / "cartpole.json").read_text())
    config.update(num_envs=32, unroll_length=32, batch_size=4096, hidden_size=1024, reuse=4, flow="async",
                  learner_threads=1, target_return=None, max_seconds=a.seconds + 600, publish_interval=1.0,
                  replay_proportion=0.25, replay_capacity=400, replay_capacity_mb=64.0,
                  checkpoint_interval_s=30.0)
    with tempfile.TemporaryDirectory() as d, Stack(d) as stack:
        stack.start_nats()
        stack.start("gateway")
        stack._spawn("learner", ["nice", "-n", "19", *stack.service_cmd("learner", "--checkpoint-dir",
                                                                        str(stack.run_dir / "ckpt"))])
        stack.start("replay")
        for i in range(a.actors):
            stack.start("actor", "--index", str(i), name=f"actor-{i}")
        result = asyncio.run(soak(stack, config, a.seconds))
    write_result("soak", {"config": config, "actors": a.actors, "bounds_mb": BOUNDS_MB, **result})


if __name__ == "__main__":
    main()
