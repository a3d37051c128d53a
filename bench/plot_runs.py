"""Learning curves of several result files in one figure (mean return of the
last 100 episodes against agent steps and against seconds), for docs/.
Reads bench/pong.py results (curve rows [steps, seconds, return]) and
bench/sync_loop.py results (curve dicts).

    python bench/plot_runs.py --out docs/img/pong-runs.png pong.json pong-lr8e-4.json sync-pong-F3-lr5e-4.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import RESULTS


def rows_of(result: dict) -> list[tuple[float, float, float]]:
    out = []
    for r in result.get("curve", []):
        if isinstance(r, dict):
            if r.get("mean_return") is not None:
                out.append((r["agent_steps"], r["seconds"], r["mean_return"]))
        else:
            out.append((r[0], r[1], r[2]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("files", nargs="+", help="result files (names in bench/results/ or paths)")
    p.add_argument("--out", required=True)
    p.add_argument("--title", default="ALE/Pong-v5, 2-core VM, no GPU")
    p.add_argument("--paired", action="store_true",
                   help="the files are two halves in the same order (say new runs, then the same seeds' old "
                        "runs): the second half dashed in the first half's colours")
    a = p.parse_args()
    half = len(a.files) // 2
    if a.paired and len(a.files) != 2 * half:
        p.error("--paired needs an even number of files")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, f in enumerate(a.files):
        path = Path(f) if Path(f).exists() else RESULTS / f
        rows = rows_of(json.loads(path.read_text()))
        if a.paired:
            style = {"color": f"C{i % half % 10}", "linestyle": "-" if i < half else "--"}
        else:  # ten colours, then the same colours dashed: no two curves look alike
            style = {"color": f"C{i % 10}", "linestyle": "-" if i < 10 else "--"}
        for ax, col in ((axes[0], 0), (axes[1], 1)):
            ax.plot([r[col] for r in rows], [r[2] for r in rows], label=path.stem, **style)
    for ax, label in ((axes[0], "agent steps"), (axes[1], "seconds")):
        ax.axhline(18, color="gray", linestyle="--", linewidth=0.8)
        ax.set_xlabel(label)
        ax.set_ylabel("mean return (last 100 episodes)")
        ax.grid(alpha=0.3)
    if len(a.files) > 8:  # many runs: the legend beside the plots, not over the curves
        fig.legend(*axes[0].get_legend_handles_labels(), fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    else:
        axes[0].legend(fontsize=8)
    fig.suptitle(a.title)
    fig.tight_layout()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=100, bbox_inches="tight")
    print(a.out)


if __name__ == "__main__":
    main()
