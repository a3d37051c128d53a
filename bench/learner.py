"""The learner's own ceiling: trained samples/s of the optimiser alone (no
transport, no actors) on batches shaped like the preset's, and where a pass's
time goes. Read it beside bench/throughput.py: the whole stack's trained
samples/s cannot beat this, and at K passes a batch (epochs + reuse - 1) it samples at most 1/K of it.

    python bench/learner.py [--config configs/pong.json] [--threads 1 2] [--device cuda] [--profile] [--set key=value ...]

--profile adds one new batch under torch.profiler: the calls it makes on the host, and
on a GPU its kernel launches, its waits for the device and the kernels' own time
against the batch's unprofiled time (the share of it the GPU was busy).
"""
from __future__ import annotations

import argparse
import collections
import time

import torch
from common import load_config, write_result
from torch.autograd import DeviceType

from services.launcher.stack import ROOT
from services.learner.trainer import Trainer
from shared.config import RunConfig
from shared.envs import env_spec


def synthetic_batch(cfg: RunConfig, num_actions: int, seed: int) -> dict[str, torch.Tensor]:
    """A batch with the preset's shapes (Atari frames + stack context); content random."""
    g = torch.Generator().manual_seed(seed)
    T, B = cfg.unroll_length, cfg.batch_columns
    return {"obs": torch.randint(0, 256, (T + 1, B, 84, 84), dtype=torch.uint8, generator=g),
            "context": torch.randint(0, 256, (B, 3, 84, 84), dtype=torch.uint8, generator=g),
            "actions": torch.randint(0, num_actions, (T, B), generator=g),
            "logits": torch.randn(T, B, num_actions, generator=g), "rewards": torch.zeros(T, B),
            "dones": (torch.rand(T, B, generator=g) < 0.01).to(torch.uint8)}


def timed(fn, repeats: int, device: torch.device) -> float:
    """Mean seconds per call, after one warm-up call (on a GPU: until its work is done)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - t0) / repeats


def where_time_goes(trainer: Trainer, batch: dict[str, torch.Tensor], device: torch.device,
                    seconds_per_batch: float) -> dict:
    """One train_on under the profiler. Why: a GPU learner that is slow while the GPU
    idles spends its time launching kernels or waiting on the device, and only a count
    of each tells which. Kernel time is the kernels' own, so its share of the unprofiled
    time is how busy the GPU was."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        trainer.train_on(batch)
        if cuda:
            torch.cuda.synchronize(device)
    events = prof.events()
    # top-level calls on the host: operators, and in backward the autograd nodes that run them
    operators = [e for e in events if e.cpu_parent is None and e.device_type == DeviceType.CPU
                 and not e.name.startswith(("cuda", "ProfilerStep", "[memory]"))]
    by_name: dict[str, list[float]] = {}
    for e in operators:
        by_name.setdefault(e.name, [0, 0.0])
        by_name[e.name][0] += 1
        by_name[e.name][1] += e.cpu_time_total / 1e3
    out = {"host_calls": len(operators),
           "top_host_calls_by_ms": sorted(([n, c, round(ms, 2)] for n, (c, ms) in by_name.items()),
                                              key=lambda r: -r[2])[:12]}
    if cuda:
        api = collections.Counter(e.name for e in events if e.name.startswith("cuda"))
        kernel_s = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA) / 1e6
        out |= {"kernel_launches": api.get("cudaLaunchKernel", 0) + api.get("cudaLaunchKernelExC", 0),
                "device_waits": sum(v for k, v in api.items() if "Synchronize" in k),
                "memcpy_calls": sum(v for k, v in api.items() if "Memcpy" in k),
                "kernel_seconds": kernel_s, "gpu_busy_share": kernel_s / seconds_per_batch,
                "cuda_api_calls": dict(api.most_common(8))}
    return out


def measure(cfg: RunConfig, threads: int, repeats: int, device: torch.device, profile: bool = False) -> dict:
    torch.set_num_threads(threads)
    spec = env_spec(cfg)
    torch.manual_seed(cfg.seed)
    trainer = Trainer(cfg, spec, device)
    samples = cfg.unroll_length * cfg.batch_columns
    # Steady state of the reuse buffer: each new batch costs `passes_per_batch` passes. Every timed
    # call gets a batch never seen before, so its input conversion is counted (and, a few
    # ms, making the random batch and, on a GPU, copying it there: the ceiling errs low).
    fresh = ({k: v.to(device) for k, v in synthetic_batch(cfg, spec.num_actions, i).items()} for i in range(10**9))
    t0 = time.perf_counter()
    for _ in range(cfg.reuse):
        trainer.train_on(next(fresh))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    warmup = time.perf_counter() - t0  # with `compile`, mostly the compile
    per_batch = timed(lambda: trainer.train_on(next(fresh)), repeats, device)
    frames = trainer.observations(next(fresh))
    flat = frames.reshape(-1, *frames.shape[2:])
    prepare = timed(lambda: trainer.model.prepare(flat), repeats, device)
    x = trainer.model.prepare(flat)
    with torch.no_grad():
        forward = timed(lambda: trainer.model.forward_prepared(x, with_recon=False), repeats, device)
    profiled = None
    if profile:
        try:
            profiled = where_time_goes(trainer, next(fresh), device, per_batch)
        except Exception as e:  # noqa: BLE001  a profiler that fails must not cost the timing above
            profiled = {"error": repr(e)}
    return {"threads": threads, "device": str(device), "bf16": trainer.autocast,
            "precision_probe_ms": {k: v * 1e3 for k, v in trainer.precision_probe.items()},
            "samples_per_batch": samples, "compile": cfg.compile, "warmup_seconds": warmup,
            "seconds_per_new_batch": per_batch,
            "trained_samples_per_s": samples * cfg.passes_per_batch / per_batch,
            "fresh_agent_steps_per_s_ceiling": samples / per_batch,
            "prepare_ms_per_batch": prepare * 1e3, "forward_ms_per_batch": forward * 1e3,
            "optimiser_steps_per_new_batch": cfg.passes_per_batch * cfg.minibatches,
            "ms_per_optimiser_step": per_batch * 1e3 / (cfg.passes_per_batch * cfg.minibatches),
            "profile_of_one_new_batch": profiled}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default=str(ROOT / "configs" / "pong.json"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--profile", action="store_true", help="also profile one new batch (see above)")
    p.add_argument("--name", default="learner")
    a = p.parse_args()
    cfg = RunConfig(**load_config(a.config, a.set))
    rows = [measure(cfg, t, a.repeats, torch.device(a.device), a.profile) for t in a.threads]
    for r in rows:
        print(f"{r['device']}, threads {r['threads']}: {r['trained_samples_per_s']:.0f} trained samples/s, "
              f"ceiling {r['fresh_agent_steps_per_s_ceiling']:.0f} fresh agent steps/s at {cfg.passes_per_batch} passes a batch")
    write_result(a.name, {"config": cfg.model_dump(), "results": rows})


if __name__ == "__main__":
    main()
