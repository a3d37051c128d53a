"""The optimiser side of the learner: pure torch, no NATS, so it is testable alone.

One `update` = forward over the batch (plus the target network for APPO),
V-trace, loss, backward, gradient clip, Adam step. With several processes
(torch.distributed initialised), gradients are averaged across them before
the step, so N devices on N shards of a batch equal one device on all of it.
"""
from __future__ import annotations

import collections
import copy
from typing import Optional

import torch

from services.learner import distributed
from shared import losses
from shared.config import RunConfig
from shared.envs import EnvSpec
from shared.fragment import rebuild_stacks
from shared.models import ActorCritic, build_model

BATCH_KEYS = ("obs", "actions", "logits", "rewards", "dones")


class Trainer:
    def __init__(self, cfg: RunConfig, spec: EnvSpec, device: torch.device | str = "cpu",
                 model: Optional[ActorCritic] = None):
        self.cfg, self.spec, self.device = cfg, spec, torch.device(device)
        self.model = (model or build_model(cfg, spec)).to(self.device)
        self.target: Optional[ActorCritic] = None
        if cfg.algorithm == "appo":
            self.target = copy.deepcopy(self.model).requires_grad_(False)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps)
        self.updates = 0
        # IMPACT's circular buffer: each batch stays for `reuse` steps, trained once per step.
        self.reuse_buffer: collections.deque = collections.deque(maxlen=cfg.reuse)
        self.autocast = self.device.type == "cuda"

    def observations(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[T+1, B, *obs_shape] on the device; image stacks rebuilt from frames."""
        if self.spec.frame_stack:
            return rebuild_stacks(batch["obs"], batch["context"], batch["dones"])
        return batch["obs"]

    def train_on(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Add a new batch to the reuse buffer and take one update on each batch in it."""
        self.reuse_buffer.append(batch)
        stats: dict[str, float] = {}
        for b in list(self.reuse_buffer):
            stats = self.update(b)
        return stats

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """train_on, plus what was trained summed over every rank (for metrics)."""
        T, B = batch["actions"].shape
        lag_sum = float((self.updates - batch["versions"]).sum()) if "versions" in batch else 0.0
        out = self.train_on(batch)
        fresh, trained, lag, cols = distributed.sum_across(
            [float(batch.get("fresh_steps", 0)), float(T * B), lag_sum, float(B)], self.device)
        return out | {"fresh_steps": fresh, "trained_steps": trained, "policy_lag": lag / max(cols, 1.0)}

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        obs = self.observations(batch)
        T, B = batch["actions"].shape
        x = self.model.prepare(obs.reshape((T + 1) * B, *obs.shape[2:]))  # once, for model and target
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            logits, values, recon = self.model.forward_prepared(x, with_recon=cfg.latent_ae,
                                                                recon_fraction=cfg.ae_fraction)
        logits = logits.float().view(T + 1, B, -1)
        values = values.float().view(T + 1, B)
        rewards = batch["rewards"].float()
        if self.spec.clip_rewards:
            rewards = rewards.clamp(-1.0, 1.0)
        discounts = cfg.gamma * (1.0 - batch["dones"].float())
        common = dict(rho_bar=cfg.rho_bar, c_bar=cfg.c_bar, value_coef=cfg.value_coef, entropy_coef=cfg.entropy_coef,
                      normalize_advantages=cfg.normalize_advantages)
        if self.target is not None:
            with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                target_logits, _, _ = self.target.forward_prepared(x[:T * B], with_recon=False)
            out = losses.appo_loss(logits[:T], values[:T], values[T], batch["actions"], batch["logits"],
                                   target_logits.float().view(T, B, -1), rewards, discounts,
                                   clip_eps=cfg.clip_eps, kl_coef=cfg.kl_coef, **common)
        else:
            out = losses.impala_loss(logits[:T], values[:T], values[T], batch["actions"], batch["logits"],
                                     rewards, discounts, **common)
        if recon is not None:
            out["recon_loss"] = recon.detach().float()
            out["total"] = out["total"] + cfg.ae_coef * recon.float()
        return out

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        out = self.loss(batch)
        self.opt.zero_grad(set_to_none=True)
        out["total"].backward()
        if distributed.active():
            distributed.average_gradients(self.model)
        out["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.opt.step()
        self.updates += 1
        if self.target is not None and self.updates % self.cfg.target_update_interval == 0:
            self.target.load_state_dict(self.model.state_dict())
        return {k: float(v.detach()) for k, v in out.items()}

    def state(self) -> dict:
        """Everything a checkpoint needs (plain tensors and numbers: loads with weights_only=True)."""
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "target": self.target.state_dict() if self.target is not None else None,
                "updates": self.updates}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        if self.target is not None and state.get("target") is not None:
            self.target.load_state_dict(state["target"])
        self.updates = int(state["updates"])

