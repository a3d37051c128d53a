"""The optimiser side of the learner: pure torch, no NATS, so it is testable alone.

One `update` = targets over the batch (V-trace on whole trajectories, from the
target network for APPO), then minibatch steps: loss, backward, gradient clip,
Adam. With several processes (torch.distributed initialised), gradients are
averaged across them before each step, so N devices on N shards of a batch equal one device on all of it.
"""
from __future__ import annotations

import collections
import copy
import time
from typing import Callable, Optional

import torch

from services.learner import distributed
from shared import losses
from shared.config import RunConfig
from shared.envs import EnvSpec
from shared.fragment import rebuild_stacks
from shared.models import ActorCritic, build_model


def minibatch_indices(T: int, B: int, n: int, seed: int, offset: int = 0,
                      global_columns: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n disjoint minibatches of (t, b) sample indices covering a [T, B] batch;
    each takes a random T/n of every column's timesteps.

    Why single samples and not whole columns: T consecutive steps of one env
    are nearly one sample, so a minibatch of a few columns gives a gradient of
    a few envs (Pong did not learn with it: docs/decisions.md); PPO shuffles
    samples for the same reason. The keys are drawn for the *global* batch
    (`global_columns`, this rank's columns starting at `offset`) from a seed
    every rank shares, so N ranks take exactly the minibatch one device would."""
    global_columns = global_columns or B
    keys = torch.rand(global_columns, T, generator=torch.Generator().manual_seed(seed))[offset:offset + B]
    order = keys.argsort(dim=1)  # [B, T]: each column's timesteps in random order
    cols = torch.arange(B).unsqueeze(1)
    return [(part.reshape(-1), cols.expand_as(part).reshape(-1)) for part in order.tensor_split(n, dim=1)]


def take_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x[idx] along dim 0, one contiguous copy per row, in x's memory format.
    Why: advanced indexing walks a channels-last 4-D tensor element by element,
    several times slower than copying rows of the NHWC view."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        n, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(n, h * w * c).index_select(0, idx)
        return rows.view(-1, h, w, c).permute(0, 3, 1, 2)
    return x.index_select(0, idx)


def use_bf16(setting: str, device: torch.device, image: bool,
             faster_in_bf16: Callable[[], bool] = lambda: True) -> bool:
    """Whether the learner runs its model under bf16 autocast. "auto": image
    models on CUDA; on a CPU with bf16 instructions (AVX512-BF16 or AMX; without
    them oneDNN emulates bf16, slower than float32), only if `faster_in_bf16()`
    says so when timed on the model itself. Why time it: the instructions are no
    promise of speed (on one CPU kind bf16 was much faster, on another slower;
    docs/decisions.md). Models of unclipped rewards stay in float32: their values
    are unclipped returns (CartPole: up to 500), which bf16's 8-bit mantissa
    would round by up to 2."""
    if setting != "auto":
        return setting == "on"
    if not image:
        return False
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    native = [getattr(torch.cpu, f, lambda: False) for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(f() for f in native) and faster_in_bf16()


def time_training_step(model: ActorCritic, obs_shape: tuple[int, ...], samples: int, recon_fraction: float,
                       rounds: int = 3) -> dict[str, float]:
    """Seconds of one forward and backward pass of `samples` random frames, in
    float32 and under bf16 autocast: the best of `rounds`, taken alternately
    after a warm-up round (oneDNN builds its kernels on first use), so that a
    busy moment of the machine does not decide. Leaves no gradients behind."""
    obs = torch.randint(0, 256, (samples, *obs_shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    best = {"float32": float("inf"), "bf16": float("inf")}
    for r in range(rounds + 1):
        for name in best:
            bf16 = name == "bf16"
            x = model.prepare(obs, dtype=torch.bfloat16 if bf16 else torch.float32)
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits, values, recon = model.forward_prepared(x, with_recon=True, recon_fraction=recon_fraction)
            loss = logits.float().logsumexp(-1).mean() + values.float().mean()
            (loss + recon.float() if recon is not None else loss).backward()
            model.zero_grad(set_to_none=True)
            if r:
                best[name] = min(best[name], time.perf_counter() - t0)
    return best


class Trainer:
    def __init__(self, cfg: RunConfig, spec: EnvSpec, device: torch.device | str = "cpu",
                 model: Optional[ActorCritic] = None):
        self.cfg, self.spec, self.device = cfg, spec, torch.device(device)
        self.model = (model or build_model(cfg, spec)).to(self.device)
        self.target: Optional[ActorCritic] = None
        self.target_loads = 0  # times the target network's weights were set: a batch's cached targets name it
        if cfg.algorithm == "appo":
            self.target = copy.deepcopy(self.model).requires_grad_(False)
        # Fused Adam: one kernel over all parameters, not one per tensor.
        self.fused = self.device.type in ("cpu", "cuda")
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps,
                                    fused=self.fused or None)
        self.updates = 0
        self.fresh_steps = 0  # fresh agent steps trained, summed over ranks: the lr schedule's clock
        # IMPACT's circular buffer: each batch stays for `reuse` steps, trained once per step.
        self.reuse_buffer: collections.deque = collections.deque(maxlen=cfg.reuse)
        self.precision_probe: dict[str, float] = {}  # seconds per minibatch step, when "auto" timed them
        # bf16 only where rewards are clipped (Atari): a value head of unclipped returns in bf16
        # would round them by up to 1 part in 256.
        self.autocast = use_bf16(cfg.bf16, self.device, self.model.image and spec.clip_rewards,
                                 self._bf16_trains_faster)
        # Under bf16 autocast the input is stored in bf16: half the memory, and no
        # cast of the whole batch at every pass's forward.
        self.input_dtype = torch.bfloat16 if self.autocast and self.model.image else torch.float32
        self._spare_input: Optional[torch.Tensor] = None  # the model input of the batch that left the buffer
        self.acted_version = 0  # the updates up to the end of the last train_on: the weights actors act on
        # torch.compile of the forward and losses. Why: on a GPU the learner's step of this
        # small model is bound by its few hundred kernel launches; compiled, they fuse, and
        # "reduce-overhead" replays each step as one CUDA graph. The entropy
        # weight goes in as a tensor: a float would be a constant of the graph, recompiled
        # at each new value of its schedule.
        self._compiled: Optional[Callable[..., dict[str, torch.Tensor]]] = None
        self._entropy_coef = torch.zeros((), device=self.device)
        if cfg.compile:
            self._compiled = torch.compile(self._forward_losses, dynamic=False,
                                           mode="reduce-overhead" if self.device.type == "cuda" else None)
        self.trained_ahead = False  # train_ahead took the next train_on's passes over older batches

    def _bf16_trains_faster(self) -> bool:
        self.precision_probe = time_training_step(self.model, self.spec.obs_shape, self.cfg.batch_size //
                                                  self.cfg.minibatches, self.cfg.ae_fraction)
        return self.precision_probe["bf16"] < self.precision_probe["float32"]

    def precision(self) -> str:
        """What the model runs in, and why (for the learner's log)."""
        said = "bf16 autocast" if self.autocast else "float32"
        if self.precision_probe:
            said += " (bf16: {bf16:.1f} ms, float32: {float32:.1f} ms a minibatch step)".format(
                **{k: v * 1e3 for k, v in self.precision_probe.items()})
        return said

    def observations(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[T+1, B, *obs_shape] on the device; image stacks rebuilt from frames."""
        if self.spec.frame_stack:
            return rebuild_stacks(batch["obs"], batch["context"], batch["dones"])
        return batch["obs"]

    def train_on(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Add a new batch to the reuse buffer and take one update on each batch in it,
        oldest first (those that `train_ahead` already took are not taken again),
        and `epochs` on the new one. Returns the new batch's last stats.

        Why epochs: the passes over the new batch are the ones the actors' next
        fragment is acted on; with reuse the other passes of a batch come in later
        steps, after the actors have acted on a policy that saw it once. On Pong 4
        epochs and no reuse learned faster per agent step than 4-fold reuse, at the
        same 32 optimiser steps (docs/decisions.md)."""
        older = [] if self.trained_ahead else self._staying()
        if len(self.reuse_buffer) == self.reuse_buffer.maxlen:  # the oldest batch leaves: recycle its input
            self._spare_input = self.reuse_buffer[0].pop("model_input", None)
            self.reuse_buffer[0].pop("targets", None)  # it holds the same input
        self.reuse_buffer.append(batch)
        self.trained_ahead = False
        for b in older:
            self.update(b)
        for _ in range(self.cfg.epochs):
            stats = self.update(batch)
        self.acted_version = self.updates
        return stats

    def train_ahead(self, before_each_pass: Callable[[int, int], None] = lambda i, n: None) -> None:
        """Take now the updates of the next `train_on` that do not need its new batch:
        one on each batch that stays in the reuse buffer when the next one comes.

        Why: at policy lag 0 (sync flow) the actors act on the weights of the
        last train_on while the learner would wait for their fragments, and then
        train_on spends reuse - 1 of its reuse passes on older batches anyway. Run
        here, in that wait, they overlap the acting. The updates are the same, in
        the same order, from the same weights, as train_on alone would take them:
        the actors still act on the weights published after the last train_on
        (tests/test_trainer.py checks the weights are equal). `before_each_pass(i, n)`
        is called before the i-th of these n passes (the learner sets its threads there)."""
        if self.trained_ahead:
            return
        self._scheduled_learning_rate()
        staying = self._staying()
        for i, b in enumerate(staying):
            before_each_pass(i, len(staying))
            self.update(b)
        self.trained_ahead = True

    def _staying(self) -> list[dict[str, torch.Tensor]]:
        """The batches that stay in the reuse buffer when the next one is added, oldest first."""
        keep = self.cfg.reuse - 1
        return list(self.reuse_buffer)[max(0, len(self.reuse_buffer) - keep):] if keep else []

    def _scheduled_learning_rate(self) -> None:
        if self.cfg.lr_schedule:
            self.set_learning_rate(self.cfg.learning_rate_at(self.fresh_steps))

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """train_on, plus what was trained summed over every rank (for metrics; the
        fresh steps are added to `fresh_steps`, the lr schedule's clock). The policy
        lag is counted from the version actors act on (`acted_version`)."""
        T, B = batch["actions"].shape
        lag_sum = float((self.acted_version - batch["versions"]).sum()) if "versions" in batch else 0.0
        self._scheduled_learning_rate()
        out = self.train_on(batch)
        fresh, trained, lag, cols = distributed.sum_across(
            [float(batch.get("fresh_steps", 0)), float(T * B), lag_sum, float(B)], self.device)
        self.fresh_steps += int(fresh)
        return out | {"trained_steps": trained, "policy_lag": lag / max(cols, 1.0)}

    @torch.no_grad()
    def model_input(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The batch's observations as the model reads them, [(T+1) * B, ...] in
        time-major order (sample (t, b) is row t * B + b): stacks rebuilt and
        converted to float once, then kept in the batch for as long as the reuse
        buffer holds it. Why: on CPU the uint8 -> float conversion costs about as
        much as the encoder's forward pass; done per pass and per minibatch, it
        took a quarter of the learner's time at reuse 4 (bench/learner.py). It
        is written into the buffer of the batch that last left the reuse buffer."""
        x = batch.get("model_input")
        if x is None:
            obs = self.observations(batch)
            spare, self._spare_input = self._spare_input, None
            x = batch["model_input"] = self.model.prepare(obs.reshape(-1, *obs.shape[2:]), spare, self.input_dtype)
        return x

    @torch.no_grad()
    def targets(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Everything a pass over the batch needs, computed once and without
        gradient: the model input, the reference policy's logits (APPO: the
        target network; IMPALA: the learner's policy as the pass starts) and its
        values, and from them the V-trace targets and advantages of the whole
        trajectories. All [T, B, ...] but the input (see model_input).

        For APPO they are kept in the batch until the target network changes. Why:
        they depend only on the batch and the target's weights, and the preset's
        target changes every 16 optimiser steps, every second pass of 8, so half its
        forward passes over the whole batch computed what the last pass had. The
        weights are the same, bit for bit (tests/test_trainer.py)."""
        cfg = self.cfg
        cached = batch.get("targets")
        if self.target is not None and cached is not None and cached[0] == self.target_loads:
            return cached[1]
        x = self.model_input(batch)
        T, B = batch["actions"].shape
        ref = self.target if self.target is not None else self.model
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            ref_logits, ref_values, _ = ref.forward_prepared(x, with_recon=False)
        ref_logits = ref_logits.float().view(T + 1, B, -1)[:T]
        ref_values = ref_values.float().view(T + 1, B)
        rewards = batch["rewards"].float()
        if self.spec.clip_rewards:
            rewards = rewards.clamp(-1.0, 1.0)
        if "bootstrap" in batch:  # time-limit cuts: gamma * V(final observation), learned with the last reward
            rewards = rewards + batch["bootstrap"].float()
        ends = batch["dones"].float()
        if "life_lost" in batch:  # a lost life ends what is learned, not the game (life_loss_terminal)
            ends = torch.maximum(ends, batch["life_lost"].float())
        discounts = cfg.gamma * (1.0 - ends)
        vt = losses.vtrace_targets(batch["logits"], ref_logits, batch["actions"], rewards, discounts,
                                   ref_values[:T], ref_values[T], rho_bar=cfg.rho_bar, c_bar=cfg.c_bar,
                                   lambda_=cfg.vtrace_lambda, normalize_advantages=cfg.normalize_advantages)
        prep = {"x": x, "actions": batch["actions"], "behaviour_logits": batch["logits"],
                "ref_logits": ref_logits, "vs": vt.vs, "adv": vt.pg_advantages, "rhos": vt.rhos}
        if self.target is not None:
            batch["targets"] = (self.target_loads, prep)
        return prep

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One pass over a batch: targets once, then `minibatches` optimiser steps,
        each on a random share of the batch's samples. Why: sample efficiency on
        Atari comes from optimiser steps per agent step (PPO's epochs x
        minibatches); a big batch taken in one step learns per sample several
        times slower."""
        T, B = batch["actions"].shape
        prep = self.targets(batch)
        offset, columns = 0, B
        if distributed.active():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
            offset, columns = rank * B, world * B  # every rank holds an equal share of the columns
        parts = minibatch_indices(T, B, min(self.cfg.minibatches, T), self.cfg.seed * 1_000_003 + self.updates,
                                  offset, columns)
        # All the pass's indices in one copy to the device, and its statistics read back
        # in one: on a GPU each read of a value (float()) and each copy from pageable
        # memory waits for the device to finish, so the host could not queue the next
        # step's kernels while the device ran this one (11 waits a step before).
        sizes = [len(t_idx) for t_idx, _ in parts]
        idx = torch.stack([torch.cat([t for t, _ in parts]), torch.cat([b for _, b in parts])]).to(self.device)
        stats: dict[str, torch.Tensor] = {}
        kl = torch.zeros((), device=self.device)
        for t_idx, b_idx in idx.split(sizes, dim=1):
            stats = self._step(prep, t_idx, b_idx)
            kl = kl + stats["kl"] / len(parts)
        stats["mean_rho"] = prep["rhos"].mean()
        *read, kl_mean = torch.stack([v.float() for v in stats.values()] + [kl]).tolist()
        if self.cfg.lr_kl_target > 0:
            self._adapt_lr(kl_mean)
        return dict(zip(stats, read)) | {"learning_rate": self.opt.param_groups[0]["lr"],
                                         "entropy_coef": self.cfg.entropy_coef_at(self.fresh_steps)}

    def _adapt_lr(self, kl: float) -> None:
        """rl_games' adaptive schedule: the largest step size that keeps the policy
        within lr_kl_target of the data it learns from. Why: a fixed lr small enough
        for late training wastes the early, sparse-signal phase of Atari games.
        The KL is averaged over ranks so every rank keeps the same lr."""
        if distributed.active():
            kl = distributed.sum_across([kl], self.device)[0] / torch.distributed.get_world_size()
        lr = self.opt.param_groups[0]["lr"]
        if kl > 2.0 * self.cfg.lr_kl_target:
            lr = max(lr / 1.5, 1e-6)
        elif kl < 0.5 * self.cfg.lr_kl_target:
            lr = min(lr * 1.5, 1e-2)
        self.set_learning_rate(lr)

    def set_learning_rate(self, lr: float) -> None:
        for g in self.opt.param_groups:
            g["lr"] = lr

    def _forward_losses(self, x: torch.Tensor, actions: torch.Tensor, adv: torch.Tensor, vs: torch.Tensor,
                        behaviour_logits: torch.Tensor, ref_logits: torch.Tensor,
                        entropy_coef: float | torch.Tensor) -> dict[str, torch.Tensor]:
        """The differentiable part of a minibatch step: the model's forward and the
        losses (with the reconstruction). A method of its own so that `compile`
        hands torch.compile exactly this, and nothing that reads the host's state."""
        cfg = self.cfg
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            logits, values, recon = self.model.forward_prepared(x, with_recon=cfg.latent_ae,
                                                                recon_fraction=cfg.ae_fraction)
        logits, values = logits.float(), values.float()
        common = dict(value_coef=cfg.value_coef, entropy_coef=entropy_coef)
        if self.target is not None:
            out = losses.appo_loss(logits, values, actions, adv, vs, behaviour_logits, ref_logits,
                                   clip_eps=cfg.clip_eps, kl_coef=cfg.kl_coef, **common)
        else:
            out = losses.impala_loss(logits, values, actions, adv, vs, ref_logits, **common)
        if recon is not None:
            out["recon_loss"] = recon.detach().float()
            out["total"] = out["total"] + cfg.ae_coef * recon.float()
        return out

    def _step(self, prep: dict[str, torch.Tensor], t_idx: torch.Tensor,
              b_idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimiser step on the samples (t_idx[i], b_idx[i]) of a prepared batch;
        its statistics stay on the device (see update)."""
        s = {k: v[t_idx, b_idx] for k, v in prep.items() if k not in ("rhos", "x")}
        x = take_rows(prep["x"], t_idx * prep["actions"].shape[1] + b_idx)
        args = (x, s["actions"], s["adv"], s["vs"], s["behaviour_logits"], s["ref_logits"])
        coef = self.cfg.entropy_coef_at(self.fresh_steps)
        self.opt.zero_grad(set_to_none=True)  # before the forward: the last step's gradients may sit in graph memory
        if self._compiled is None:
            out = self._forward_losses(*args, coef)
        else:
            # A CUDA graph's outputs live in its own memory and the next replay writes over
            # them: the statistics are copied out, `total` is used (backward) before then.
            torch.compiler.cudagraph_mark_step_begin()
            out = self._compiled(*args, self._entropy_coef.fill_(coef))
            out = {k: v if k == "total" else v.clone() for k, v in out.items()}
        out["total"].backward()
        if distributed.active():
            distributed.average_gradients(self.model)
        out["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.opt.step()
        self.updates += 1
        if self.target is not None and self.updates % self.cfg.target_update_interval == 0:
            self.target.load_state_dict(self.model.state_dict())
            self.target_loads += 1
        return {k: v.detach() for k, v in out.items()}

    def join_rank0(self) -> None:
        """Start a data-parallel rank exactly where rank 0 is: its weights, target
        network, optimiser state, counters, learning rate and precision. Why all of
        them: after a resume rank 0 holds a checkpoint and a follower a fresh trainer,
        and `bf16: auto` times each rank's own machine; ranks that differ in any of
        these drift apart while they average the same gradients."""
        distributed.broadcast_model(self.model)
        if self.target is not None:
            distributed.broadcast_model(self.target)
            self.target_loads += 1
        distributed.broadcast_optimizer(self.opt)
        updates, acted, fresh, lr, bf16 = distributed.broadcast_values(
            [self.updates, self.acted_version, self.fresh_steps, self.opt.param_groups[0]["lr"],
             float(self.autocast)], self.device)
        self.updates, self.acted_version, self.fresh_steps = int(updates), int(acted), int(fresh)
        self.set_learning_rate(lr)
        self.autocast = bool(bf16)
        self.input_dtype = torch.bfloat16 if self.autocast and self.model.image else torch.float32

    def state(self) -> dict:
        """Everything a checkpoint needs (plain tensors and numbers: loads with weights_only=True)."""
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "target": self.target.state_dict() if self.target is not None else None,
                "updates": self.updates, "fresh_steps": self.fresh_steps}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        for g in self.opt.param_groups:  # a checkpoint from before fused Adam carries fused=None
            g["fused"] = self.fused or None
        if self.target is not None and state.get("target") is not None:
            self.target.load_state_dict(state["target"])
            self.target_loads += 1
        self.updates = self.acted_version = int(state["updates"])
        self.trained_ahead = False
        self.fresh_steps = int(state.get("fresh_steps", state.get("fresh_trained_steps", 0)))

