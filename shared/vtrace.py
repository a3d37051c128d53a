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
    # On a CPU the plain recursion: it costs about 1 % of a pass there, and it keeps every
    # earlier run of a seed repeatable step for step (the paired comparisons rely on it).
    chunk = 1 if deltas.device.type == "cpu" else 32
    vs = backward_scan(deltas, discounts * cs, torch.zeros_like(bootstrap), chunk) + values
    vs_tp1 = torch.cat([vs[1:], bootstrap.unsqueeze(0)], dim=0)
    pg_rhos = rhos.clamp(max=rho_bar if pg_rho_bar is None else pg_rho_bar)
    return VTrace(vs=vs, pg_advantages=pg_rhos * (rewards + discounts * vs_tp1 - values), rhos=rhos)


def backward_scan(x: torch.Tensor, a: torch.Tensor, last: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """out[t] = x[t] + a[t] * out[t+1] for t < T, with out[T] = `last`; all [T, ...].

    Why not the plain loop over t: on a GPU each of its 3T small operators is a
    kernel launch, and the learner's steps there are bound by launches, not by
    the GPU. Here each chunk of L steps
    is solved at once: out[t] = sum_k W[t, k] x[k] + (prod of a over t..L-1) out[L],
    where W[t, k] is the product of a over t..k-1 for k >= t (1 at k = t, 0 for
    k < t), one cumulative product over an [L, L, ...] copy of a. A chunk of 32
    keeps that copy small and the products short, so each stays as accurate as
    the loop's; the chunks themselves run backwards, about a tenth of the operators.
    `chunk` 1 is the plain loop."""
    T = x.shape[0]
    out = torch.empty_like(x)
    if chunk == 1:  # the plain loop, operator for operator
        for t in range(T - 1, -1, -1):
            last = x[t] + a[t] * last
            out[t] = last
        return out
    for end in range(T, 0, -chunk):
        start = max(0, end - chunk)
        L = end - start
        below = torch.ones(L, L, dtype=torch.bool, device=x.device).tril(-1)  # [t, k]: k < t
        below = below.view(L, L, *([1] * (x.dim() - 1)))
        a_chunk = a[start:end]
        prods = a_chunk.unsqueeze(0).expand(L, *a_chunk.shape).masked_fill(below, 1.0).cumprod(dim=1)
        weights = torch.cat([torch.ones_like(prods[:, :1]), prods[:, :-1]], dim=1).masked_fill(below, 0.0)
        out[start:end] = (weights * x[start:end].unsqueeze(0)).sum(dim=1) + prods[:, -1] * last
        last = out[start]
    return out
