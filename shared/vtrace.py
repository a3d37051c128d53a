"""V-trace targets and policy-gradient advantages (IMPALA, Espeholt et al. 2018, eq. 1).

All tensors are time-major [T, B]; computed without gradient on whatever
device the learner trains on.
"""
from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class VTrace:
    vs: torch.Tensor  # value targets v_s, [T, B]
    pg_advantages: torch.Tensor  # rho_s * (r_s + gamma v_{s+1} - V(x_s)), [T, B]
    rhos: torch.Tensor  # unclipped importance ratios pi/mu, [T, B]


@torch.no_grad()
def vtrace(behaviour_logp: torch.Tensor, target_logp: torch.Tensor, rewards: torch.Tensor,
           discounts: torch.Tensor, values: torch.Tensor, bootstrap: torch.Tensor,
           rho_bar: float = 1.0, c_bar: float = 1.0, pg_rho_bar: float | None = None,
           lambda_: float = 1.0) -> VTrace:
    """discounts = gamma * (1 - done); values = V(x_t) for t < T; bootstrap = V(x_T).

    lambda_ < 1 (IMPALA paper, remark 5) scales the traces c_s: on-policy the
    targets v_s become lambda-returns, so v_s - V(x_s) is GAE's advantage. It is
    the usual bias-for-variance trade that lets a young critic give useful
    advantages on sparse-reward games."""
    rhos = torch.exp(target_logp - behaviour_logp)
    clipped_rhos = rhos.clamp(max=rho_bar)
    cs = lambda_ * rhos.clamp(max=c_bar)
    values_tp1 = torch.cat([values[1:], bootstrap.unsqueeze(0)], dim=0)
    deltas = clipped_rhos * (rewards + discounts * values_tp1 - values)
    acc = torch.zeros_like(bootstrap)
    out = torch.empty_like(values)
    for t in range(values.shape[0] - 1, -1, -1):
        acc = deltas[t] + discounts[t] * cs[t] * acc
        out[t] = acc
    vs = out + values
    vs_tp1 = torch.cat([vs[1:], bootstrap.unsqueeze(0)], dim=0)
    pg_rhos = rhos.clamp(max=rho_bar if pg_rho_bar is None else pg_rho_bar)
    return VTrace(vs=vs, pg_advantages=pg_rhos * (rewards + discounts * vs_tp1 - values), rhos=rhos)
