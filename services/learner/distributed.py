"""Data parallelism over devices: one learner process per device.

Rank 0 (the leader) is the learner that claimed the run; it starts one
follower process per extra device. Every rank subscribes to the run's
fragments in one NATS queue group, so the stream splits across ranks; each
assembles its share of the batch on its own device, and gradients are
averaged with an all-reduce before every optimiser step (NCCL on GPUs, gloo
on CPU). Same initial weights (broadcast from rank 0) + same averaged
gradients = the same model on every rank, equal to one device training on
the whole global batch.
"""
from __future__ import annotations

import datetime
import os
import subprocess
import sys
from typing import Sequence

import torch
import torch.distributed as dist

from shared.config import RunConfig
from shared.service import die_with_parent

TIMEOUT = datetime.timedelta(minutes=5)  # a dead rank fails the run instead of hanging it


def check_shares(cfg: RunConfig, world: int) -> None:
    """Each rank takes an equal slice of every fragment's envs (services/learner/prefetch.py,
    `my_columns`): refuse a run whose envs or batch columns do not split evenly."""
    if world > 1 and (cfg.num_envs % world or cfg.batch_columns % world):
        raise ValueError(f"num_envs ({cfg.num_envs}) and batch_size / unroll_length ({cfg.batch_columns}) must be "
                         f"multiples of the learner's {world} devices: each takes an equal share of every fragment")


def visible_devices(spec: str = "auto") -> list[str]:
    """"auto": every visible GPU, else the CPU; or a comma list such as "cuda:0,cuda:1" or "cpu,cpu"."""
    if spec != "auto":
        return [d.strip() for d in spec.split(",") if d.strip()]
    n = torch.cuda.device_count()
    return [f"cuda:{i}" for i in range(n)] if n else ["cpu"]


def init(rank: int, world: int, port: int, device: str) -> None:
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=TIMEOUT)


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast_model(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers everywhere."""
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


def average_gradients(model: torch.nn.Module) -> None:
    """All-reduce the gradients as one flat bucket and divide by the world size."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


def sum_across(values: Sequence[float], device: torch.device) -> list[float]:
    """Sum a few counters over ranks (identity with one rank)."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_values(values: Sequence[float], device: torch.device) -> list[float]:
    """Rank 0's numbers everywhere (float64: exact for counters up to 2**53)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return t.tolist()


def broadcast_optimizer(opt: torch.optim.Optimizer) -> None:
    """Rank 0's optimiser state (Adam's moments and step counts) everywhere. A rank
    without state yet (a fresh follower beside a resumed rank 0) first makes it with
    a step on zero gradients, which moves no weight: Adam's update is m / (sqrt(v) + eps)
    with m = 0."""
    params = [p for g in opt.param_groups for p in g["params"]]
    device = params[0].device
    if broadcast_values([float(bool(opt.state))], device)[0] and not opt.state:
        for p in params:
            p.grad = torch.zeros_like(p)
        opt.step()
        opt.zero_grad(set_to_none=True)
    for p in params:
        for _, t in sorted(opt.state.get(p, {}).items()):
            if torch.is_tensor(t):  # NCCL broadcasts only device tensors: Adam's step count may be on the CPU
                moved = t.to(device)
                dist.broadcast(moved, src=0)
                t.copy_(moved)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def spawn_followers(run_id: str, devices: list[str], port: int, log_dir: str | None = None) -> list[subprocess.Popen]:
    """One follower process per extra device (ranks 1..n-1); they inherit RL_NATS_URL."""
    procs = []
    for rank, device in enumerate(devices[1:], start=1):
        out = open(os.path.join(log_dir, f"learner-rank{rank}.log"), "ab") if log_dir else None
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "services.learner.follower", "--run", run_id, "--rank", str(rank),
             "--world", str(len(devices)), "--device", device, "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT if out else None, preexec_fn=die_with_parent))
    return procs
