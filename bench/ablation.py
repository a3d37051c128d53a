"""Ablation on Pong: each improvement of the paper switched on in turn.

Variants (each on the whole stack, same seed and budget), cumulative:
  impala        V-trace PG, Nature CNN, no replay, batches assembled in line (no prefetch)
  +appo         IMPACT loss with target network and the preset's passes per batch (epochs, reuse)
  +latent_ae    latent auto-encoder encoder instead of the Nature CNN
  +prefetch     parallel data loading: batches assembled ahead on a side task, and
                the reused passes trained while the actors act (train_ahead);
                with the above, this is the Pong preset
  +replay       half of each batch from the replay shards: all on

Replay comes last because it is the one switch the preset leaves off (it
slowed Pong in the first ablation run), so the row before it is the preset
itself.

Reports agent steps and seconds to each threshold (mean return of the last
100 episodes), a markdown table on stdout for docs/benchmarks.md and a plot
next to the JSON in bench/results/. A variant
stops when it reaches the highest threshold or its time is up.

    python bench/ablation.py --thresholds 0 --minutes-per-variant 11     # the short version, under an hour
    python bench/ablation.py --thresholds 0 18 --minutes-per-variant 60
    python bench/ablation.py --thresholds 0 --seeds 0 1 2               # each variant on three seeds

One seed per variant is the short version's weak point: a variant that takes
the same updates on another floating-point path (or the same path on a slower
day) moves by more than some switches do. With several seeds the table adds
each variant's median steps to each threshold.
"""
from __future__ import annotations

import argparse
import math
import statistics

from common import RESULTS, curve, first_reach, interrupted, load_config, machine, run_on_stack, write_result

from services.launcher.stack import ROOT
from shared.config import RunConfig

BASE = {"algorithm": "impala", "reuse": 1, "epochs": 1, "replay_proportion": 0.0, "latent_ae": False,
        "prefetch": False, "train_ahead": False}
STEPS = [
    ("impala", {}),
    ("+appo", {"algorithm": "appo", "reuse": None, "epochs": None}),  # None: the preset's passes
    ("+latent_ae", {"latent_ae": True}),
    ("+prefetch", {"prefetch": True, "train_ahead": True}),
    ("+replay", {"replay_proportion": 0.5}),
]


def variants(preset: dict) -> list[tuple[str, dict]]:
    """Cumulative: each variant adds one switch to the one before."""
    out, cur = [], dict(BASE)
    for name, change in STEPS:
        cur = cur | {k: preset.get(k, RunConfig.model_fields[k].default) if v is None else v
                     for k, v in change.items()}
        out.append((name, dict(cur)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.0])
    p.add_argument("--minutes-per-variant", type=float, default=10)
    p.add_argument("--only", nargs="*", default=None, help="run only these variant names")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="run every variant once per seed (default: the preset's seed only)")
    p.add_argument("--name", default="ablation", help="results file name")
    a = p.parse_args()
    base = load_config(ROOT / "configs" / "pong.json", a.set)
    seeds = a.seeds or [base.get("seed", 0)]
    rows = []
    for seed in seeds:  # seed-major: a run stopped part-way still holds every variant of the first seeds
        for name, switches in variants(base):
            if a.only and name not in a.only:
                continue
            cfg = base | switches | {"seed": seed, "max_seconds": a.minutes_per_variant * 60,
                                     "target_return": max(a.thresholds)}
            final, points = run_on_stack(cfg, a.minutes_per_variant * 60 + 300)
            rows.append({"variant": name, "seed": seed, "switches": switches, "state": final["state"],
                         "reason": final["reason"], "reached": {str(t): first_reach(points, t) for t in a.thresholds},
                         "agent_steps": final["agent_steps"], "elapsed": final["elapsed"],
                         "dropped": final["dropped"], "final_mean_return": final["mean_return"],
                         "curve": curve(points)})
            print(name, seed, rows[-1]["reached"], flush=True)
            # Written after every variant: an ablation takes hours, and one stopped
            # part-way still leaves every finished variant on disk.
            write_result(a.name, {"base": base, "thresholds": a.thresholds, "seeds": seeds,
                                  "minutes_per_variant": a.minutes_per_variant, "variants": rows})
            write_report(rows, a.thresholds, a.name, a.minutes_per_variant, seeds)
            if interrupted():
                return


def median_steps(rows: list[dict], threshold: float) -> str:
    """Median agent steps to the threshold over a variant's seeds, an unreached
    seed counting as more than any reached one (so the median can be 'not
    reached'), and how many seeds reached it."""
    steps = [r["reached"][str(threshold)]["agent_steps"] if r["reached"][str(threshold)] else math.inf
             for r in rows]
    mid, hit = statistics.median(steps), sum(s != math.inf for s in steps)
    return f"{'not reached' if mid == math.inf else f'{mid:,.0f}'} ({hit} of {len(steps)})"


def write_report(rows: list[dict], thresholds: list[float], name: str, minutes: float,
                 seeds: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["variant"] for r in rows))
    colours = {v: f"C{i}" for i, v in enumerate(names)}
    styles = {s: ("-", "--", ":", "-.")[i % 4] for i, s in enumerate(seeds)}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, col, label in ((axes[0], 0, "agent steps"), (axes[1], 1, "seconds")):
        for r in rows:
            ax.plot([c[col] for c in r["curve"]], [c[2] for c in r["curve"]], color=colours[r["variant"]],
                    linestyle=styles[r["seed"]],
                    label=r["variant"] + (f" seed {r['seed']}" if len(seeds) > 1 else ""))
        ax.set_xlabel(label)
        ax.set_ylabel("mean return (last 100 episodes)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=100)
    head = ("| variant | seed | " + " | ".join(f"steps to {t:g} | seconds to {t:g}" for t in thresholds)
            + " | agent steps/s | agent steps run | final return | best return |")
    lines = [head, "|" + " --- |" * (2 + 2 * len(thresholds) + 4)]
    for r in rows:
        cells = []
        for t in thresholds:
            got = r["reached"][str(t)]
            cells += [f"{got['agent_steps']:,}", f"{got['seconds']:.0f}"] if got else ["not reached", "-"]
        fr = r["final_mean_return"]
        best = max((c[2] for c in r["curve"]), default=None)
        cells += [f"{r['agent_steps'] / max(r['elapsed'], 1e-9):,.0f}", f"{r['agent_steps']:,}",
                  "-" if fr is None else f"{fr:.1f}", "-" if best is None else f"{best:.1f}"]
        lines.append(f"| {r['variant']} | {r['seed']} | " + " | ".join(cells) + " |")
    if len(seeds) > 1:
        lines += ["", "| variant | " + " | ".join(f"median steps to {t:g} (seeds reaching it)" for t in thresholds)
                  + " |", "|" + " --- |" * (1 + len(thresholds))]
        for v in names:
            mine = [r for r in rows if r["variant"] == v]
            lines.append(f"| {v} | " + " | ".join(median_steps(mine, t) for t in thresholds) + " |")
    m = machine()
    where = (f"`python bench/ablation.py --thresholds {' '.join(f'{t:g}' for t in thresholds)} "
             f"--minutes-per-variant {minutes:g}"
             f"{' --seeds ' + ' '.join(map(str, seeds)) if len(seeds) > 1 else ''}` on {m['cpus']} cores ({m['cpu_model']}), "
             f"GPUs: {', '.join(m['gpus']) or 'none'}. Cumulative variants, as listed; each stops at the "
             f"highest threshold or after {minutes:g} minutes.")
    print(where + "\n\n" + "\n".join(lines) + f"\n\nPlot and raw figures: `bench/results/{name}.png`, `{name}.json`.")


if __name__ == "__main__":
    main()
