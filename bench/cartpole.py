"""Agent steps and wall seconds to a CartPole-v1 mean return of 475 (last 100
episodes), median over seeds, on the whole stack of separate processes.

    python bench/cartpole.py [--seeds 3] [--algorithm appo] [--set key=value ...]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile

from common import write_result  # sets sys.path too

from services.launcher.stack import ROOT, Stack
from shared.client import GatewayClient


async def one_run(stack: Stack, config: dict, timeout: float) -> dict:
    async with GatewayClient(stack.gateway_url, stack.api_token) as gw:
        await gw.wait_ready()
        run = await gw.start_run(config)
        final = await gw.wait_final(run["id"], timeout)
        return {"seed": config["seed"], "state": final["state"], "reason": final["reason"],
                "solved": final["solved"], "agent_steps": final["agent_steps"], "updates": final["updates"],
                "elapsed": final["elapsed"], "dropped": final["dropped"], "rejected": final["rejected"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--algorithm", default=None, choices=["impala", "appo"])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--name", default=None, help="results file name (default cartpole-<algorithm>)")
    a = p.parse_args()
    config = json.loads((ROOT / "configs" / "cartpole.json").read_text())
    config["max_seconds"] = a.timeout
    if a.algorithm:
        config["algorithm"] = a.algorithm
    for kv in a.set:
        k, _, v = kv.partition("=")
        config[k] = json.loads(v)
    runs = []
    for seed in range(a.seeds):
        with tempfile.TemporaryDirectory() as d, Stack(d) as stack:
            stack.start_all(actors=config["num_actors"])
            r = asyncio.run(one_run(stack, dict(config, seed=seed), a.timeout + 60))
            print(json.dumps(r), flush=True)
            runs.append(r)
    solved = [r["solved"] for r in runs if r["solved"]]
    result = {
        "config": config, "runs": runs, "solved_runs": len(solved),
        "median_agent_steps_to_475": statistics.median(s["agent_steps"] for s in solved) if solved else None,
        "median_seconds_to_475": statistics.median(s["seconds"] for s in solved) if solved else None,
        "targets": {"agent_steps": 150_000, "seconds": 60},
    }
    write_result(a.name or f"cartpole-{config['algorithm']}", result)


if __name__ == "__main__":
    main()
