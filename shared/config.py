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
from typing import Annotated, Any, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, ValidationInfo, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from shared.envs import ATARI_PREFIX

# Hard limits that protect memory; a request beyond them is a 422, not an OOM.
MAX_ENVS_PER_ACTOR = 256
MAX_UNROLL = 512
MAX_BATCH_STEPS = 65_536
# What one process may be asked to hold for a run (learner batches, one replay shard);
# a config beyond it would not fit in memory and is a 422 naming the field.
MAX_RUN_MEMORY_BYTES = int(float(os.environ.get("RL_MAX_RUN_MEMORY_GB", "32")) * 2**30)
Channels = Annotated[int, Field(ge=1, le=512)]  # a conv layer's width


# The Atari family's preset: every ALE game gets these values for the fields a run
# leaves out (docs/decisions.md gives each one's evidence). configs/pong.json adds
# only Pong's stop condition. Sizes that depend on the machine (num_actors,
# num_envs, learner_threads) are not here: the learner settles them (`resolve_sizes`).
ATARI_PRESET: dict[str, Any] = {
    "unroll_length": 128, "batch_size": 1024, "minibatches": 8, "epochs": 4, "reuse": 1,
    "learning_rate": 0.0008, "lr_schedule": [[1_000_000, 0.0008], [2_000_000, 0.0001]],
    "entropy_coef": 0.01, "entropy_schedule": [[1_000_000, 0.01], [2_000_000, 0.001]],
    "vtrace_lambda": 0.95, "clip_eps": 0.1, "max_grad_norm": 0.5, "normalize_advantages": True,
    "target_update_interval": 16, "latent_ae": True, "latent_dim": 256, "ae_channels": [32, 64],
    "ae_coef": 0.1, "ae_fraction": 0.125, "max_policy_lag": 100, "flow": "sync", "publish_interval": 0.5,
    "life_loss_terminal": True,
}
# A run that names no stop condition stops after this many agent steps (the learner
# says so when it starts the run): CleanRL's Atari budget, and a generous one for
# small control envs (CartPole needs about 120k).
STEP_BUDGET = {"atari": 10_000_000, "other": 1_000_000}
STOP_FIELDS = ("max_agent_steps", "max_seconds", "target_return")


def _refuse(field: str, message: str, value: Any) -> ValidationError:
    """A validation error located at `field` (a 422 that names it), from a model-level check."""
    return ValidationError.from_exception_data("RunConfig", [InitErrorDetails(
        type=PydanticCustomError("invalid_run_config", message), loc=(field,), input=value)])


class RunConfig(BaseModel):
    """A training run: environment, algorithm, model, sizes and stop conditions.

    Validated with context {"stored": True} (a record read back from the KV
    bucket), the env is not built: a stored run must stay readable in every
    process, even one that cannot import its env's module; the learner checks
    the env itself before it trains (and fails the run with the reason)."""

    model_config = ConfigDict(extra="forbid")

    # --- environment -------------------------------------------------------
    env_id: str = Field("CartPole-v1", description="Gymnasium id (CartPole-v1), ALE id (ALE/Breakout-v5), "
                        "or module:EnvId for an env a user's importable module registers")
    env_kwargs: dict[str, JsonValue] = Field(default_factory=dict, description="keyword arguments of the env's "
                                             "constructor (Gymnasium ids; ALE ids take the fields below)")
    sticky_actions: Optional[float] = Field(None, ge=0.0, le=1.0, description="ALE: probability of repeating the "
                                            "last action (repeat_action_probability); null: the id's own, 0.25 for v5")
    full_action_space: Optional[bool] = Field(None, description="ALE: all 18 actions; null: the id's own "
                                              "(the game's minimal set for v5)")
    max_episode_frames: Optional[int] = Field(None, ge=1, le=10_000_000, description="ALE: frames after which an "
                                              "episode is cut; null: the id's own, 108,000 (30 minutes)")
    life_loss_terminal: bool = Field(False, description="ALE: learn a lost life as an episode's end (no value "
                                     "carried past it); the game, and its reported return, go on")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="base seed; an actor's envs are seeded from it and the "
                      "actor's slot")
    num_actors: Optional[int] = Field(None, ge=1, le=1024, description="actor processes the run takes (the "
                                      "launcher starts this many; in sync mode a round has one fragment of each); "
                                      "null: sized by the learner's machine")
    num_envs: Optional[int] = Field(None, ge=1, le=MAX_ENVS_PER_ACTOR, description="environments each actor steps; "
                                    "null: sized by the learner's machine")
    unroll_length: int = Field(16, ge=2, le=MAX_UNROLL, description="agent steps per trajectory fragment")
    # --- algorithm ---------------------------------------------------------
    algorithm: Literal["impala", "appo"] = Field("appo", description="V-trace policy gradient, or IMPACT's clipped surrogate")
    model: Literal["auto", "mlp", "nature_cnn", "small_cnn", "impala_resnet"] = Field(
        "auto", description="auto: MLP for vector observations; for images the Nature CNN (36x36 and up) "
        "or the small CNN")
    hidden_size: int = Field(128, ge=8, le=4096, description="width of the MLP's two layers (vector observations)")
    latent_ae: bool = Field(False, description="latent auto-encoder: heads read a small latent, decoder loss on frames")
    latent_dim: int = Field(256, ge=8, le=4096, description="latent size of the auto-encoder")
    ae_channels: tuple[Channels, Channels] = Field((16, 32), description="channels of the auto-encoder's two conv layers "
                                         "(8x8 stride 4, 4x4 stride 2); its decoder mirrors them")
    ae_coef: float = Field(0.1, ge=0.0, le=100.0, description="weight of the reconstruction loss")
    ae_fraction: float = Field(0.125, gt=0.0, le=1.0, description="share of each batch the decoder reconstructs (it costs more than the encoder)")
    batch_size: int = Field(256, ge=2, le=MAX_BATCH_STEPS, description="agent steps per learner batch (T x B)")
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0, description="Adam learning rate")
    lr_schedule: list[tuple[int, float]] = Field(
        default_factory=list, description="piecewise-linear learning rate over fresh agent steps trained: [[steps, lr], ...], "
        "starting from learning_rate at step 0 and held after the last point; []: constant")
    lr_kl_target: float = Field(0.0, ge=0.0, le=10.0, description="adaptive learning rate: >0 scales it by 1.5 down/up after each pass when KL(behaviour || policy) is above twice / below half this (rl_games); 0: constant")
    adam_eps: float = Field(1e-5, gt=0.0, le=1.0, description="Adam epsilon")
    max_grad_norm: float = Field(1.0, gt=0.0, le=1e6, description="global gradient-norm clip")
    gamma: float = Field(0.99, ge=0.0, le=1.0, description="discount")
    entropy_coef: float = Field(0.01, ge=0.0, le=10.0, description="entropy bonus weight: without one, async flow can collapse to a deterministic policy that never explores again")
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
    target_update_interval: int = Field(4, ge=1, le=100_000, description="APPO: optimiser (minibatch) steps between "
                                        "target-network copies")
    minibatches: int = Field(1, ge=1, le=1024, description="optimiser steps per pass over a batch, each on a random 1/n of every trajectory's steps (PPO's minibatches)")
    epochs: int = Field(1, ge=1, le=64, description="passes over each new batch as it arrives, before the actors act on the result (PPO's epochs)")
    reuse: int = Field(4, ge=1, le=64, description="learner steps each batch stays in IMPACT's circular buffer: one more "
                       "pass in each step after its first (passes per batch: epochs + reuse - 1)")
    replay_proportion: float = Field(0.0, ge=0.0, lt=1.0, description="share of each batch drawn from replay shards")
    replay_capacity: int = Field(2_000, ge=1, le=10_000_000, description="fragments each replay shard keeps per run")
    replay_capacity_mb: float = Field(512.0, gt=0.0, le=65_536.0, description="bytes (MiB) each replay shard keeps per run")
    # --- flow control --------------------------------------------------------
    flow: Literal["sync", "async"] = Field("sync", description="sync: each actor acts one fragment on each weights "
                                           "version and batches train at policy lag 0 (a few cores shared by actors "
                                           "and learner); async: actors never wait, the lag is bounded by "
                                           "max_policy_lag (many actor hosts, a GPU learner)")
    round_deadline_s: float = Field(10.0, gt=0.0, le=600.0, description="sync: seconds a batch waits for an actor's "
                                    "fragment of the round before it goes on without that actor until it sends again")
    max_policy_lag: int = Field(50, ge=0, le=1_000_000, description="fragments acted on weights more than this many "
                                "optimiser steps older than the learner's are dropped (counted as stale), checked when a "
                                "batch is assembled: up to prefetch_batches batches before it trains")
    publish_interval: float = Field(0.2, ge=0.0, le=3600.0, description="min seconds between weight publications "
                                    "(sync: also at once whenever an actor waits for them)")
    prefetch: bool = Field(True, description="parallel data loading: assemble batches ahead of the optimiser")
    train_ahead: bool = Field(True, description="take each step's passes over older reused batches while the actors act, "
                              "before the new batch arrives: the same updates in the same order, overlapped with acting")
    prefetch_batches: int = Field(2, ge=1, le=64, description="batches assembled ahead of the optimiser")
    bf16: Literal["auto", "on", "off"] = Field(
        "auto", description="bf16 autocast of the learner's image model: auto = on GPUs and on CPUs with native bf16 "
        "(AVX512-BF16 or AMX) where a timed step is faster; models of unclipped rewards stay float32")
    learner_threads: Optional[int] = Field(None, ge=1, le=256, description="torch intra-op threads in the learner on "
                                           "CPU; null: sized by the learner's machine")
    compile: bool = Field(False, description="torch.compile the learner's forward and losses; on CUDA also replayed as "
                          "CUDA graphs (a GPU learner step is bound by its kernel launches); costs a compile at start")
    # --- fault tolerance ----------------------------------------------------
    checkpoint_interval_s: float = Field(30.0, ge=0.0, le=86_400.0, description="seconds between checkpoints (0: off)")
    checkpoint_every_updates: int = Field(0, ge=0, le=10_000_000, description="updates between checkpoints (0: off)")
    checkpoint_keep: int = Field(3, ge=1, le=100, description="newest checkpoints kept per run; older ones deleted")
    heartbeat_timeout_s: float = Field(15.0, ge=2.0, le=3600.0, description="a running run whose heartbeat is older is requeued to resume")
    # --- stop conditions (any one ends the run; none given: STEP_BUDGET) ---
    max_agent_steps: Optional[int] = Field(None, ge=1, description="stop after this many agent steps")
    max_seconds: Optional[float] = Field(None, gt=0.0, description="stop after this many seconds of training")
    target_return: Optional[float] = Field(None, description="stop when mean return of the last 100 episodes reaches this")

    @model_validator(mode="before")
    @classmethod
    def _family_preset(cls, data: Any) -> Any:
        """The Atari preset under whatever an ALE run gives, and a step budget for a run
        that names no stop condition: applied here, so the launcher, the CLI, the
        dashboard and a bare POST /runs all get the same run from the same fields."""
        if not isinstance(data, dict):
            return data
        env_id = data.get("env_id", cls.model_fields["env_id"].default)
        atari = isinstance(env_id, str) and env_id.startswith(ATARI_PREFIX)
        if atari:
            data = {**ATARI_PRESET, **data}
        if all(data.get(k) is None for k in STOP_FIELDS):
            data = {**data, "max_agent_steps": STEP_BUDGET["atari" if atari else "other"]}
        return data

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> "RunConfig":
        if self.batch_size < self.unroll_length:
            raise _refuse("batch_size", "batch_size must be at least unroll_length (one env column)", self.batch_size)
        if self.minibatches > self.unroll_length:
            raise _refuse("minibatches", f"minibatches ({self.minibatches}) exceeds unroll_length "
                          f"({self.unroll_length}): each minibatch takes a share of every trajectory's steps",
                          self.minibatches)
        if self.latent_ae and self.model != "auto":
            raise _refuse("model", "latent_ae replaces the encoder: leave model at auto, or set latent_ae false",
                          self.model)
        atari = self.env_id.startswith(ATARI_PREFIX)
        if atari and self.env_kwargs:
            raise _refuse("env_kwargs", "ALE ids take no env_kwargs: use sticky_actions, full_action_space and "
                          "max_episode_frames", self.env_kwargs)
        if not atari and self.life_loss_terminal:
            raise _refuse("life_loss_terminal", f"life_loss_terminal is an ALE option; {self.env_id} is not an ALE/ id",
                          True)
        for name in ("sticky_actions", "full_action_space", "max_episode_frames"):
            if not atari and getattr(self, name) is not None:
                raise _refuse(name, f"{name} is an ALE option; {self.env_id} is not an ALE/ id", getattr(self, name))
        for name, top in (("lr_schedule", 1.0), ("entropy_schedule", 10.0)):
            schedule = getattr(self, name)
            steps = [s for s, _ in schedule]
            if any(s <= 0 for s in steps) or steps != sorted(set(steps)):
                raise _refuse(name, f"{name} steps must be positive and strictly increasing", schedule)
            if any(not 0.0 <= v <= top for _, v in schedule):
                raise _refuse(name, f"{name} values must be in [0, {top:g}]", schedule)
        if self.lr_schedule and self.lr_kl_target > 0:
            raise _refuse("lr_schedule", "lr_schedule and lr_kl_target both set the learning rate: use one",
                          self.lr_schedule)
        if (info.context or {}).get("stored"):
            return self
        from shared.envs import EnvRefused, env_spec
        from shared.models import model_kind

        try:
            spec = env_spec(self)
        except EnvRefused as e:
            raise _refuse("env_id", str(e), self.env_id) from None
        try:
            model_kind(self, spec)
        except ValueError as e:
            raise _refuse("latent_ae" if self.latent_ae else "model", str(e), self.model) from None
        self._fits_in_memory(int(np.prod(spec.obs_shape)))
        return self

    def _fits_in_memory(self, obs_values: int) -> None:
        """Refuse sizes whose buffers would not fit in one process (rough upper estimate:
        every observation held as float32, as the learner's model input)."""
        step = max(4 * obs_values, 64)
        held = (self.prefetch_batches + self.reuse + 2) * self.batch_columns * (self.unroll_length + 1) * step
        gib = MAX_RUN_MEMORY_BYTES / 2**30
        if held > MAX_RUN_MEMORY_BYTES:
            raise _refuse("batch_size", f"batch_size x (prefetch_batches + reuse) would hold about "
                          f"{held / 2**30:.0f} GiB of observations in the learner, over the {gib:.0f} GiB limit",
                          self.batch_size)
        if self.replay_capacity_mb * 2**20 > MAX_RUN_MEMORY_BYTES:
            raise _refuse("replay_capacity_mb", f"replay_capacity_mb over the {gib:.0f} GiB per-process limit",
                          self.replay_capacity_mb)

    def learning_rate_at(self, steps: float) -> float:
        """The scheduled learning rate after `steps` fresh agent steps were trained."""
        return _piecewise_linear(self.learning_rate, self.lr_schedule, steps)

    def entropy_coef_at(self, steps: float) -> float:
        """The scheduled entropy weight after `steps` fresh agent steps were trained. A fixed
        weight lets the entropy bonus outgrow the policy gradient once the advantages are mostly
        noise (late in Pong the policy's entropy rose again at the lr floor); a falling one
        lets the policy sharpen."""
        return _piecewise_linear(self.entropy_coef, self.entropy_schedule, steps)

    @property
    def batch_columns(self) -> int:
        """Env columns (B) per batch: batch_size / unroll_length, rounded up."""
        return -(-self.batch_size // self.unroll_length)

    @property
    def passes_per_batch(self) -> int:
        """Passes each batch gets in all: `epochs` when it arrives, one in each later step it stays."""
        return self.epochs + self.reuse - 1

    @property
    def sized(self) -> bool:
        """Whether the machine-dependent sizes are settled (`resolve_sizes`)."""
        return None not in (self.num_actors, self.num_envs, self.learner_threads)

    @property
    def family(self) -> str:
        return "atari" if self.env_id.startswith(ATARI_PREFIX) else "other"


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


def actor_cores(cfg: RunConfig, cpus: Optional[int] = None) -> int:
    """The cores the actors may have: all of them where the learner idles while
    they act, else all but the learner's. The learner idles when actors and
    learner take turns: sync flow, with no older batches to train on meanwhile
    (reuse 1, or train_ahead off), as in the Atari preset with 4 epochs and no
    reuse. There 2 actors x 4 envs sampled a quarter more Pong steps than 1 x 8
    on 2 cores, both at policy lag 0 (docs/decisions.md)."""
    cpus = cpus or os.cpu_count() or 2
    nothing_ahead = cfg.reuse == 1 or not cfg.train_ahead
    return cpus if cfg.flow == "sync" and nothing_ahead else max(1, cpus - 1)


def resolve_sizes(cfg: RunConfig, cpus: Optional[int] = None, devices: Optional[int] = None) -> RunConfig:
    """The config with its machine-dependent sizes settled for the machine this runs on
    (the learner's, which calls it when it claims a run), where the config leaves them
    null. Sizes a run gives are kept.

    num_actors and num_envs, when neither is given: as many actors as the actors
    have cores (`actor_cores`), up to one per env column of the batch, each with an
    equal share of those columns (a multiple of the learner's `devices`, which each
    take an equal share of every fragment). One round of fragments, one from each
    actor, is then exactly one batch: in sync flow the actors act together on the
    newest weights and every batch trains at policy lag 0 (2 actors x 4 envs for
    the Atari preset on 2 cores, 8 x 1 on 16). With num_actors given, each actor gets
    enough envs for a round to fill a batch; with num_envs given, one actor per core
    the actors have. learner_threads: for Atari, about half the cores where actors and
    learner take turns, else the cores the actors leave; 1 for other envs."""
    cpus = cpus or os.cpu_count() or 2
    if devices is None:
        devices = _learner_devices()
    cores = actor_cores(cfg, cpus)
    num_actors, num_envs = cfg.num_actors, cfg.num_envs
    if num_envs is None:
        columns = cfg.batch_columns
        if num_actors is None:
            fits = [a for a in range(1, columns + 1) if columns % a == 0 and (columns // a) % devices == 0]
            num_actors = max([a for a in fits if a <= cores] or [1])
        share = -(-columns // num_actors)  # a round of fragments fills at least one batch
        num_envs = min(MAX_ENVS_PER_ACTOR, -(-share // devices) * devices)
    if num_actors is None:
        num_actors = cores
    # Learner threads: one for small models, whose ops gain nothing from a second thread. Atari's
    # conv nets: about half the cores where actors and learner take turns, else the cores the
    # actors leave. A thread more than the free cores waits at every OpenMP barrier for one
    # that is descheduled, and the learner slows many times over (docs/decisions.md).
    if cfg.learner_threads:
        threads = cfg.learner_threads
    elif cfg.family != "atari":
        threads = 1
    elif cores < cpus:  # the actors act while the learner trains
        threads = max(1, min(8, cpus - min(num_actors, cores)))
    else:
        threads = max(1, min(8, cpus // 2 + 1))
    return cfg.model_copy(update={"num_actors": num_actors, "num_envs": num_envs, "learner_threads": threads})


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
