"""The learner's losses: IMPALA's V-trace policy gradient and IMPACT's APPO.

Both return a dict of scalar tensors; `total` is what gets differentiated.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from shared.vtrace import vtrace


def action_logp(logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, dim=-1).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def standardize(adv: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance over the *global* batch (all data-parallel ranks).

    Why: with sparse rewards (Pong's +-1 a few times a minute) raw V-trace
    advantages are ~0.01-0.1, so the policy gradient drowns under the value and
    entropy terms and the shared global-norm clip; standardizing gives every
    batch the same policy-gradient scale (as PPO implementations do). Global
    statistics keep N ranks equal to one device on the whole batch.
    """
    stats = torch.stack([adv.sum(), (adv * adv).sum(), torch.tensor(float(adv.numel()), device=adv.device)])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(stats)
    mean = stats[0] / stats[2]
    var = (stats[1] / stats[2] - mean * mean).clamp_min(0.0)
    return (adv - mean) / (var.sqrt() + 1e-8)


def clipped_surrogate(ratio: torch.Tensor, adv: torch.Tensor, eps: float) -> torch.Tensor:
    """PPO's pessimistic objective min(r A, clip(r, 1-eps, 1+eps) A), per element."""
    return torch.minimum(ratio * adv, ratio.clamp(1.0 - eps, 1.0 + eps) * adv)


def impala_loss(logits: torch.Tensor, values: torch.Tensor, bootstrap: torch.Tensor, actions: torch.Tensor,
                behaviour_logits: torch.Tensor, rewards: torch.Tensor, discounts: torch.Tensor, *,
                rho_bar: float, c_bar: float, value_coef: float, entropy_coef: float,
                normalize_advantages: bool = False) -> dict[str, torch.Tensor]:
    """V-trace actor-critic: advantages use the current policy as the target policy."""
    logp = action_logp(logits, actions)
    vt = vtrace(action_logp(behaviour_logits, actions), logp.detach(), rewards, discounts,
                values.detach(), bootstrap.detach(), rho_bar, c_bar)
    adv = standardize(vt.pg_advantages) if normalize_advantages else vt.pg_advantages
    pg = -(logp * adv).mean()
    return _finish(pg, values, vt.vs, logits, value_coef, entropy_coef, vt.rhos)


def appo_loss(logits: torch.Tensor, values: torch.Tensor, bootstrap: torch.Tensor, actions: torch.Tensor,
              behaviour_logits: torch.Tensor, target_logits: torch.Tensor, rewards: torch.Tensor,
              discounts: torch.Tensor, *, rho_bar: float, c_bar: float, clip_eps: float, kl_coef: float,
              value_coef: float, entropy_coef: float, normalize_advantages: bool = False) -> dict[str, torch.Tensor]:
    """IMPACT (Luo et al. 2020): V-trace with the *target network* as target
    policy, a clipped surrogate on the ratio current/target, and the
    target/behaviour ratio, clipped to [0, 2], as a per-sample weight (as RLlib's APPO)."""
    logp = action_logp(logits, actions)
    target_logp = action_logp(target_logits, actions)
    behaviour_logp = action_logp(behaviour_logits, actions)
    vt = vtrace(behaviour_logp, target_logp, rewards, discounts, values.detach(), bootstrap.detach(), rho_bar, c_bar)
    ratio = torch.exp(logp - target_logp)
    is_weight = torch.exp(target_logp - behaviour_logp).clamp(0.0, 2.0).detach()
    adv = standardize(vt.pg_advantages) if normalize_advantages else vt.pg_advantages
    pg = -(is_weight * clipped_surrogate(ratio, adv, clip_eps)).mean()
    out = _finish(pg, values, vt.vs, logits, value_coef, entropy_coef, vt.rhos)
    if kl_coef > 0:
        kl = kl_divergence(target_logits, logits).mean()
        out["kl"] = kl.detach()
        out["total"] = out["total"] + kl_coef * kl
    out["clip_frac"] = ((ratio - 1.0).abs() > clip_eps).float().mean().detach()
    return out


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per element of the leading dims."""
    p_logp = torch.log_softmax(p_logits, -1)
    return (p_logp.exp() * (p_logp - torch.log_softmax(q_logits, -1))).sum(-1)


def _finish(pg: torch.Tensor, values: torch.Tensor, vs: torch.Tensor, logits: torch.Tensor, value_coef: float,
            entropy_coef: float, rhos: torch.Tensor) -> dict[str, torch.Tensor]:
    v_loss = 0.5 * F.mse_loss(values, vs)
    ent = entropy(logits).mean()
    total = pg + value_coef * v_loss - entropy_coef * ent
    return {"total": total, "policy_loss": pg.detach(), "value_loss": v_loss.detach(), "entropy": ent.detach(),
            "mean_rho": rhos.mean(), "explained_variance": explained_variance(values.detach(), vs)}


def explained_variance(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - Var(target - pred) / Var(target): 1 is a perfect critic, 0 one that only
    knows the mean. A critic stuck near 0 leaves the advantages as reward noise,
    so the policy cannot learn; this is the first number to read when it does not."""
    var = target.var(unbiased=False)
    return torch.where(var > 1e-8, 1.0 - (target - pred).var(unbiased=False) / var.clamp_min(1e-8),
                       torch.zeros((), device=target.device))
