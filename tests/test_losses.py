"""The APPO loss: clipping of the surrogate and its gradient."""
import torch

from shared.losses import appo_loss, clipped_surrogate, impala_loss, standardize


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
                bootstrap=torch.randn(B, generator=g), actions=torch.randint(0, A, (T, B), generator=g),
                behaviour_logits=torch.randn(T, B, A, generator=g), rewards=torch.randn(T, B, generator=g),
                discounts=torch.full((T, B), 0.99))


def test_appo_clip_fraction_and_gradient():
    x = _inputs()
    common = dict(rho_bar=1.0, c_bar=1.0, value_coef=0.5, entropy_coef=0.0, kl_coef=0.0)
    # Target far from the current policy: most ratios leave [1-eps, 1+eps].
    far = appo_loss(**x, target_logits=x["logits"].detach() + 3 * torch.randn_like(x["logits"]), clip_eps=0.1,
                    **common)
    near = appo_loss(**x, target_logits=x["logits"].detach(), clip_eps=0.1, **common)
    assert far["clip_frac"] > 0.5
    assert near["clip_frac"] == 0
    near["total"].backward()
    assert x["logits"].grad.abs().sum() > 0


def test_appo_equals_impala_policy_gradient_when_on_policy():
    """Target = behaviour = current: the surrogate's gradient is the plain policy gradient."""
    x = _inputs(seed=1)
    x["behaviour_logits"] = x["logits"].detach().clone()
    common = dict(rho_bar=1.0, c_bar=1.0, value_coef=0.0, entropy_coef=0.0)
    appo = appo_loss(**x, target_logits=x["logits"].detach(), clip_eps=0.2, kl_coef=0.0, **common)
    g1 = torch.autograd.grad(appo["total"], x["logits"])[0]
    imp = impala_loss(**x, **common)
    g2 = torch.autograd.grad(imp["total"], x["logits"])[0]
    assert torch.allclose(g1, g2, atol=1e-6)


def test_normalized_advantages_make_the_policy_gradient_scale_free():
    """Scaling rewards and values by 100 changes raw advantages 100-fold; with
    normalize_advantages the policy-gradient term, and its gradient, do not change."""
    common = dict(rho_bar=1.0, c_bar=1.0, value_coef=0.0, entropy_coef=0.0, normalize_advantages=True)
    grads = []
    for scale in (1.0, 100.0):
        x = _inputs(seed=3)
        x["values"] = (x["values"].detach() * scale).requires_grad_()
        x["bootstrap"], x["rewards"] = x["bootstrap"] * scale, x["rewards"] * scale
        out = impala_loss(**x, **common)
        out["total"].backward()
        grads.append(x["logits"].grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-5)
    assert grads[0].abs().sum() > 0
    adv = standardize(torch.randn(7, 3) * 5 + 2)
    assert abs(float(adv.mean())) < 1e-5 and abs(float(adv.std(unbiased=False)) - 1.0) < 1e-4
