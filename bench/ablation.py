"""Ablation on Pong: each improvement of the paper switched on in turn.

Variants (each on the whole stack, same seed and budget), cumulative:
  impala        V-trace PG, Nature CNN, no replay, batches assembled in line (no prefetch)
  +appo         IMPACT loss with target network and the preset's K-fold batch reuse
  +latent_ae    latent auto-encoder encoder instead of the Nature CNN
  +prefetch     parallel data loading: batches assembled ahead on a side task, and
                the reused passes trained while the actors act (train_ahead);
                with the above, this is the Pong preset
  +replay       half of each batch from the replay shards: all on

Replay comes last because it is the one switch the preset leaves off (it
slowed Pong in the first ablation run, docs/benchmarks.md), so the row before
it is the preset itself.

Reports agent steps and seconds to each threshold (mean return of the last
100 episodes), a table in docs/ablation.md and a plot in docs/img/. A variant
stops when it reaches the highest threshold or its time is up.

    python bench/ablation.py --thresholds 0 --minutes-per-variant 11     # the short version, under an hour
    python bench/ablation.py --thresholds 0 18 --minutes-per-variant 60
"""
from __future__ import annotations

import argparse

from common import curve, first_reach, load_config, machine, run_on_stack, write_result

from services.launcher.stack import ROOT

BASE = {"algorithm": "impala", "reuse": 1, "replay_proportion": 0.0, "latent_ae": False, "prefetch": False,
        "train_ahead": False}
STEPS = [
    ("impala", {}),
    ("+appo", {"algorithm": "appo", "reuse": None}),  # None: the preset's reuse
    ("+latent_ae", {"latent_ae": True}),
    ("+prefetch", {"prefetch": True, "train_ahead": True}),
    ("+replay", {"replay_proportion": 0.5}),
]


def variants(preset: dict) -> list[tuple[str, dict]]:
    """Cumulative: each variant adds one switch to the one before."""
    out, cur = [], dict(BASE)
    for name, change in STEPS:
        cur = cur | {k: preset.get(k, 2) if v is None else v for k, v in change.items()}
        out.append((name, dict(cur)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.0])
    p.add_argument("--minutes-per-variant", type=float, default=10)
    p.add_argument("--only", nargs="*", default=None, help="run only these variant names")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--name", default="ablation", help="results file and docs page name")
    a = p.parse_args()
    base = load_config(ROOT / "configs" / "pong.json", a.set)
    rows = []
    for name, switches in variants(base):
        if a.only and name not in a.only:
            continue
        cfg = base | switches | {"max_seconds": a.minutes_per_variant * 60,
                                 "target_return": max(a.thresholds)}
        final, points = run_on_stack(cfg, a.minutes_per_variant * 60 + 300)
        rows.append({"variant": name, "switches": switches, "state": final["state"], "reason": final["reason"],
                     "reached": {str(t): first_reach(points, t) for t in a.thresholds},
                     "agent_steps": final["agent_steps"], "elapsed": final["elapsed"],
                     "dropped": final["dropped"], "final_mean_return": final["mean_return"],
                     "curve": curve(points)})
        print(name, rows[-1]["reached"], flush=True)
        # Written after every variant: an ablation takes hours, and one stopped
        # part-way still leaves every finished variant on disk.
        write_result(a.name, {"base": base, "thresholds": a.thresholds,
                              "minutes_per_variant": a.minutes_per_variant, "variants": rows})
        write_docs(rows, a.thresholds, a.name, a.minutes_per_variant)


def write_docs(rows: list[dict], thresholds: list[float], name: str, minutes: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    docs = ROOT / "docs"
    (docs / "img").mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, col, label in ((axes[0], 0, "agent steps"), (axes[1], 1, "seconds")):
        for r in rows:
            ax.plot([c[col] for c in r["curve"]], [c[2] for c in r["curve"]], label=r["variant"])
        ax.set_xlabel(label)
        ax.set_ylabel("mean return (last 100 episodes)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(docs / "img" / f"{name}.png", dpi=100)
    head = ("| variant | " + " | ".join(f"steps to {t:g} | seconds to {t:g}" for t in thresholds)
            + " | agent steps/s | agent steps run | final return | best return |")
    lines = [head, "|" + " --- |" * (1 + 2 * len(thresholds) + 4)]
    for r in rows:
        cells = []
        for t in thresholds:
            got = r["reached"][str(t)]
            cells += [f"{got['agent_steps']:,}", f"{got['seconds']:.0f}"] if got else ["not reached", "-"]
        fr = r["final_mean_return"]
        best = max((c[2] for c in r["curve"]), default=None)
        cells += [f"{r['agent_steps'] / max(r['elapsed'], 1e-9):,.0f}", f"{r['agent_steps']:,}",
                  "-" if fr is None else f"{fr:.1f}", "-" if best is None else f"{best:.1f}"]
        lines.append(f"| {r['variant']} | " + " | ".join(cells) + " |")
    m = machine()
    where = (f"`python bench/ablation.py --thresholds {' '.join(f'{t:g}' for t in thresholds)} "
             f"--minutes-per-variant {minutes:g}` on {m['cpus']} cores ({m['cpu_model']}), "
             f"GPUs: {', '.join(m['gpus']) or 'none'}. Cumulative variants, as listed; each stops at the "
             f"highest threshold or after {minutes:g} minutes.")
    (docs / f"{name}.md").write_text(
        "# Ablation (generated by bench/ablation.py)\n\n" + where + "\n\n" + "\n".join(lines) +
        f"\n\n![ablation](img/{name}.png)\n\nRaw figures: `bench/results/{name}.json`.\n")


if __name__ == "__main__":
    main()
