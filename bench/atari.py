"""One Atari game on the whole stack for a fixed budget of agent steps, with the
shared Atari preset: the learning curve (PNG), the mean raw return of the last
100 episodes at the end, its human-normalized score and the ALE options, as
JSON in bench/results/.

    python bench/atari.py --game Breakout [--steps 2000000] [--seed 0] [--set key=value ...]
    python bench/atari.py --table atari-breakout-s0.json atari-pong-s0.json ...   # a markdown table of results
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from atari_scores import RANDOM_HUMAN, human_normalized
from common import RESULTS, curve, first_reach, plot_curve, run_on_stack, whole_config, write_result

from shared.config import RunConfig, apply_overrides
from shared.envs import ale_options


def run(a: argparse.Namespace) -> None:
    env_id = a.game if a.game.startswith("ALE/") else f"ALE/{a.game}-v5"
    fields = {"env_id": env_id, "seed": a.seed, "max_agent_steps": a.steps,
              "max_seconds": a.max_minutes * 60 if a.max_minutes else None}
    cfg = whole_config(apply_overrides(fields, a.set))
    ale = ale_options(RunConfig(**cfg))
    name = a.name or f"atari-{ale['game']}-s{a.seed}"
    final, points = run_on_stack(cfg, (a.max_minutes or 24 * 60) * 60 + 600)
    rows = curve(points)
    png = RESULTS / f"{name}.png"
    if rows:
        scores = RANDOM_HUMAN.get(ale["game"])
        plot_curve(rows, png, f"{env_id}, {a.steps:,} agent steps, sticky {ale['sticky_actions']} ({final['state']})",
                   dict(zip(("random", "human"), scores)) if scores else {})
    score = final["mean_return"]
    write_result(name, {
        "env_id": env_id, "game": ale["game"], "ale": ale, "seed": a.seed, "budget_agent_steps": a.steps,
        "state": final["state"], "reason": final["reason"],
        "agent_steps": final["agent_steps"], "elapsed": final["elapsed"],
        "agent_steps_per_s": final["agent_steps"] / final["elapsed"] if final.get("elapsed") else None,
        "final_mean_return": score, "episodes": final["episodes"],
        "human_normalized": None if score is None else human_normalized(ale["game"], score),
        "random_human": RANDOM_HUMAN.get(ale["game"]),
        "best_mean_return": max((r[2] for r in rows), default=None),
        "to_random_plus_half_human": first_reach(points, sum(RANDOM_HUMAN[ale["game"]]) / 2)
        if ale["game"] in RANDOM_HUMAN else None,
        "batches": {k: final["counters"].get(k, 0) for k in ("fresh_batches", "lagged_batches")},
        "config": cfg, "curve": rows, "plot": png.name if rows else None,
    })


def table(files: list[str]) -> None:
    """A markdown table of atari.py results (files in bench/results/ or paths)."""
    print("| game | agent steps | mean return, last 100 episodes | human-normalized | sticky actions | "
          "agent steps/s | minutes | seed | file |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for f in files:
        path = Path(f) if Path(f).exists() else RESULTS / f
        r = json.loads(path.read_text())
        hns = "-" if r["human_normalized"] is None else f"{r['human_normalized']:.2f}"
        print(f"| {r['env_id']} | {r['agent_steps']:,} | {r['final_mean_return']:.1f} | {hns} | "
              f"{r['ale']['sticky_actions']} | {r['agent_steps_per_s']:.0f} | {r['elapsed'] / 60:.0f} | "
              f"{r['seed']} | [{path.name}](../bench/results/{path.name}) |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--game", help="Breakout, SpaceInvaders, ... or a full ALE/ id")
    p.add_argument("--steps", type=int, default=2_000_000, help="agent steps to train (4 frames each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-minutes", type=float, default=None, help="also stop after this many minutes")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one config field")
    p.add_argument("--name", default=None, help="result file name (default atari-<game>-s<seed>)")
    p.add_argument("--table", nargs="+", metavar="RESULT", help="print a markdown table of these results instead")
    a = p.parse_args()
    if a.table:
        table(a.table)
    elif a.game:
        run(a)
    else:
        p.error("--game or --table")


if __name__ == "__main__":
    main()
