"""Evaluate a checkpoint: play N episodes, report the return's mean and spread,
and record one episode as a GIF.

The checkpoint loads with torch.load(weights_only=True) (tensors and plain
values only); its "config" rebuilds the very network the learner trained.
Scoring uses the same vector env as the actors (same preprocessing, raw
returns). The recorded episode shows what the policy saw where the env's
observations are images (the newest 84x84 frame for Atari ids, whose vector
env renders no RGB; a gray or RGB observation of any other image env, and
its episode's last one), and Gymnasium's rgb_array rendering otherwise (none
if the env cannot render).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from shared.config import RunConfig
from shared.envs import EnvRefused, VectorEnv, env_spec
from shared.models import ActorCritic, build_model

Policy = Callable[[np.ndarray], int]
GIF_FRAME_MS = 33


def load_model(path: str | Path) -> tuple[ActorCritic, RunConfig]:
    ckpt = torch.load(Path(path), weights_only=True, map_location="cpu")
    cfg = RunConfig.model_validate(ckpt["config"], context={"stored": True})
    model = build_model(cfg, env_spec(cfg))
    model.load_state_dict(ckpt["model"])
    return model.eval(), cfg


def make_policy(model: ActorCritic, greedy: bool, seed: int) -> Policy:
    """obs of one env (no batch axis) -> action: argmax of the logits, or a sample."""
    gen = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def act(obs: np.ndarray) -> int:
        logits, _ = model(torch.as_tensor(obs).unsqueeze(0))
        if greedy:
            return int(logits.argmax(-1))
        return int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))

    return act


def play_scored(cfg: RunConfig, policy: Policy, episodes: int, seed: int) -> list[tuple[float, int]]:
    """(raw return, length) of `episodes` episodes in the actors' vector env."""
    env = VectorEnv(cfg, 1, seed, num_threads=1)
    out: list[tuple[float, int]] = []
    try:
        obs = env.reset()
        ret, length = 0.0, 0
        while len(out) < episodes:
            obs, rew, term, trunc, _ = env.step(np.array([policy(obs[0])]))
            ret, length = ret + float(rew[0]), length + 1
            if term[0] or trunc[0]:  # SAME_STEP autoreset: obs already starts the next episode
                out.append((ret, length))
                ret, length = 0.0, 0
    finally:
        env.close()
    return out


def as_picture(obs: np.ndarray, frame_stack: int) -> np.ndarray:
    """An image observation (C, H, W) as a picture: the newest frame of a stack, or
    the channels as gray / RGB(A)."""
    if frame_stack:
        return obs[-1]
    return obs[0] if obs.shape[0] == 1 else np.moveaxis(obs[:3], 0, -1)


def play_recorded(cfg: RunConfig, policy: Policy, seed: int) -> tuple[list[np.ndarray], float, int]:
    """One episode's frames, return and length. Image envs record the observation the
    policy saw before each step and the episode's last observation where the env
    keeps it (length + 1 frames; Atari ids: length); other envs Gymnasium's rendering
    after reset and after each step (length + 1). Raises EnvRefused if neither exists."""
    spec = env_spec(cfg)
    env = VectorEnv(cfg, 1, seed, num_threads=1, render=not spec.image)
    try:
        obs = env.reset()
        frames = [] if spec.image else [env.render()]
        if not spec.image and frames[0] is None:
            raise EnvRefused(f"{cfg.env_id} renders no rgb_array frames: no video")
        ret, length = 0.0, 0
        while True:
            if spec.image:
                frames.append(as_picture(obs[0], spec.frame_stack))
            obs, rew, term, trunc, _ = env.step(np.array([policy(obs[0])]))
            ret, length = ret + float(rew[0]), length + 1
            if not spec.image:
                frames.append(env.render())
            if term[0] or trunc[0]:
                last = env.final_observation(0) if spec.image else None
                if last is not None:  # the step's obs already starts the next episode (SAME_STEP)
                    frames.append(as_picture(last, spec.frame_stack))
                return frames, ret, length
    finally:
        env.close()


def write_gif(frames: list[np.ndarray], path: Path, max_side: int = 320) -> int:
    """Frames to an animated GIF (Pillow), the longer side scaled to max_side, each
    stamped with its index: a viewer sees the step, and no two consecutive frames
    are identical (Pillow merges identical ones, which would lose frames). Small
    frames are enlarged by repeating pixels (nearest): a 10x5 observation stays a
    grid of sharp pixels, where a smooth filter would blur it."""
    from PIL import Image, ImageDraw

    first = Image.fromarray(np.ascontiguousarray(frames[0]))
    scale = max_side / max(first.size)
    size = (max(1, round(first.size[0] * scale)), max(1, round(first.size[1] * scale)))
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BILINEAR
    images = []
    for i, f in enumerate(frames):
        im = Image.fromarray(np.ascontiguousarray(f)).convert("RGB").resize(size, resample)
        ImageDraw.Draw(im).text((4, 2), f"step {i}", fill=(200, 0, 0))
        images.append(im)
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=GIF_FRAME_MS, loop=0)
    return len(images)


def evaluate(checkpoint: str | Path, episodes: int = 10, greedy: bool = True, seed: int = 12345,
             video: Optional[str | Path] = None) -> dict[str, Any]:
    """Play and report; with `video`, also record one more episode to that GIF."""
    t0 = time.time()
    model, cfg = load_model(checkpoint)
    torch.set_num_threads(1)
    policy = make_policy(model, greedy, seed)
    played = play_scored(cfg, policy, episodes, seed)
    returns = np.array([r for r, _ in played], np.float64)
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint), "env_id": cfg.env_id, "episodes": episodes, "greedy": greedy,
        "seed": seed, "mean_return": float(returns.mean()), "std_return": float(returns.std()),
        "min_return": float(returns.min()), "max_return": float(returns.max()),
        "returns": returns.tolist(), "lengths": [n for _, n in played]}
    if video is not None:
        try:
            frames, ret, length = play_recorded(cfg, policy, seed)
            result.update(video=str(video), video_frames=write_gif(frames, Path(video)),
                          video_return=ret, video_length=length)
        except EnvRefused as e:
            result["video_error"] = str(e)
    result["seconds"] = time.time() - t0
    return result


def main(argv: Optional[list[str]] = None) -> None:
    """python -m services.eval CHECKPOINT: used by the CLI and, as a child process, by the gateway."""
    import argparse

    p = argparse.ArgumentParser(description="Evaluate a checkpoint: N episodes, mean and spread, one GIF.")
    p.add_argument("checkpoint")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--sampled", action="store_true", help="sample actions (default: greedy argmax)")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--video", default=None, help="write one episode to this .gif")
    p.add_argument("--out", default=None, help="also write the result JSON to this file")
    a = p.parse_args(argv)
    result = evaluate(a.checkpoint, a.episodes, not a.sampled, a.seed, a.video)
    text = json.dumps(result, indent=2)
    if a.out:
        tmp = Path(a.out).with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(a.out)
    print(text)
