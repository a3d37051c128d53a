"""The one typed run config, shared by gateway, learner, actors and replay.

Every hyperparameter lives here with its default and a one-line doc, CleanRL
style, so a run is fully described by one JSON object that the gateway
validates once and every service reads the same way.
"""
from __future__ import annotations

import enum
import json
import os
import time
from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Hard limits that protect memory; a request beyond them is a 422, not an OOM.
MAX_ENVS_PER_ACTOR = 256
MAX_UNROLL = 512
MAX_BATCH_STEPS = 65_536
# What one process may be asked to hold for a run (learner batches, one replay shard);
# a config beyond it would not fit in memory and is a 422 naming the field.
MAX_RUN_MEMORY_BYTES = int(float(os.environ.get("RL_MAX_RUN_MEMORY_GB", "32")) * 2**30)
_ATARI_STEP_BYTES = 4 * 84 * 84 * 4  # a float32 4-stack, as the learner's model sees it
_VECTOR_STEP_BYTES = 4096  # generous for any vector observation (CartPole: 16 bytes)
Channels = Annotated[int, Field(ge=1, le=512)]  # a conv layer's width


class RunConfig(BaseModel):
    """A training run: environment, algorithm, model, sizes and stop conditions."""

    model_config = ConfigDict(extra="forbid")

    # --- environment -------------------------------------------------------
    env_id: str = Field("CartPole-v1", description="Gymnasium or ALE env id, e.g. CartPole-v1, ALE/Pong-v5")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="base seed; actor i uses seed + 1000 * i")
    num_actors: int = Field(2, ge=1, le=1024, description="actor processes the launcher starts (others may join)")
    num_envs: int = Field(16, ge=1, le=MAX_ENVS_PER_ACTOR, description="environments stepped by each actor")
    unroll_length: int = Field(32, ge=2, le=MAX_UNROLL, description="agent steps per trajectory fragment")
    # --- algorithm ---------------------------------------------------------
    algorithm: Literal["impala", "appo"] = Field("appo", description="V-trace policy gradient, or IMPACT's clipped surrogate")
    model: Literal["auto", "mlp", "nature_cnn", "impala_resnet"] = Field(
        "auto", description="auto: MLP for vector observations, Nature CNN for frames")
    hidden_size: int = Field(64, ge=8, le=4096, description="MLP width / CNN head width")
    latent_ae: bool = Field(False, description="latent auto-encoder: heads read a small latent, decoder loss on frames")
    latent_dim: int = Field(256, ge=8, le=4096, description="latent size of the auto-encoder")
    ae_channels: tuple[Channels, Channels] = Field((16, 32), description="channels of the auto-encoder's two conv layers "
                                         "(8x8 stride 4, 4x4 stride 2); its decoder mirrors them")
    ae_coef: float = Field(0.1, ge=0.0, le=100.0, description="weight of the reconstruction loss")
    ae_fraction: float = Field(0.125, gt=0.0, le=1.0, description="share of each batch the decoder reconstructs (it costs more than the encoder)")
    batch_size: int = Field(512, ge=2, le=MAX_BATCH_STEPS, description="agent steps per learner batch (T x B)")
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0, description="Adam learning rate")
    lr_schedule: list[tuple[int, float]] = Field(
        default_factory=list, description="piecewise-linear learning rate over fresh agent steps trained: [[steps, lr], ...], "
        "starting from learning_rate at step 0 and held after the last point; []: constant")
    lr_kl_target: float = Field(0.0, ge=0.0, le=10.0, description="adaptive learning rate: >0 scales it by 1.5 down/up after each pass when KL(behaviour || policy) is above twice / below half this (rl_games); 0: constant")
    adam_eps: float = Field(1e-5, gt=0.0, le=1.0, description="Adam epsilon")
    max_grad_norm: float = Field(1.0, gt=0.0, le=1e6, description="global gradient-norm clip")
    gamma: float = Field(0.99, ge=0.0, le=1.0, description="discount")
    entropy_coef: float = Field(0.0, ge=0.0, le=10.0, description="entropy bonus weight")
    entropy_schedule: list[tuple[int, float]] = Field(
        default_factory=list, description="piecewise-linear entropy weight over fresh agent steps trained, like "
        "lr_schedule: [[steps, coef], ...] from entropy_coef at step 0, held after the last point; []: constant")
    value_coef: float = Field(0.5, ge=0.0, le=100.0, description="value loss weight")
    normalize_advantages: bool = Field(False, description="standardize policy-gradient advantages per batch (sparse-reward games)")
    rho_bar: float = Field(1.0, gt=0.0, le=100.0, description="V-trace rho clip")
    c_bar: float = Field(1.0, gt=0.0, le=100.0, description="V-trace c clip")
    vtrace_lambda: float = Field(1.0, ge=0.0, le=1.0, description="V-trace lambda: scales the traces (on-policy: GAE's lambda)")
    clip_eps: float = Field(0.2, gt=0.0, le=1.0, description="APPO ratio clip epsilon")
    kl_coef: float = Field(0.0, ge=0.0, le=100.0, description="APPO KL(target || current) penalty")
    target_update_interval: int = Field(4, ge=1, le=100_000, description="APPO: learner steps between target-network copies")
    minibatches: int = Field(1, ge=1, le=1024, description="optimiser steps per pass over a batch, each on a random 1/n of every trajectory's steps (PPO's minibatches)")
    reuse: int = Field(2, ge=1, le=64, description="times each batch is trained on (IMPACT circular buffer of this many batches)")
    epochs: int = Field(1, ge=1, le=64, description="passes over each new batch as it arrives, before the actors act on the result (PPO's epochs); reuse > 1 adds passes in later steps")
    replay_proportion: float = Field(0.0, ge=0.0, lt=1.0, description="share of each batch drawn from replay shards")
    replay_capacity: int = Field(2_000, ge=1, le=10_000_000, description="fragments each replay shard keeps per run")
    replay_capacity_mb: float = Field(512.0, gt=0.0, le=65_536.0, description="bytes (MiB) each replay shard keeps per run")
    max_policy_lag: int = Field(50, ge=0, le=1_000_000, description="fragments older than this many versions are dropped")
    actor_wait: float = Field(0.0, ge=0.0, le=60.0, description="flow control: seconds an actor waits for newer weights before a fragment (0: fully async)")
    actor_lead: int = Field(1, ge=1, le=64, description="flow control: fragments an actor may act ahead of the newest weights and of what the learner has trained of its own")
    publish_interval: float = Field(0.2, ge=0.0, le=3600.0, description="min seconds between weight publications")
    prefetch: bool = Field(True, description="parallel data loading: assemble batches ahead of the optimiser")
    train_ahead: bool = Field(True, description="take each step's passes over older reused batches while the actors act, "
                              "before the new batch arrives: the same updates in the same order, overlapped with acting")
    prefetch_batches: int = Field(2, ge=1, le=64, description="batches assembled ahead of the optimiser")
    bf16: Literal["auto", "on", "off"] = Field(
        "auto", description="bf16 autocast of the learner's image model: auto = on GPUs and on CPUs with native bf16 "
        "(AVX512-BF16 or AMX), where it trains 1.3-1.7x faster; vector models stay float32 (unclipped returns)")
    learner_threads: int = Field(1, ge=1, le=256, description="torch intra-op threads in the learner on CPU")
    compile: bool = Field(False, description="torch.compile the learner's forward and losses; on CUDA also replayed as "
                          "CUDA graphs (a GPU learner step is bound by its kernel launches); costs a compile at start")
    # --- fault tolerance ----------------------------------------------------
    checkpoint_interval_s: float = Field(30.0, ge=0.0, le=86_400.0, description="seconds between checkpoints (0: off)")
    checkpoint_every_updates: int = Field(0, ge=0, le=10_000_000, description="updates between checkpoints (0: off)")
    checkpoint_keep: int = Field(3, ge=1, le=100, description="newest checkpoints kept per run; older ones deleted")
    heartbeat_timeout_s: float = Field(15.0, ge=2.0, le=3600.0, description="a running run whose heartbeat is older is requeued to resume")
    # --- stop conditions (any one ends the run) ---------------------------
    max_agent_steps: Optional[int] = Field(None, ge=1, description="stop after this many agent steps")
    max_seconds: Optional[float] = Field(None, gt=0.0, description="stop after this many seconds of training")
    target_return: Optional[float] = Field(None, description="stop when mean return of the last 100 episodes reaches this")

    @field_validator("env_id")
    @classmethod
    def _known_env(cls, v: str) -> str:
        from shared.envs import is_registered

        if not is_registered(v):
            raise ValueError(f"unknown env id {v!r}: not registered in gymnasium (or ale-py)")
        return v

    @model_validator(mode="after")
    def _sizes_fit(self) -> "RunConfig":
        if self.batch_size < self.unroll_length:
            raise ValueError("batch_size must be at least unroll_length (one env column)")
        if self.minibatches > self.unroll_length:
            raise ValueError(f"minibatches ({self.minibatches}) exceeds unroll_length ({self.unroll_length}): "
                             "each minibatch takes a share of every trajectory's steps")
        if self.model in ("nature_cnn", "impala_resnet") and not self.env_id.startswith("ALE/"):
            raise ValueError(f"model {self.model!r} needs an image env (ALE/...)")
        self._schedule_valid()
        self._fits_in_memory()
        return self

    def _schedule_valid(self) -> None:
        for name, top in (("lr_schedule", 1.0), ("entropy_schedule", 10.0)):
            schedule = getattr(self, name)
            steps = [s for s, _ in schedule]
            if any(s <= 0 for s in steps) or steps != sorted(set(steps)):
                raise ValueError(f"{name} steps must be positive and strictly increasing")
            if any(not 0.0 <= v <= top for _, v in schedule):
                raise ValueError(f"{name} values must be in [0, {top:g}]")
        if self.lr_schedule and self.lr_kl_target > 0:
            raise ValueError("lr_schedule and lr_kl_target both set the learning rate: use one")

    def learning_rate_at(self, steps: float) -> float:
        """The scheduled learning rate after `steps` fresh agent steps were trained."""
        return _piecewise_linear(self.learning_rate, self.lr_schedule, steps)

    def entropy_coef_at(self, steps: float) -> float:
        """The scheduled entropy weight after `steps` fresh agent steps were trained. A fixed
        weight lets the entropy bonus outgrow the policy gradient once the advantages are mostly
        noise (late in Pong the policy's entropy rose again at the lr floor); a falling one
        lets the policy sharpen."""
        return _piecewise_linear(self.entropy_coef, self.entropy_schedule, steps)

    def _fits_in_memory(self) -> None:
        """Refuse sizes whose buffers would not fit in one process (rough upper estimate)."""
        step = _ATARI_STEP_BYTES if self.env_id.startswith("ALE/") else _VECTOR_STEP_BYTES
        held = (self.prefetch_batches + self.reuse + 2) * self.batch_columns * (self.unroll_length + 1) * step
        gib = MAX_RUN_MEMORY_BYTES / 2**30
        if held > MAX_RUN_MEMORY_BYTES:
            raise ValueError(f"batch_size x (prefetch_batches + reuse) would hold about {held / 2**30:.0f} GiB "
                             f"of observations in the learner, over the {gib:.0f} GiB limit")
        if self.replay_capacity_mb * 2**20 > MAX_RUN_MEMORY_BYTES:
            raise ValueError(f"replay_capacity_mb over the {gib:.0f} GiB per-process limit")

    @property
    def batch_columns(self) -> int:
        """Env columns (B) per batch: batch_size / unroll_length, rounded up."""
        return -(-self.batch_size // self.unroll_length)

    @property
    def passes_per_batch(self) -> int:
        """Passes each batch gets in all: `epochs` when it arrives, one in each later step it stays."""
        return self.epochs + self.reuse - 1


class RunState(str, enum.Enum):
    pending = "pending"
    running = "running"
    stopping = "stopping"
    stopped = "stopped"
    finished = "finished"
    failed = "failed"


ACTIVE_STATES = {RunState.pending, RunState.running, RunState.stopping}


class RunRecord(BaseModel):
    """What the KV bucket holds per run; updated only with revision checks."""

    id: str
    config: RunConfig
    state: RunState = RunState.pending
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    learner_id: Optional[str] = None
    heartbeat: Optional[float] = None
    reason: Optional[str] = None
    checkpoint: Optional[str] = None
    resume: bool = Field(False, description="the next learner continues from the newest checkpoint")
    resumes: int = Field(0, description="times the run was resumed (lost learner or POST /resume)")


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    """KEY=VALUE strings (from --set) into a config dict; values parsed as JSON where they parse."""
    for kv in overrides:
        key, _, value = kv.partition("=")
        try:
            cfg[key] = json.loads(value)
        except json.JSONDecodeError:
            cfg[key] = value
    return cfg


def actor_cores(cfg: dict, cpus: Optional[int] = None) -> int:
    """The cores the actors may have: all of them where the learner idles while
    they act, else all but the learner's. The learner idles when actors and
    learner take turns: paced actors (actor_wait > 0) act one fragment ahead
    (actor_lead 1) on the newest weights, and the learner has no older batches
    to train on meanwhile (reuse 1, or train_ahead off), as in the Pong preset
    with 4 epochs and no reuse. On the 2-core Zen 3 VM that preset sampled
    107,520 agent steps in 3 minutes with 2 actors x 4 envs against 86,016
    with 1 x 8, both at policy lag 0 (docs/benchmarks.md, "Epochs instead of
    reuse")."""
    cpus = cpus or os.cpu_count() or 2
    fields = RunConfig.model_fields
    value = {k: cfg.get(k, fields[k].default) for k in ("actor_wait", "actor_lead", "reuse", "train_ahead")}
    paced = value["actor_wait"] > 0 and value["actor_lead"] == 1
    nothing_ahead = value["reuse"] == 1 or not value["train_ahead"]
    return cpus if paced and nothing_ahead else max(1, cpus - 1)


def auto_size(cfg: dict, cpus: Optional[int] = None, devices: Optional[int] = None) -> dict:
    """Fill in the sizes that depend on the machine, where the config leaves them out.

    num_actors and num_envs, when the config gives its batch (batch_size and
    unroll_length) but neither of them: as many actors as the actors have
    cores (`actor_cores`), up to one per env column of the batch, each with an
    equal share of those columns (a multiple of the learner's `devices`, which
    each take an equal share of every fragment). One round of fragments, one
    from each actor, is then exactly one batch: with actor_lead 1 the actors
    act together on the newest weights and every batch trains at policy lag
    0; on 2 cores this gives the Pong preset 2 actors x 4 envs. Why: on 16
    cores the rule below gave that preset 15 actors of 8 envs against
    batches of one fragment; they sampled twice what the learner trained,
    half was dropped as stale and the rest trained up to 192 updates old
    (docs/benchmarks.md, "On a lent GPU machine"); here it gives 8 x 1.
    Otherwise num_actors is one actor process per core the actors have.
    learner_threads: about half the cores; on the 2-core machine 2 threads
    train 10 % faster than 1 in the whole stack even though they share a core
    with the actor (bench/results/throughput-t2.json)."""
    cpus = cpus or os.cpu_count() or 2
    if devices is None:
        devices = _learner_devices()
    cores = actor_cores(cfg, cpus)
    if "num_envs" not in cfg and {"batch_size", "unroll_length"} <= cfg.keys():
        columns = max(1, cfg["batch_size"] // cfg["unroll_length"])
        if "num_actors" not in cfg:
            fits = [a for a in range(1, columns + 1) if columns % a == 0 and (columns // a) % devices == 0]
            cfg["num_actors"] = max([a for a in fits if a <= cores] or [1])
        share = -(-columns // cfg["num_actors"])  # a round of fragments fills at least one batch
        cfg["num_envs"] = -(-share // devices) * devices
    cfg.setdefault("num_actors", cores)
    cfg.setdefault("learner_threads", max(1, min(8, cpus // 2 + 1)))
    return cfg


def _learner_devices() -> int:
    """The devices a learner started here with --devices auto would train on: every
    visible GPU, else 1. Counted without importing torch (the gateway sizes the
    dashboard's presets and does not load it): CUDA_VISIBLE_DEVICES if set, else
    the NVIDIA driver's list of GPUs."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return max(1, len([d for d in visible.split(",") if d.strip() and not d.strip().startswith("-")]))
    try:
        return max(1, len(os.listdir("/proc/driver/nvidia/gpus")))
    except OSError:
        return 1


def _piecewise_linear(start: float, schedule: list[tuple[int, float]], steps: float) -> float:
    """`start` at step 0, linear between the schedule's [steps, value] points, the last value after."""
    v0, s0 = start, 0.0
    for s1, v1 in schedule:
        if steps < s1:
            return v0 + (v1 - v0) * (steps - s0) / (s1 - s0)
        s0, v0 = s1, v1
    return v0
