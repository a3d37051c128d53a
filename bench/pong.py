"""A full Pong run to a mean return of 18 (last 100 episodes) on the whole stack:
agent steps and wall seconds to 18, a learning-curve PNG (return against agent
steps and against seconds) and JSON in bench/results/.

    python bench/pong.py [--max-minutes 45] [--set key=value ...]
"""
from __future__ import annotations

import argparse

from common import RESULTS, curve, first_reach, load_config, plot_curve, run_on_stack, write_result

from services.launcher.stack import ROOT


def loss_series(points: list[dict], key: str) -> list[list[float]]:
    """[agent_steps, value] of one learner statistic, every 10th metrics point."""
    return [[p["agent_steps"], round(p["losses"][key], 6)] for p in points if key in p.get("losses", {})][::10]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default=str(ROOT / "configs" / "pong.json"))
    p.add_argument("--max-minutes", type=float, default=45)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--name", default="pong")
    a = p.parse_args()
    cfg = load_config(a.config, a.set)
    cfg["max_seconds"] = a.max_minutes * 60
    final, points = run_on_stack(cfg, a.max_minutes * 60 + 300)
    rows = curve(points)
    lags = [p["policy_lag"] for p in points if p.get("policy_lag") is not None]
    png = RESULTS / f"{a.name}.png"
    if rows:
        plot_curve(rows, png, f"{cfg['env_id']} {cfg['algorithm']} ({final['state']})", {"target": 18})
    write_result(a.name, {
        "config": cfg, "state": final["state"], "reason": final["reason"],
        "to_18": first_reach(points, 18), "to_0": first_reach(points, 0),
        "final_mean_return": final["mean_return"], "agent_steps": final["agent_steps"],
        "elapsed": final["elapsed"], "updates": final["updates"], "dropped": final["dropped"],
        # optimiser steps between a batch's behaviour weights and its training; 0 when synchronous
        "policy_lag_max": max(lags, default=None),
        "policy_lag_share": sum(lag > 0 for lag in lags) / len(lags) if lags else None,  # of metrics points
        # every fresh batch, the ones trained at a lag above 0, and the actors left out of a sync
        # round for missing its deadline: what breaks lag 0
        "batches": {k: final["counters"].get(k, 0) for k in ("fresh_batches", "lagged_batches",
                                                             "round_deadline_missed")},
        "best_mean_return": max((r[2] for r in rows), default=None),
        "curve": rows, "plot": png.name if rows else None,
        # a policy that is not learning stays near log(actions); a collapsing one falls fast
        "entropy": loss_series(points, "entropy"),
        "learning_rate": loss_series(points, "learning_rate"),
        "entropy_coef": loss_series(points, "entropy_coef"),
        "targets": {"agent_steps": 1_000_000, "seconds_cpu_2_cores": 45 * 60, "seconds_gpu_16_cores": 120},
    })


if __name__ == "__main__":
    main()
