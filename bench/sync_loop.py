"""Synchronous actor + learner in one process (no NATS, no services): the
fastest way to judge a hyperparameter change on one core, since nothing waits
on transport and every batch is on-policy. One Rollout (the real actor code)
fills a batch, the real Trainer takes its update(s), repeat. Prints a line
every 25k agent steps (mean return of the last 100 episodes, entropy, critic
explained variance, ...) and writes the curve to bench/results/<name>.json.
Stops at `--steps`, `--minutes` or, at a printed line, the config's target_return;
Ctrl-C or a kill (SIGTERM) stops it early and still writes the curve so far.

    python bench/sync_loop.py --name sync-pong --steps 500000 --set normalize_advantages=true
"""
from __future__ import annotations

import argparse
import collections
import signal
import time

import torch
from common import load_config, write_result

from services.actor.actor import Rollout
from services.launcher.stack import ROOT
from services.learner.trainer import Trainer
from shared.bus import NATS_MAX_PAYLOAD
from shared.config import RunConfig
from shared.fragment import collate, decode_fragment
from shared.models import load_numpy_state, state_to_numpy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default=str(ROOT / "configs" / "pong.json"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=500_000)
    p.add_argument("--minutes", type=float, default=60)
    p.add_argument("--name", default="sync-loop")
    a = p.parse_args()
    torch.set_num_threads(1)
    # One actor acts for the whole batch (num_envs = the batch's columns), as the stack's
    # actors do together: sized for 2 actors, this loop's one actor would fill a batch
    # from 4 envs in two fragments each, half the episodes a stack batch holds.
    cfg = RunConfig(**load_config(a.config, ["num_actors=1", *a.set]))
    actor = Rollout(cfg, "sync", "a0", cfg.seed, 1)
    torch.manual_seed(cfg.seed)
    trainer = Trainer(cfg, actor.spec)
    returns: collections.deque = collections.deque(maxlen=100)
    steps, next_print, t0, rows = 0, 0, time.time(), []
    # A run stopped by hand (Ctrl-C or kill) still writes the curve it has: a study is
    # often cut short once its comparison is clear, and printed lines are not a result.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    stopped = False
    try:
        while steps < a.steps and time.time() - t0 < a.minutes * 60:
            weights = state_to_numpy(trainer.model)
            frags = []
            while sum(f.actions.shape[1] for f in frags) < cfg.batch_columns:
                load_numpy_state(actor.model, weights)
                actor.version = trainer.updates
                payloads, n = actor(NATS_MAX_PAYLOAD)
                steps += n
                frags += [decode_fragment(data, "sync", actor.spec, cfg.unroll_length) for data in payloads]
                returns.extend(r for r, _ in actor.finished)
                actor.finished = []
            batch = {k: torch.from_numpy(v) for k, v in collate(frags).items()}
            batch["fresh_steps"] = torch.tensor(batch["actions"].numel())
            st = trainer.step(batch)  # as the learner: the lr and entropy schedules run on fresh steps
            if steps >= next_print:
                mean = sum(returns) / len(returns) if returns else None
                row = {"agent_steps": steps, "seconds": round(time.time() - t0, 1), "mean_return": mean,
                       "episodes": len(returns), "updates": trainer.updates,
                       **{k: round(st[k], 4) for k in ("entropy", "value_loss", "explained_variance", "grad_norm", "clip_frac", "kl", "learning_rate")
                          if k in st}}
                rows.append(row)
                print(row, flush=True)
                next_print += 25_000
                if cfg.target_return is not None and mean is not None and mean >= cfg.target_return:
                    break  # as the stack does: the run ends at the config's target return
    except KeyboardInterrupt:
        stopped = True
    write_result(a.name, {"config": cfg.model_dump(), "agent_steps": steps, "seconds": round(time.time() - t0, 1),
                          "stopped_by_hand": stopped, "curve": rows})


if __name__ == "__main__":
    main()
