"""The learner's losses: IMPALA's V-trace policy gradient and IMPACT's APPO.

Targets and losses are split on purpose. `vtrace_targets` runs once per pass
over a batch, without gradient, on whole trajectories (V-trace needs them);
the losses then run on minibatches of single samples drawn from anywhere in
the batch, as PPO does. Each loss returns a dict of scalar tensors; `total`
is what gets differentiated.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from shared.vtrace import VTrace, vtrace


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


@torch.no_grad()
def vtrace_targets(behaviour_logits: torch.Tensor, target_logits: torch.Tensor, actions: torch.Tensor,
                   rewards: torch.Tensor, discounts: torch.Tensor, values: torch.Tensor, bootstrap: torch.Tensor, *,
                   rho_bar: float, c_bar: float, lambda_: float = 1.0,
                   normalize_advantages: bool = False) -> VTrace:
    """V-trace value targets and policy-gradient advantages of whole trajectories
    [T, B], for the target policy `target_logits` (IMPALA: the learner's policy;
    APPO: the target network) with its `values`; advantages standardized over
    the global batch if asked."""
    vt = vtrace(action_logp(behaviour_logits, actions), action_logp(target_logits, actions), rewards, discounts,
                values, bootstrap, rho_bar, c_bar, lambda_=lambda_)
    if normalize_advantages:
        vt.pg_advantages = standardize(vt.pg_advantages)
    return vt


def clipped_surrogate(ratio: torch.Tensor, adv: torch.Tensor, eps: float) -> torch.Tensor:
    """PPO's pessimistic objective min(r A, clip(r, 1-eps, 1+eps) A), per element."""
    return torch.minimum(ratio * adv, ratio.clamp(1.0 - eps, 1.0 + eps) * adv)


def impala_loss(logits: torch.Tensor, values: torch.Tensor, actions: torch.Tensor, adv: torch.Tensor,
                vs: torch.Tensor, ref_logits: torch.Tensor, *, value_coef: float,
                entropy_coef: float) -> dict[str, torch.Tensor]:
    """V-trace actor-critic on samples; `ref_logits` is the policy the targets
    were computed for (reported as KL, not trained on)."""
    pg = -(action_logp(logits, actions) * adv).mean()
    return _finish(pg, values, vs, logits, ref_logits, value_coef, entropy_coef)


def appo_loss(logits: torch.Tensor, values: torch.Tensor, actions: torch.Tensor, adv: torch.Tensor,
              vs: torch.Tensor, behaviour_logits: torch.Tensor, target_logits: torch.Tensor, *, clip_eps: float,
              kl_coef: float, value_coef: float, entropy_coef: float) -> dict[str, torch.Tensor]:
    """IMPACT (Luo et al. 2020) on samples: a clipped surrogate on the ratio
    current/target network, with the target/behaviour ratio, clipped to [0, 2],
    as a per-sample weight (as RLlib's APPO); optional KL(target || current) penalty."""
    logp = action_logp(logits, actions)
    target_logp = action_logp(target_logits, actions)
    ratio = torch.exp(logp - target_logp)
    is_weight = torch.exp(target_logp - action_logp(behaviour_logits, actions)).clamp(0.0, 2.0).detach()
    pg = -(is_weight * clipped_surrogate(ratio, adv, clip_eps)).mean()
    out = _finish(pg, values, vs, logits, target_logits, value_coef, entropy_coef)
    if kl_coef > 0:
        out["total"] = out["total"] + kl_coef * kl_divergence(target_logits, logits).mean()
    out["clip_frac"] = ((ratio - 1.0).abs() > clip_eps).float().mean().detach()
    return out


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per element of the leading dims."""
    p_logp = torch.log_softmax(p_logits, -1)
    return (p_logp.exp() * (p_logp - torch.log_softmax(q_logits, -1))).sum(-1)


def _finish(pg: torch.Tensor, values: torch.Tensor, vs: torch.Tensor, logits: torch.Tensor,
            ref_logits: torch.Tensor, value_coef: float, entropy_coef: float) -> dict[str, torch.Tensor]:
    v_loss = 0.5 * F.mse_loss(values, vs)
    ent = entropy(logits).mean()
    total = pg + value_coef * v_loss - entropy_coef * ent
    return {"total": total, "policy_loss": pg.detach(), "value_loss": v_loss.detach(), "entropy": ent.detach(),
            "explained_variance": explained_variance(values.detach(), vs),
            # how far this pass has moved the policy from the one its targets were computed for
            "kl": kl_divergence(ref_logits, logits.detach()).mean()}


def explained_variance(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - Var(target - pred) / Var(target): 1 is a perfect critic, 0 one that only
    knows the mean. A critic stuck near 0 leaves the advantages as reward noise,
    so the policy cannot learn; this is the first number to read when it does not."""
    var = target.var(unbiased=False)
    return torch.where(var > 1e-8, 1.0 - (target - pred).var(unbiased=False) / var.clamp_min(1e-8),
                       torch.zeros((), device=target.device))
