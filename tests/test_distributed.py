"""Two gloo processes, each on half of a global batch, end with the same weights
as one process trained on the whole batch (to float tolerance)."""
import os

import torch
import torch.multiprocessing as mp

from services.learner import distributed
from services.learner.trainer import Trainer
from shared.config import RunConfig
from shared.envs import EnvSpec
from shared.service import free_port

SPEC = EnvSpec((4,), "float32", 2)
T, B = 8, 16


def make_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"obs": torch.randn(T + 1, B, 4, generator=g), "actions": torch.randint(0, 2, (T, B), generator=g).int(),
            "logits": torch.randn(T, B, 2, generator=g), "rewards": torch.randn(T, B, generator=g),
            "dones": (torch.rand(T, B, generator=g) < 0.1).to(torch.uint8)}


def config(algorithm: str) -> RunConfig:
    return RunConfig(algorithm=algorithm, reuse=2, target_update_interval=2, unroll_length=T, batch_size=T * B,
                     max_grad_norm=0.5, entropy_coef=0.01, normalize_advantages=(algorithm == "appo"))


def half(batch: dict, rank: int) -> dict:
    cols = slice(rank * B // 2, (rank + 1) * B // 2)
    return {k: v[:, cols] for k, v in batch.items()}


def worker(rank: int, port: int, algorithm: str, out_path: str) -> None:
    torch.set_num_threads(1)
    distributed.init(rank, 2, port, "cpu")
    torch.manual_seed(rank + 100)  # different init per rank: the broadcast must fix it
    trainer = Trainer(config(algorithm), SPEC)
    distributed.broadcast_model(trainer.model)
    if trainer.target is not None:
        trainer.target.load_state_dict(trainer.model.state_dict())
    for step in range(3):
        trainer.train_on(half(make_batch(step), rank))
    if rank == 0:
        torch.save(trainer.model.state_dict(), out_path)
    distributed.shutdown()
    # Skip interpreter teardown: a gloo worker thread may still be releasing a
    # finished all-reduce's tensors, which needs the GIL, and a thread that asks
    # for the GIL during finalization aborts the process (SIGABRT, seen in CI).
    os._exit(0)


def single(algorithm: str, init_state: dict) -> dict:
    trainer = Trainer(config(algorithm), SPEC)
    trainer.model.load_state_dict(init_state)
    if trainer.target is not None:
        trainer.target.load_state_dict(init_state)
    for step in range(3):
        trainer.train_on(make_batch(step))
    return trainer.model.state_dict()


def test_two_gloo_ranks_equal_one_process(tmp_path):
    for algorithm in ("appo", "impala"):
        out = str(tmp_path / f"{algorithm}.pt")
        mp.start_processes(worker, args=(free_port(), algorithm, out), nprocs=2, join=True, start_method="spawn")
        ddp = torch.load(out, weights_only=True)
        torch.manual_seed(100)  # rank 0's init, which the broadcast gave every rank
        init = Trainer(config(algorithm), SPEC).model.state_dict()
        ref = single(algorithm, init)
        for k in ref:
            assert torch.allclose(ddp[k], ref[k], atol=1e-5, rtol=1e-4), (algorithm, k)
        assert any(not torch.equal(ref[k], init[k]) for k in ref), "training changed nothing"
