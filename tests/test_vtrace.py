"""V-trace against a plain loop over the paper's sum (IMPALA eq. 1), not its recursion."""
import numpy as np
import pytest
import torch

from shared.vtrace import backward_scan, vtrace


def reference(log_rhos, rewards, discounts, values, bootstrap, rho_bar, c_bar, lam=1.0):
    """v_s = V(x_s) + sum_{t>=s} (prod_{i<t} discount_i c_i) rho_t (r_t + discount_t V(x_{t+1}) - V(x_t)),
    with c_i = lam * min(c_bar, rho_i)."""
    T, B = rewards.shape
    rhos = np.exp(log_rhos)
    crho, cs = np.minimum(rhos, rho_bar), lam * np.minimum(rhos, c_bar)
    v_next = np.concatenate([values[1:], bootstrap[None]], 0)
    vs = np.zeros((T, B))
    for b in range(B):
        for s in range(T):
            total, coef = values[s, b], 1.0
            for t in range(s, T):
                delta = crho[t, b] * (rewards[t, b] + discounts[t, b] * v_next[t, b] - values[t, b])
                total += coef * delta
                coef *= discounts[t, b] * cs[t, b]
            vs[s, b] = total
    vs_next = np.concatenate([vs[1:], bootstrap[None]], 0)
    pg = crho * (rewards + discounts * vs_next - values)
    return vs, pg


@pytest.mark.parametrize("rho_bar,c_bar,lam", [(1.0, 1.0, 1.0), (0.5, 0.9, 1.0), (2.0, 1.0, 1.0),
                                               (100.0, 100.0, 1.0), (1.0, 1.0, 0.95), (0.5, 0.9, 0.5)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vtrace_matches_reference(rho_bar, c_bar, lam, seed):
    rng = np.random.default_rng(seed)
    T, B = 7, 5
    behaviour = rng.normal(size=(T, B))
    target = behaviour + rng.normal(scale=0.7, size=(T, B))
    rewards = rng.normal(size=(T, B))
    dones = rng.random((T, B)) < 0.2
    discounts = 0.97 * (1 - dones)
    values, bootstrap = rng.normal(size=(T, B)), rng.normal(size=B)
    vs_ref, pg_ref = reference(target - behaviour, rewards, discounts, values, bootstrap, rho_bar, c_bar, lam)
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    out = vtrace(t(behaviour), t(target), t(rewards), t(discounts), t(values), t(bootstrap), rho_bar, c_bar,
                 lambda_=lam)
    np.testing.assert_allclose(out.vs.numpy(), vs_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out.pg_advantages.numpy(), pg_ref, rtol=1e-10, atol=1e-10)


def test_on_policy_vtrace_is_n_step_return():
    """With pi == mu and no clipping the targets are the discounted n-step returns."""
    T, B, g = 6, 3, 0.9
    rng = np.random.default_rng(3)
    rewards, values, bootstrap = rng.normal(size=(T, B)), rng.normal(size=(T, B)), rng.normal(size=B)
    z = torch.zeros(T, B, dtype=torch.float64)
    out = vtrace(z, z, torch.tensor(rewards), torch.full((T, B), g, dtype=torch.float64), torch.tensor(values),
                 torch.tensor(bootstrap))
    ret = bootstrap.copy()
    expected = np.zeros((T, B))
    for s in reversed(range(T)):
        ret = rewards[s] + g * ret
        expected[s] = ret
    np.testing.assert_allclose(out.vs.numpy(), expected, rtol=1e-10)


def test_on_policy_lambda_targets_are_gae():
    """On-policy, v_s - V(x_s) is GAE(gamma, lambda)'s advantage."""
    T, B, g, lam = 8, 4, 0.99, 0.9
    rng = np.random.default_rng(4)
    rewards, values, bootstrap = rng.normal(size=(T, B)), rng.normal(size=(T, B)), rng.normal(size=B)
    z = torch.zeros(T, B, dtype=torch.float64)
    out = vtrace(z, z, torch.tensor(rewards), torch.full((T, B), g, dtype=torch.float64), torch.tensor(values),
                 torch.tensor(bootstrap), lambda_=lam)
    v_next = np.concatenate([values[1:], bootstrap[None]], 0)
    deltas = rewards + g * v_next - values
    gae, acc = np.zeros((T, B)), np.zeros(B)
    for s in reversed(range(T)):
        acc = deltas[s] + g * lam * acc
        gae[s] = acc
    np.testing.assert_allclose(out.vs.numpy() - values, gae, rtol=1e-10)


@pytest.mark.parametrize("T", [1, 31, 32, 33, 70])
def test_backward_scan_equals_the_recursion_across_chunks(T):
    """The chunked scan V-trace runs on equals out[t] = x[t] + a[t] out[t+1] step by step,
    also where T is not a multiple of the chunk and where an episode ends (a = 0)."""
    g = torch.Generator().manual_seed(T)
    x = torch.randn(T, 5, dtype=torch.float64, generator=g)
    a = torch.rand(T, 5, dtype=torch.float64, generator=g) * (torch.rand(T, 5, generator=g) > 0.1)
    last = torch.randn(5, dtype=torch.float64, generator=g)
    expected, acc = torch.empty_like(x), last
    for t in reversed(range(T)):
        acc = x[t] + a[t] * acc
        expected[t] = acc
    torch.testing.assert_close(backward_scan(x, a, last), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(backward_scan(x.float(), a.float(), last.float()), expected.float(),
                               rtol=1e-5, atol=1e-5)
    assert torch.equal(backward_scan(x, a, last, chunk=1), expected)  # the loop, bit for bit

