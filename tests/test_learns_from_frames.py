"""The learner's image path learns: frames + stack context -> rebuilt stacks ->
latent auto-encoder -> APPO loss -> Adam, on a one-step task whose right action
can only be read off the newest frame (marker on the left: action 2, right: 3).

CartPole covers the vector path end to end; this covers what only Atari uses
(uint8 frames, stack rebuilding, the AE model, channels-last) without the
emulator's cost, so a broken image path fails here in seconds, not after an
hour of Pong."""
import json

import torch

from services.learner.trainer import Trainer
from shared.config import RunConfig
from shared.envs import EnvSpec
from services.launcher.stack import ROOT

T, B = 4, 16


def frames_with_markers(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    frames = torch.randint(60, 100, (T + 1, B, 84, 84), dtype=torch.uint8, generator=g)
    side = torch.randint(0, 2, (T + 1, B), generator=g)
    cols = torch.where(side == 0, 10, 60)
    for t in range(T + 1):
        for b in range(B):
            frames[t, b, 40:48, cols[t, b]:cols[t, b] + 8] = 200
    return frames, side


def test_pong_preset_model_learns_an_action_from_the_newest_frame():
    torch.manual_seed(0)
    preset = RunConfig(**json.loads((ROOT / "configs" / "pong.json").read_text()))
    cfg = RunConfig(**(preset.model_dump() | {"unroll_length": T, "batch_size": T * B,
                                               "minibatches": min(preset.minibatches, T)}))
    trainer = Trainer(cfg, EnvSpec((4, 84, 84), "uint8", 6, frame_stack=4, clip_rewards=True))
    g = torch.Generator().manual_seed(1)
    accuracy = []
    for _ in range(160):
        frames, side = frames_with_markers(g)
        batch = {"obs": frames, "context": torch.zeros(B, 3, 84, 84, dtype=torch.uint8),
                 "dones": torch.ones(T, B, dtype=torch.uint8)}  # every step is a one-step episode
        with torch.no_grad():
            obs = trainer.observations(batch)
            logits = trainer.model(obs.reshape((T + 1) * B, *obs.shape[2:]))[0].view(T + 1, B, -1)[:T]
        actions = torch.multinomial(torch.softmax(logits.reshape(T * B, -1), -1), 1, generator=g).view(T, B)
        correct = actions == torch.where(side[:T] == 0, 2, 3)
        batch |= {"actions": actions.int(), "logits": logits, "rewards": torch.where(correct, 1.0, -1.0)}
        trainer.train_on(batch)
        accuracy.append(correct.float().mean().item())
    assert sum(accuracy[:10]) / 10 < 0.5  # starts near chance (1/6)
    # Learned: some 20 batches in a row above 0.85. Not necessarily the last 20: once every
    # answer is right, every reward is +1 and the standardized advantages are noise of unit
    # scale, which can shake a perfect policy off this toy task (no Atari batch is that uniform).
    windows = [sum(accuracy[i:i + 20]) / 20 for i in range(len(accuracy) - 19)]
    assert max(windows) > 0.85, [round(a, 2) for a in accuracy]
