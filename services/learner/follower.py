"""python -m services.learner.follower: rank r > 0 of a multi-device learner.

Started by the leader (rank 0) for one run. It trains on its share of every
fresh fragment's envs (`Prefetcher.my_columns`) on its own device, in step
with the leader through the gradient all-reduce. It publishes nothing: the
leader owns weights, metrics, heartbeat and checkpoints. It ends when the
run leaves `running` or the leader terminates it.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging

import torch

from services.learner import distributed
from services.learner.prefetch import Prefetcher, replay_fetcher
from services.learner.trainer import Trainer
from shared import bus, runs
from shared.config import RunState
from shared.envs import env_spec
from shared.service import Counters, base_parser, run_service

log = logging.getLogger("learner.follower")


async def follow(args, stop: asyncio.Event) -> None:
    counters = Counters()
    nc = await bus.connect(args.nats, f"learner-rank{args.rank}", counters)
    assets = await bus.ensure_assets(nc)
    rec, _ = await runs.read(assets.runs, args.run)
    cfg = rec.config
    torch.set_num_threads(cfg.learner_threads)
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="train")  # all torch work (see RunSession)
    trainer = pool.submit(Trainer, cfg, env_spec(cfg), torch.device(args.device)).result()
    loop = asyncio.get_running_loop()

    def join() -> None:
        distributed.init(args.rank, args.world, args.port, args.device)
        trainer.join_rank0()

    await loop.run_in_executor(pool, join)
    prefetch = Prefetcher(cfg, trainer.spec, args.run, trainer.device, lambda: trainer.acted_version, counters,
                          replay_fetcher(nc, args.run, counters) if cfg.replay_proportion > 0 else None,
                          columns=cfg.batch_columns // args.world, share=(args.rank, args.world))
    await prefetch.subscribe(nc)
    feeder = asyncio.create_task(prefetch.run())
    log.info("rank %d of run %s on %s", args.rank, args.run, args.device)
    ahead: asyncio.Future | None = None
    try:
        while not stop.is_set():
            got = await runs.read(assets.runs, args.run)
            if got is None or got[0].state != RunState.running:
                break
            try:
                batch = await asyncio.wait_for(prefetch.queue.get(), 1.0)
            except asyncio.TimeoutError:
                continue
            await loop.run_in_executor(pool, trainer.step, batch)
            prefetch.consumed()
            if cfg.train_ahead:  # as the leader does after every step: the all-reduces pair up
                ahead = loop.run_in_executor(pool, trainer.train_ahead)
    finally:
        if ahead is not None:
            await asyncio.gather(ahead, return_exceptions=True)
        feeder.cancel()
        distributed.shutdown()
        await nc.drain()


def main() -> None:
    p = base_parser("Follower rank of a multi-device learner (started by the leader).")
    p.add_argument("--run", required=True)
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--world", type=int, required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args()
    run_service(lambda stop: follow(a, stop), a.log_level)


if __name__ == "__main__":
    main()
