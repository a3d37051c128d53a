"""The losses on samples (APPO clipping and its gradient, IMPALA) and the V-trace targets they read."""
import torch

from shared.losses import appo_loss, clipped_surrogate, impala_loss, standardize, vtrace_targets


def test_clipped_surrogate_is_pessimistic():
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    ratio = torch.tensor([1.5, 0.5, 1.5, 0.5])
    out = clipped_surrogate(ratio, adv, 0.2)
    # positive advantage: gain capped at 1+eps; negative: loss not reduced below clip
    assert torch.allclose(out, torch.tensor([1.2, 0.5, -1.5, -0.8]))


def test_clipped_surrogate_has_no_gradient_outside_the_trust_region():
    adv = torch.tensor([1.0, -1.0])
    ratio = torch.tensor([1.5, 0.5], requires_grad=True)
    clipped_surrogate(ratio, adv, 0.2).sum().backward()
    assert torch.equal(ratio.grad, torch.zeros(2))
    ratio2 = torch.tensor([1.1, 0.9], requires_grad=True)
    clipped_surrogate(ratio2, adv, 0.2).sum().backward()
    assert torch.equal(ratio2.grad, adv)


def _inputs(T=5, B=4, A=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(T, B, A, generator=g, requires_grad=True)
    return dict(logits=logits, values=torch.randn(T, B, generator=g, requires_grad=True),
                actions=torch.randint(0, A, (T, B), generator=g), adv=torch.randn(T, B, generator=g),
                vs=torch.randn(T, B, generator=g), behaviour_logits=torch.randn(T, B, A, generator=g))


def test_appo_clip_fraction_and_gradient():
    x = _inputs()
    common = dict(value_coef=0.5, entropy_coef=0.0, kl_coef=0.0)
    # Target far from the current policy: most ratios leave [1-eps, 1+eps].
    far = appo_loss(**x, target_logits=x["logits"].detach() + 3 * torch.randn_like(x["logits"]), clip_eps=0.1,
                    **common)
    near = appo_loss(**x, target_logits=x["logits"].detach(), clip_eps=0.1, **common)
    assert far["clip_frac"] > 0.5 and far["kl"] > 0.1
    assert near["clip_frac"] == 0 and near["kl"] < 1e-6
    near["total"].backward()
    assert x["logits"].grad.abs().sum() > 0


def test_appo_equals_impala_policy_gradient_when_on_policy():
    """Target = behaviour = current: the surrogate's gradient is the plain policy gradient."""
    x = _inputs(seed=1)
    x["behaviour_logits"] = x["logits"].detach().clone()
    common = dict(value_coef=0.0, entropy_coef=0.0)
    appo = appo_loss(**x, target_logits=x["logits"].detach(), clip_eps=0.2, kl_coef=0.0, **common)
    g1 = torch.autograd.grad(appo["total"], x["logits"])[0]
    behaviour = x.pop("behaviour_logits")
    imp = impala_loss(**x, ref_logits=behaviour, **common)
    g2 = torch.autograd.grad(imp["total"], x["logits"])[0]
    assert torch.allclose(g1, g2, atol=1e-6)


def test_normalized_advantages_make_the_policy_gradient_scale_free():
    """Scaling rewards and values by 100 changes raw V-trace advantages 100-fold;
    with normalize_advantages the advantages, and so the policy gradient, do not change."""
    g = torch.Generator().manual_seed(3)
    T, B, A = 6, 4, 3
    args = dict(behaviour_logits=torch.randn(T, B, A, generator=g), target_logits=torch.randn(T, B, A, generator=g),
                actions=torch.randint(0, A, (T, B), generator=g), discounts=torch.full((T, B), 0.99))
    rewards, values, bootstrap = torch.randn(T, B, generator=g), torch.randn(T, B, generator=g), torch.randn(B, generator=g)
    advs = [vtrace_targets(**args, rewards=rewards * k, values=values * k, bootstrap=bootstrap * k, rho_bar=1.0,
                           c_bar=1.0, normalize_advantages=True).pg_advantages for k in (1.0, 100.0)]
    assert torch.allclose(advs[0], advs[1], atol=1e-5)
    raw = vtrace_targets(**args, rewards=rewards, values=values, bootstrap=bootstrap, rho_bar=1.0, c_bar=1.0)
    assert not torch.allclose(raw.pg_advantages, advs[0])
    adv = standardize(torch.randn(7, 3) * 5 + 2)
    assert abs(float(adv.mean())) < 1e-5 and abs(float(adv.std(unbiased=False)) - 1.0) < 1e-4
