"""Two gloo processes, each on half of a global batch, end with the same weights
as one process trained on the whole batch (to float tolerance); APPO also with
minibatches, V-trace lambda and the KL-adaptive learning rate, whose statistics
must agree across ranks; IMPALA with the lr schedule, whose clock (fresh steps)
is summed over ranks. Both ranks must end with the same weights."""
import os

import pytest
import torch
import torch.multiprocessing as mp

from services.learner import distributed
from services.learner.trainer import Trainer
from shared.config import RunConfig
from shared.envs import EnvSpec
from helpers import random_batch
from shared.service import free_port

SPEC = EnvSpec((4,), "float32", 2)
T, B = 8, 16


def make_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    return random_batch(T, B, seed)


def config(algorithm: str) -> RunConfig:
    appo = algorithm == "appo"
    return RunConfig(algorithm=algorithm, reuse=2, target_update_interval=2, unroll_length=T, batch_size=T * B,
                     max_grad_norm=0.5, entropy_coef=0.01, normalize_advantages=appo,
                     minibatches=2, vtrace_lambda=0.9 if appo else 1.0,
                     lr_kl_target=1e-8 if appo else 0.0, learning_rate=1e-3,
                     lr_schedule=[] if appo else [[T * B, 1e-3], [2 * T * B, 1e-4]])


def half(batch: dict, rank: int) -> dict:
    cols = slice(rank * B // 2, (rank + 1) * B // 2)
    return {k: v[:, cols] for k, v in batch.items()}


def worker(rank: int, port: int, algorithm: str, out_path: str) -> None:
    torch.set_num_threads(1)
    distributed.init(rank, 2, port, "cpu")
    torch.manual_seed(rank + 100)  # different init per rank: the broadcast must fix it
    trainer = Trainer(config(algorithm), SPEC)
    trainer.join_rank0()
    for step in range(3):  # each rank trains half the fresh steps: the lr falls 1e-3, 1e-3, 1e-4 only if summed
        trainer.step(half(make_batch(step), rank) | {"fresh_steps": torch.tensor(T * B // 2)})
    torch.save(trainer.model.state_dict(), f"{out_path}.{rank}")
    distributed.shutdown()
    # Skip interpreter teardown: a gloo worker thread may still be releasing a
    # finished all-reduce's tensors, which needs the GIL, and a thread that asks
    # for the GIL during finalization aborts the process (SIGABRT, seen in CI).
    os._exit(0)


def train_alone(trainer: Trainer) -> None:
    """Two steps on whole batches, then forget the reuse buffer, as a trainer restored
    from a checkpoint has none."""
    for step in range(2):
        trainer.step(make_batch(step) | {"fresh_steps": torch.tensor(T * B)})
    trainer.reuse_buffer.clear()


def worker_resumed(rank: int, port: int, algorithm: str, out_path: str) -> None:
    """Rank 0 has trained alone (as a learner resumed from a checkpoint has), rank 1 is
    fresh, with other weights and the other precision: joining must give rank 1 all of
    rank 0's state, or the two drift apart though they average the same gradients."""
    torch.set_num_threads(1)
    torch.manual_seed(rank + 100)
    trainer = Trainer(config(algorithm), SPEC)
    if rank == 0:
        train_alone(trainer)
    else:
        trainer.autocast = True
    distributed.init(rank, 2, port, "cpu")
    trainer.join_rank0()
    assert (trainer.updates, trainer.fresh_steps, trainer.autocast) == (2 + 4, 2 * T * B, False)  # 2 minibatches, reuse 2
    for step in range(2, 4):
        trainer.step(half(make_batch(step), rank) | {"fresh_steps": torch.tensor(T * B // 2)})
    torch.save(trainer.model.state_dict(), f"{out_path}.{rank}")
    distributed.shutdown()
    os._exit(0)  # as in `worker`


def single(algorithm: str, init_state: dict) -> dict:
    trainer = Trainer(config(algorithm), SPEC)
    trainer.model.load_state_dict(init_state)
    if trainer.target is not None:
        trainer.target.load_state_dict(init_state)
    for step in range(3):
        trainer.step(make_batch(step) | {"fresh_steps": torch.tensor(T * B)})
    if trainer.cfg.lr_kl_target > 0 or trainer.cfg.lr_schedule:
        assert trainer.opt.param_groups[0]["lr"] != trainer.cfg.learning_rate, "the learning rate never moved (KL-adaptive or scheduled)"
    return trainer.model.state_dict()


def test_two_gloo_ranks_equal_one_process(tmp_path):
    for algorithm in ("appo", "impala"):
        out = str(tmp_path / f"{algorithm}.pt")
        mp.start_processes(worker, args=(free_port(), algorithm, out), nprocs=2, join=True, start_method="spawn")
        torch.manual_seed(100)  # rank 0's init, which the broadcast gave every rank
        init = Trainer(config(algorithm), SPEC).model.state_dict()
        ref = single(algorithm, init)
        for rank in (0, 1):
            ddp = torch.load(f"{out}.{rank}", weights_only=True)
            for k in ref:
                assert torch.allclose(ddp[k], ref[k], atol=1e-5, rtol=1e-4), (algorithm, rank, k)
        assert any(not torch.equal(ref[k], init[k]) for k in ref), "training changed nothing"


def test_a_fresh_rank_joins_a_resumed_rank0_in_step(tmp_path):
    for algorithm in ("appo", "impala"):
        out = str(tmp_path / f"{algorithm}.pt")
        mp.start_processes(worker_resumed, args=(free_port(), algorithm, out), nprocs=2, join=True,
                           start_method="spawn")
        torch.manual_seed(100)
        alone = Trainer(config(algorithm), SPEC)
        train_alone(alone)
        for step in range(2, 4):
            alone.step(make_batch(step) | {"fresh_steps": torch.tensor(T * B)})
        ref = alone.model.state_dict()
        for rank in (0, 1):
            ddp = torch.load(f"{out}.{rank}", weights_only=True)
            for k in ref:
                assert torch.allclose(ddp[k], ref[k], atol=1e-5, rtol=1e-4), (algorithm, rank, k)


def test_ranks_need_envs_and_batch_columns_that_split_evenly():
    """Each rank takes an equal slice of every fragment's envs, so a learner on two
    devices refuses 7 envs, or a batch of 3 columns, with a reason naming both."""
    distributed.check_shares(RunConfig(num_envs=8, unroll_length=16, batch_size=64), 2)
    distributed.check_shares(RunConfig(num_envs=7, unroll_length=16, batch_size=48), 1)  # one device: anything
    for bad in (RunConfig(num_envs=7, unroll_length=16, batch_size=64),
                RunConfig(num_envs=8, unroll_length=16, batch_size=48)):
        with pytest.raises(ValueError, match=r"num_envs \(\d\) and batch_size / unroll_length \(\d\) .* 2 devices"):
            distributed.check_shares(bad, 2)
