"""Policy networks: an encoder feeds a policy head and a value head.

- MLP for vector observations.
- Nature CNN (Mnih et al. 2015) and the IMPALA ResNet (Espeholt et al. 2018) for images
  (84x84x4 Atari frames, or any other size: the layers after the convolutions are sized
  from the observation), and a small CNN for images below 36x36.
- Latent auto-encoder: a frame encoder squeezed to a small latent that the
  heads read, plus a decoder whose reconstruction of the input frames is an
  auxiliary loss; the policy stays cheap per sample while the latent is
  forced to keep what the frames show.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from shared.config import RunConfig
from shared.envs import EnvSpec


class MLPEncoder(nn.Module):
    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.out_dim = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


def _flat_size(conv: nn.Module, obs_shape: tuple[int, ...]) -> int:
    """Features a conv stack makes of one observation of obs_shape (C, H, W): the
    fully connected layer after it is sized from the observation, not from 84x84."""
    with torch.no_grad():
        return int(conv(torch.zeros(1, *obs_shape)).numel())


# The largest feature map side a conv stack hands its fully connected layer. Why: that
# layer grows with the map, and a large frame would make it huge: the Nature CNN on a
# 400x600 render (CartPole's) maps to 46x71, a 107M-parameter layer (430 MB of weights
# per publication, over the wire's 256 MB limit). 84x84 frames (7x7 maps) are unchanged.
MAX_FEATURE_SIDE = 12


def _conv_stack(layers: list[nn.Module], obs_shape: tuple[int, ...]) -> nn.Sequential:
    """layers, then an average pool down to MAX_FEATURE_SIDE where their map of an
    observation of obs_shape is larger (only then: no pool, the same modules and
    parameter names as ever), then Flatten and a ReLU (after the Flatten: see LatentAE)."""
    with torch.no_grad():
        h, w = nn.Sequential(*layers)(torch.zeros(1, *obs_shape)).shape[-2:]
    side = MAX_FEATURE_SIDE
    pool = [nn.AdaptiveAvgPool2d((min(h, side), min(w, side)))] if max(h, w) > side else []
    return nn.Sequential(*layers, *pool, nn.Flatten(), nn.ReLU())


class NatureCNN(nn.Module):
    """Mnih et al. 2015: 8x8/4, 4x4/2, 3x3/1 convolutions and a 512 layer; frames of 36x36 or more."""

    MIN_SIDE = 36

    def __init__(self, obs_shape: tuple[int, ...], hidden: int = 512):
        super().__init__()
        self.conv = _conv_stack([
            nn.Conv2d(obs_shape[0], 32, 8, stride=4), nn.ReLU(), nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1)], obs_shape)
        self.fc = nn.Sequential(nn.Linear(_flat_size(self.conv, obs_shape), hidden), nn.ReLU())
        self.out_dim = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x))


class SmallCNN(nn.Module):
    """For images below the Nature CNN's 36x36 (a 10x5 grid world): three 3x3
    convolutions (16, 32, 32 channels, padding 1), each of stride 2 while both
    sides are still 12 or more, else 1, so small frames keep every pixel and
    larger ones end near 8x8; then a layer of `hidden`."""

    def __init__(self, obs_shape: tuple[int, ...], hidden: int = 256):
        super().__init__()
        layers: list[nn.Module] = []
        c, h, w = obs_shape
        for ch in (16, 32, 32):
            stride = 2 if min(h, w) >= 12 else 1
            layers += [nn.Conv2d(c, ch, 3, stride=stride, padding=1), nn.ReLU()]
            c, h, w = ch, (h - 1) // stride + 1, (w - 1) // stride + 1
        self.conv = _conv_stack(layers[:-1], obs_shape)
        self.fc = nn.Sequential(nn.Linear(_flat_size(self.conv, obs_shape), hidden), nn.ReLU())
        self.out_dim = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x))


class _ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(ch, ch, 3, padding=1), nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.c2(F.relu(self.c1(F.relu(x))))


class ImpalaResNet(nn.Module):
    def __init__(self, obs_shape: tuple[int, ...], hidden: int = 256, channels: tuple[int, ...] = (16, 32, 32)):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = obs_shape[0]
        for ch in channels:
            layers += [nn.Conv2d(in_ch, ch, 3, padding=1), nn.MaxPool2d(3, stride=2, padding=1),
                       _ResBlock(ch), _ResBlock(ch)]
            in_ch = ch
        self.conv = _conv_stack(layers, obs_shape)
        self.fc = nn.Sequential(nn.Linear(_flat_size(self.conv, obs_shape), hidden), nn.ReLU())
        self.out_dim = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x))


class UpConv(nn.Module):
    """Upsampling by `stride` with a 2*stride kernel: the linear map of
    ConvTranspose2d(c_in, c_out, 2 * stride, stride), computed as a 2x2
    convolution (padding 1) to c_out * stride**2 channels and a depth-to-space
    reshape. Why: PyTorch's CPU transposed convolution takes a slow path (about
    twice as long for the decoder's last layer), and each output block of
    stride x stride pixels reads the same 2x2 input neighbourhood either way."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out * stride * stride, 2, padding=1)
        self.c_out, self.stride = c_out, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)  # [N, c_out * s * s, H + 1, W + 1]
        n, _, h, w = y.shape
        s = self.stride
        # channel index (c, i, j) -> pixel (h * s + i, w * s + j) of channel c
        return y.reshape(n, self.c_out, s, s, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, self.c_out, h * s, w * s)


class LatentAE(nn.Module):
    """Small conv encoder to a latent of latent_dim, and a mirrored decoder
    (84 -> 20 -> 9 -> latent -> 9 -> 20 -> 84), with `channels` in the two
    conv layers (the Nature CNN's first two). Why two, not three: the decoder
    mirrors them, and each layer it has costs the learner on every sample it
    reconstructs. The Atari preset's width, and why, is in docs/decisions.md."""

    def __init__(self, in_ch: int, latent_dim: int, channels: tuple[int, int]):
        super().__init__()
        c1, c2 = channels
        # The second ReLU after the Flatten (the same values, the same module indices):
        # flattening a channels-last map copies it to NCHW order, and a ReLU before the
        # copy got its gradient back in the other layout, a slow path; after it both are
        # plain rows.
        self.enc = nn.Sequential(
            nn.Conv2d(in_ch, c1, 8, stride=4), nn.ReLU(), nn.Conv2d(c1, c2, 4, stride=2), nn.Flatten(),
            nn.ReLU(), nn.Linear(c2 * 9 * 9, latent_dim), nn.ReLU())
        self.dec_fc = nn.Linear(latent_dim, c2 * 9 * 9)
        self.dec = nn.Sequential(nn.ReLU(), UpConv(c2, c1, 2), nn.ReLU(), UpConv(c1, in_ch, 4))
        self.out_dim, self.c2 = latent_dim, c2

    SIDE = 84  # the frame side its strides and decoder are built for (84 -> 20 -> 9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.enc(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec(self.dec_fc(z).view(-1, self.c2, 9, 9))


class ActorCritic(nn.Module):
    """encoder -> (policy logits, value); images are uint8 and scaled here."""

    def __init__(self, encoder: nn.Module, num_actions: int, image: bool,
                 value_encoder: Optional[nn.Module] = None):
        super().__init__()
        self.encoder = encoder
        # Vector envs get a separate value tower (as CleanRL): unclipped returns make the value
        # loss large enough to swamp the policy gradient in a shared trunk.
        self.value_encoder = value_encoder
        self.policy = nn.Linear(encoder.out_dim, num_actions)
        self.value = nn.Linear(encoder.out_dim, 1)
        self.image = image

    def prepare(self, obs: torch.Tensor, out: Optional[torch.Tensor] = None,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Model input from raw observations. Images: uint8 -> channels-last floats
        in [0, 1] of `dtype`, written into `out` when given (a buffer of the right
        shape and layout). Why the buffer: on CPU a fresh 100 MB tensor per batch
        costs more in page faults than the conversion itself, and the learner makes
        one per batch."""
        if not self.image:
            return obs.float()
        if out is None or out.shape != obs.shape or out.dtype != dtype:
            out = torch.empty(obs.shape, dtype=dtype, device=obs.device, memory_format=torch.channels_last)
        # the layout change in uint8 (4x fewer bytes), then a contiguous convert-and-scale
        return out.copy_(obs.contiguous(memory_format=torch.channels_last)).mul_(1.0 / 255.0)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, value, _ = self.forward_prepared(self.prepare(obs), with_recon=False)
        return logits, value

    def forward_aux(self, obs: torch.Tensor, with_recon: bool = True, recon_fraction: float = 1.0
                    ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        return self.forward_prepared(self.prepare(obs), with_recon, recon_fraction)

    def forward_prepared(self, x: torch.Tensor, with_recon: bool = True, recon_fraction: float = 1.0
                         ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """(logits, value, reconstruction loss or None) from a prepared input; the
        reconstruction is measured on an evenly spaced `recon_fraction` of the batch."""
        z = self.encoder(x)
        recon = None
        if with_recon and isinstance(self.encoder, LatentAE):
            step = max(1, round(1.0 / recon_fraction))
            recon = F.mse_loss(self.encoder.decode(z[::step]), x[::step])
        zv = self.value_encoder(x) if self.value_encoder is not None else z
        return self.policy(z), self.value(zv).squeeze(-1), recon


IMAGE_MODELS = ("nature_cnn", "small_cnn", "impala_resnet")


def model_kind(cfg: RunConfig, spec: EnvSpec) -> str:
    """The encoder a run gets. auto: an MLP for vectors; for images the Nature CNN
    where the frames are 36x36 or larger, else the small CNN. Raises ValueError
    (a 422 at the gateway) where the config asks for a model the observations
    cannot feed."""
    if not spec.image:
        if cfg.model not in ("auto", "mlp"):
            raise ValueError(f"model {cfg.model!r} needs image observations; this env's are vectors "
                             f"of shape {spec.obs_shape}")
        if cfg.latent_ae:
            raise ValueError("latent_ae needs image observations")
        return "mlp"
    side = min(spec.obs_shape[1:])
    if cfg.latent_ae and tuple(spec.obs_shape[1:]) != (LatentAE.SIDE, LatentAE.SIDE):
        raise ValueError(f"latent_ae needs {LatentAE.SIDE}x{LatentAE.SIDE} frames (ALE); this env's are "
                         f"{spec.obs_shape[1]}x{spec.obs_shape[2]}")
    kind = cfg.model
    if kind == "auto":
        kind = "nature_cnn" if side >= NatureCNN.MIN_SIDE else "small_cnn"
    if kind == "mlp":
        raise ValueError("model 'mlp' is for vector observations; this env's are images (use auto)")
    if kind == "nature_cnn" and side < NatureCNN.MIN_SIDE:
        raise ValueError(f"model 'nature_cnn' needs frames of at least {NatureCNN.MIN_SIDE}x{NatureCNN.MIN_SIDE}; "
                         f"this env's are {spec.obs_shape[1]}x{spec.obs_shape[2]} (use auto or small_cnn)")
    return kind


def build_model(cfg: RunConfig, spec: EnvSpec) -> ActorCritic:
    """The one place a config and an env spec become a network."""
    kind = model_kind(cfg, spec)
    in_dim = int(np.prod(spec.obs_shape))
    if spec.image and cfg.latent_ae:
        enc: nn.Module = LatentAE(spec.obs_shape[0], cfg.latent_dim, cfg.ae_channels)
    elif kind == "mlp":
        enc = MLPEncoder(in_dim, cfg.hidden_size)
    elif kind == "nature_cnn":
        enc = NatureCNN(spec.obs_shape)
    elif kind == "small_cnn":
        enc = SmallCNN(spec.obs_shape)
    else:
        enc = ImpalaResNet(spec.obs_shape)
    value_enc = MLPEncoder(in_dim, cfg.hidden_size) if kind == "mlp" else None
    model = ActorCritic(enc, spec.num_actions, spec.image, value_enc)
    if spec.image:
        init_weights(model)
        model = model.to(memory_format=torch.channels_last)
    return model


def init_weights(model: ActorCritic) -> None:
    """CleanRL's initialisation for image models: orthogonal sqrt(2) layers, a
    near-uniform first policy (head gain 0.01) and a unit value head. Why: with
    PyTorch's default init the first policy already prefers some actions and
    sparse-reward games spend their first updates undoing that ("What matters in
    on-policy RL", Andrychowicz et al. 2021)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.orthogonal_(m.weight, np.sqrt(2))
            nn.init.zeros_(m.bias)
    nn.init.orthogonal_(model.policy.weight, 0.01)
    nn.init.orthogonal_(model.value.weight, 1.0)


# Parameters only the learner needs: the auto-encoder's decoder, whose loss is
# an auxiliary one. Actors act with the encoder and heads, so the weights they
# are sent leave it out (2.7 of the Pong model's 5.4 MB).
LEARNER_ONLY = ("encoder.dec_fc.", "encoder.dec.")


def acting_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state an actor needs to act: everything but the learner-only parameters."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith(LEARNER_ONLY)}


def state_to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """The acting weights as float32 numpy arrays, for the wire (never pickle).
    Copies: a float32 CPU tensor's .numpy() shares its memory, and the optimiser
    keeps updating the parameters in place while the event loop encodes them."""
    return {k: v.detach().to("cpu", torch.float32, copy=True).numpy() for k, v in acting_state(model).items()}


def load_numpy_state(model: nn.Module, arrays: dict) -> None:
    """Load acting weights from the wire, checking every name and shape."""
    own = acting_state(model)
    if set(arrays) != set(own):
        raise ValueError("weights do not match the model's parameter names")
    for k, v in own.items():
        if tuple(arrays[k].shape) != tuple(v.shape):
            raise ValueError(f"weight {k!r} has shape {arrays[k].shape}, expected {tuple(v.shape)}")
    missing, unexpected = model.load_state_dict(
        {k: torch.from_numpy(arrays[k].copy()).to(own[k].dtype) for k in own}, strict=False)
    assert not unexpected and all(k.startswith(LEARNER_ONLY) for k in missing), (missing, unexpected)
