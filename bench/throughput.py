"""Sampling and training throughput on Atari, against ceilings measured in the same run.

  (1) bare AtariVectorEnv, random actions, in `num_actors` processes that share all
      the machine's cores (the stack's actors leave one to the learner: the ceilings
      are the machine's, not the actors' share of it)
  (2) the actor's own Rollout (env + CPU policy inference + fragment encoding), same processes
  (3) the whole stack (nats-server, gateway, learner, replay, actors): sampled agent steps/s,
      trained steps/s, fresh steps trained/s, wire bytes per agent step, data-wait fraction,
      and the cores in use (the machine's, and each process's) over the same window

    python bench/throughput.py [--seconds 60] [--config configs/pong.json] [--set key=value ...]
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import tempfile
import time

from common import load_config, write_result
from procstat import CLK_TCK, cpu_seconds

from services.launcher.stack import ROOT, Stack, env_threads
from shared.bus import NATS_MAX_PAYLOAD
from shared.client import GatewayClient
from shared.config import RunConfig, actor_cores


def ceiling_threads(actors: int) -> int:
    """Emulator and inference threads per process for the ceilings: all cores shared
    among the actors, as if no learner needed one."""
    return env_threads(actors, cores=os.cpu_count() or 1)


def bare_env(cfg: dict, seconds: float, index: int, out) -> None:
    import numpy as np

    from shared.envs import VectorEnv

    env = VectorEnv(cfg["env_id"], cfg["num_envs"], seed=index, num_threads=ceiling_threads(cfg["num_actors"]))
    env.reset()
    rng = np.random.default_rng(index)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        env.step(rng.integers(0, env.spec.num_actions, cfg["num_envs"]))
        n += cfg["num_envs"]
    out.put(n / (time.perf_counter() - t0))


def rollout(cfg: dict, seconds: float, index: int, out) -> None:
    from services.actor.actor import Rollout
    from shared.config import RunConfig

    r = Rollout(RunConfig(**cfg), "bench", f"a{index}", seed=index, env_threads=ceiling_threads(cfg["num_actors"]))
    n, nbytes, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        payloads, steps = r(NATS_MAX_PAYLOAD)
        n += steps
        nbytes += sum(map(len, payloads))
    out.put((n / (time.perf_counter() - t0), nbytes / n))


def in_processes(fn, cfg: dict, seconds: float) -> list:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=fn, args=(cfg, seconds, i, q)) for i in range(cfg["num_actors"])]
    for p in procs:
        p.start()
    results = [q.get() for _ in procs]
    for p in procs:
        p.join()
    return results


def cpu_now(pids: dict[str, int]) -> tuple[float, dict[str, float | None]]:
    """(seconds the machine's CPUs were busy, summed over CPUs; CPU seconds per process) so far."""
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    busy = (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK  # all but idle and iowait
    return busy, {name: cpu_seconds(pid) for name, pid in pids.items()}


async def whole_stack(cfg: dict, seconds: float, warmup: float) -> dict:
    with tempfile.TemporaryDirectory() as d, Stack(d) as stack:
        stack.start_all(actors=cfg["num_actors"], cores=actor_cores(RunConfig(**cfg)))
        pids = {name: p.pid for name, p in stack.procs.items()}
        async with GatewayClient(stack.gateway_url, stack.api_token) as gw:
            await gw.wait_ready()
            run = await gw.start_run(dict(cfg, max_seconds=warmup + seconds, target_return=None))
            await asyncio.sleep(warmup)
            (busy0, proc0), t0 = cpu_now(pids), time.perf_counter()
            await asyncio.sleep(seconds - 2)  # inside the run's steady window
            (busy1, proc1), dt = cpu_now(pids), time.perf_counter() - t0
            final = await gw.wait_final(run["id"], timeout=warmup + seconds + 300)
            points = await gw.metrics(run["id"])
    steady = [p for p in points if p["elapsed"] >= warmup and not p.get("final")]
    a, b = steady[0], steady[-1]
    dt = b["time"] - a["time"]
    c = b["counters"]
    return {
        "sampled_per_s": (b["agent_steps"] - a["agent_steps"]) / dt,
        "trained_per_s": (b["trained_steps"] - a["trained_steps"]) / dt,
        "fresh_trained_per_s": (b["fresh_trained_steps"] - a["fresh_trained_steps"]) / dt,
        "window_s": dt, "updates": final["updates"], "agent_steps": final["agent_steps"],
        "data_wait_frac": b["data_wait_frac"], "policy_lag": b["policy_lag"],
        "wire_bytes_per_agent_step": c.get("fresh_bytes", 0) / max(b["agent_steps"], 1),
        "dropped_fresh": c.get("dropped_fresh", 0), "stale_dropped": c.get("stale_dropped", 0),
        "rejected": c.get("rejected", 0), "final_state": final["state"],
        # cores in use over the window: the machine's, and each service process's own
        "cpus_busy": (busy1 - busy0) / dt,
        "process_cores": {n: round((proc1[n] - proc0[n]) / dt, 3) for n in pids
                          if proc0[n] is not None and proc1[n] is not None},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default=str(ROOT / "configs" / "pong.json"))
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--warmup", type=float, default=20)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--name", default="throughput")
    a = p.parse_args()
    cfg = load_config(a.config, a.set)
    bare = sum(in_processes(bare_env, cfg, a.seconds / 2))
    rollouts = in_processes(rollout, cfg, a.seconds / 2)
    infer = sum(r[0] for r in rollouts)
    bytes_per_step = sum(r[1] for r in rollouts) / len(rollouts)
    stack = asyncio.run(whole_stack(cfg, a.seconds, a.warmup))
    trained_each = min(stack["sampled_per_s"], stack["fresh_trained_per_s"])
    write_result(a.name, {
        "config": cfg,
        "ceiling_bare_env_steps_per_s": bare,
        "ceiling_env_plus_inference_steps_per_s": infer,
        "actor_bytes_per_agent_step": bytes_per_step,
        "threads": {"ceiling_per_process": ceiling_threads(cfg["num_actors"]),
                    "stack_actor_env_threads": env_threads(cfg["num_actors"], actor_cores(RunConfig(**cfg)))},
        "stack": stack,
        "ratios": {"stack_sampled_over_inference_ceiling": stack["sampled_per_s"] / infer,
                   "inference_ceiling_over_bare": infer / bare,
                   "fresh_trained_over_sampled": stack["fresh_trained_per_s"] / max(stack["sampled_per_s"], 1e-9)},
        "targets": {"stack_sampled_over_inference_ceiling": 0.8, "sampled_and_trained_per_s": 1600},
        "met": {"sampled_at_80pct_of_ceiling": stack["sampled_per_s"] >= 0.8 * infer,
                "sampled_and_trained_1600": trained_each >= 1600},
    })


if __name__ == "__main__":
    main()
