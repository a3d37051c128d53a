"""Agent steps and wall seconds to a CartPole-v1 mean return of 475 (last 100
episodes), median over seeds, on the whole stack of separate processes.

    python bench/cartpole.py [--seeds 3] [--algorithm appo] [--set key=value ...]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics

from common import interrupted, load_config, run_on_stack, write_result

from services.launcher.stack import ROOT


def median_counting_failures(values: list[float], runs: int) -> float | None:
    """Median over all seeds, an unsolved seed counting as infinitely slow (None if that is the median)."""
    m = statistics.median(values + [math.inf] * (runs - len(values))) if runs else math.inf
    return None if math.isinf(m) else m


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--algorithm", default=None, choices=["impala", "appo"])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--name", default=None, help="results file name (default cartpole-<algorithm>)")
    a = p.parse_args()
    config = load_config(ROOT / "configs" / "cartpole.json", a.set)
    config["max_seconds"] = a.timeout
    if a.algorithm:
        config["algorithm"] = a.algorithm
    runs = []
    for seed in range(a.seeds):
        final, _ = run_on_stack(dict(config, seed=seed), a.timeout + 60)
        r = {k: final[k] for k in ("state", "reason", "solved", "agent_steps", "updates", "elapsed", "dropped",
                                   "rejected")} | {"seed": seed}
        print(json.dumps(r), flush=True)
        runs.append(r)
        if interrupted():  # Ctrl-C: the seeds run so far, the last one stopped
            break
    solved = [r["solved"] for r in runs if r["solved"]]
    write_result(a.name or f"cartpole-{config['algorithm']}", {
        "config": config, "runs": runs, "solved_runs": len(solved),
        "median_agent_steps_to_475": median_counting_failures([s["agent_steps"] for s in solved], len(runs)),
        "median_seconds_to_475": median_counting_failures([s["seconds"] for s in solved], len(runs)),
        "targets": {"agent_steps": 150_000, "seconds": 60},
    })


if __name__ == "__main__":
    main()
