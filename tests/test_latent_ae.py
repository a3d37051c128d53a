"""The latent auto-encoder learns to reconstruct real Pong frames."""
import numpy as np
import pytest
import torch

from shared.config import RunConfig
from shared.envs import EnvSpec, VectorEnv
from shared.models import LatentAE, UpConv, build_model


def pong_frames(n_steps: int = 120) -> torch.Tensor:
    env = VectorEnv("ALE/Pong-v5", 4, seed=0, num_threads=1)
    rng = np.random.default_rng(0)
    frames = [env.reset()]
    for _ in range(n_steps):
        frames.append(env.step(rng.integers(0, env.spec.num_actions, 4))[0])
    env.close()
    return torch.from_numpy(np.concatenate(frames))  # [(n+1)*4, 4, 84, 84] uint8


def test_reconstruction_loss_falls_on_pong_frames():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    frames = pong_frames()
    # a narrow encoder (8 and 16 channels), quick on 2 cores
    model = build_model(RunConfig(env_id="ALE/Pong-v5", latent_ae=True, latent_dim=64, ae_channels=(8, 16)), _spec())
    assert isinstance(model.encoder, LatentAE)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    probe = frames[::7][:64]

    def loss_on(x):
        return model.forward_aux(x, with_recon=True)[2]

    with torch.no_grad():
        before = float(loss_on(probe))
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        idx = torch.randint(0, len(frames), (64,), generator=g)
        loss = loss_on(frames[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(loss_on(probe))
    assert after < 0.5 * before, (before, after)


def test_heads_read_the_latent_and_recon_fraction_subsamples():
    model = build_model(RunConfig(env_id="ALE/Pong-v5", latent_ae=True, latent_dim=32, ae_channels=[12, 24]), _spec())
    assert model.policy.in_features == 32 and model.value.in_features == 32
    convs = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    # encoder 4 -> 12 -> 24; decoder 24 -> 12 * 2 * 2 -> 4 * 4 * 4 (UpConv's depth-to-space)
    assert [(c.in_channels, c.out_channels) for c in convs] == [(4, 12), (12, 24), (24, 48), (12, 64)]
    x = torch.randint(0, 255, (16, 4, 84, 84), dtype=torch.uint8)
    logits, value, recon = model.forward_aux(x, recon_fraction=0.25)
    assert logits.shape == (16, 6) and value.shape == (16,) and recon.ndim == 0


def _spec() -> EnvSpec:
    return EnvSpec((4, 84, 84), "uint8", 6, frame_stack=4, clip_rewards=True)


def test_upconv_is_the_transposed_convolution_it_replaces():
    """UpConv(c_in, c_out, s) computes ConvTranspose2d(c_in, c_out, 2s, stride s)
    exactly, given the same weights rearranged: each output block of s x s pixels
    reads the 2x2 input neighbourhood, block I from inputs I-1 and I."""
    torch.manual_seed(0)
    for c_in, c_out, s, size in ((16, 4, 4, 20), (32, 16, 2, 9)):
        ct = torch.nn.ConvTranspose2d(c_in, c_out, 2 * s, stride=s)
        up = UpConv(c_in, c_out, s)
        w = torch.zeros(c_out, s, s, c_in, 2, 2)
        for dy in range(2):
            for dx in range(2):
                # input I - 1 + dy feeds block I through the transposed kernel's rows (1 - dy) * s ...
                w[..., dy, dx] = ct.weight[:, :, (1 - dy) * s:(2 - dy) * s, (1 - dx) * s:(2 - dx) * s].permute(1, 2, 3, 0)
        with torch.no_grad():
            up.conv.weight.copy_(w.reshape_as(up.conv.weight))
            up.conv.bias.copy_(ct.bias.repeat_interleave(s * s))
        x = torch.randn(3, c_in, size, size)
        assert up(x).shape == ct(x).shape == (3, c_out, (size + 1) * s, (size + 1) * s)
        assert torch.allclose(up(x), ct(x), atol=1e-5)


def test_actors_get_the_acting_weights_only():
    """Weights for actors leave out the decoder (the learner's auxiliary loss only);
    an actor loading them acts exactly as the learner's model does."""
    from shared.models import load_numpy_state, state_to_numpy

    cfg = RunConfig(env_id="ALE/Pong-v5", latent_ae=True)
    torch.manual_seed(0)
    learner_model, actor_model = build_model(cfg, _spec()), build_model(cfg, _spec())
    arrays = state_to_numpy(learner_model)
    assert not any(k.startswith("encoder.dec") for k in arrays)
    full = sum(v.numel() for v in learner_model.state_dict().values())
    assert sum(a.size for a in arrays.values()) < 0.6 * full  # the decoder is about half of this model
    load_numpy_state(actor_model, arrays)
    x = torch.randint(0, 255, (8, 4, 84, 84), dtype=torch.uint8)
    with torch.no_grad():
        for a, b in zip(learner_model(x), actor_model(x)):
            assert torch.equal(a, b)
    # a snapshot, not a view: the optimiser updates parameters in place while it is encoded
    before = arrays["policy.weight"].copy()
    with torch.no_grad():
        learner_model.policy.weight.add_(1.0)
    assert np.array_equal(arrays["policy.weight"], before)
    arrays.pop("policy.weight")
    with pytest.raises(ValueError, match="parameter names"):
        load_numpy_state(actor_model, arrays)
