"""Does a seed's run repeat? The same config, seed and agent steps on the whole stack,
run `--runs` times; each run's final weights are hashed (its last checkpoint, read with
weights_only=True). Equal hashes: the run repeats bit for bit on this machine.

Why it matters: a paired comparison (one switch changed, the same seed) reads every
difference as the switch's only if the run without the switch repeats; and a user who
reruns a seed expects the same run. Before the learner ordered each batch's fresh columns
by env seed, three 2-actor runs of the Pong preset ended with three different weights.

    python bench/repeatable.py [--runs 2] [--steps 40960] [--config configs/pong.json] [--set key=value ...]

Not a test: at policy lag 0 a run repeats only while no actor misses a round's deadline
(round_deadline_s), which a busy machine can make happen; and the float sums repeat only on
the same CPU kind with the same thread counts.
"""
from __future__ import annotations

import argparse
import hashlib
import tempfile
from pathlib import Path

import torch
from common import interrupted, load_config, run_on_stack, write_result

from services.launcher.stack import ROOT


def weights_digest(checkpoint: Path) -> tuple[int, str]:
    """(updates, SHA-256 prefix of the model's tensors in name order) of a checkpoint."""
    state = torch.load(checkpoint, weights_only=True)
    h = hashlib.sha256()
    for name, tensor in sorted(state["model"].items()):
        h.update(name.encode())
        h.update(tensor.cpu().contiguous().numpy().tobytes())
    return int(state["updates"]), h.hexdigest()[:16]


def one_run(config: dict) -> dict:
    with tempfile.TemporaryDirectory() as d:
        final, _ = run_on_stack(config, 900, workdir=d)
        checkpoints = sorted(Path(d).rglob("ckpt_*.pt"))
        if not checkpoints:
            raise SystemExit(f"run {final.get('id')} left no checkpoint ({final.get('state')}: {final.get('reason')})")
        updates, digest = weights_digest(checkpoints[-1])
    return {"state": final.get("state"), "agent_steps": final.get("agent_steps"), "updates": updates,
            "weights_sha256": digest, "policy_lag_max": final.get("policy_lag_max")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "pong.json"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--steps", type=int, default=40960, help="agent steps per run (max_agent_steps)")
    p.add_argument("--name", default="repeatable")
    a = p.parse_args()
    cfg = load_config(a.config, a.set) | {"max_agent_steps": a.steps}
    runs = []
    for _ in range(a.runs):
        runs.append(one_run(cfg))
        if interrupted():
            raise SystemExit("interrupted: runs stopped part-way are not compared")
    same = len({r["weights_sha256"] for r in runs}) == 1
    print(f"{a.runs} runs of seed {cfg.get('seed', 0)}, {a.steps} agent steps, {cfg['num_actors']} actors x "
          f"{cfg['num_envs']} envs: weights {'equal' if same else 'differ'}")
    write_result(a.name, {"config": cfg, "runs": runs, "weights_equal": same})


if __name__ == "__main__":
    main()
