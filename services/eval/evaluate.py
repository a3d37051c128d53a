"""Evaluate a checkpoint: play N episodes, report the return's mean and spread,
and record one episode as a GIF.

The checkpoint loads with torch.load(weights_only=True) (tensors and plain
values only); its "config" rebuilds the very network the learner trained.
Scoring uses the same vector env as the actors (same preprocessing, raw
returns); the recorded episode uses Gymnasium's rgb_array renderer, or the
newest 84x84 frame for Atari ids, whose vector env renders no RGB.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Optional

import gymnasium as gym
import numpy as np
import torch

from shared.config import RunConfig
from shared.envs import VectorEnv, env_spec, is_atari
from shared.models import ActorCritic, build_model

Policy = Callable[[np.ndarray], int]
GIF_FRAME_MS = 33


def load_model(path: str | Path) -> tuple[ActorCritic, RunConfig]:
    ckpt = torch.load(Path(path), weights_only=True, map_location="cpu")
    cfg = RunConfig(**ckpt["config"])
    model = build_model(cfg, env_spec(cfg.env_id))
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


def play_scored(env_id: str, policy: Policy, episodes: int, seed: int) -> list[tuple[float, int]]:
    """(raw return, length) of `episodes` episodes in the actors' vector env."""
    env = VectorEnv(env_id, 1, seed, num_threads=1)
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


def play_recorded(env_id: str, policy: Policy, seed: int) -> tuple[list[np.ndarray], float, int]:
    """One episode's frames, return and length: Gymnasium renders the frame after reset and one
    after each step (length + 1 frames); Atari records its 84x84 input before each step (length)."""
    if is_atari(env_id):  # the frame the policy saw before each step
        env = VectorEnv(env_id, 1, seed, num_threads=1)
        obs = env.reset()
        frames, ret, length = [], 0.0, 0
        try:
            while True:
                frames.append(obs[0, -1].copy())
                obs, rew, term, trunc, _ = env.step(np.array([policy(obs[0])]))
                ret, length = ret + float(rew[0]), length + 1
                if term[0] or trunc[0]:
                    return frames, ret, length
        finally:
            env.close()
    genv = gym.make(env_id, render_mode="rgb_array")
    try:
        obs, _ = genv.reset(seed=seed)
        frames, ret, length = [genv.render()], 0.0, 0
        while True:
            obs, rew, term, trunc, _ = genv.step(policy(np.asarray(obs, np.float32)))
            frames.append(genv.render())
            ret, length = ret + float(rew), length + 1
            if term or trunc:
                return frames, ret, length
    finally:
        genv.close()


def write_gif(frames: list[np.ndarray], path: Path, max_side: int = 320) -> int:
    """Frames to an animated GIF (Pillow), the longer side scaled to max_side, each
    stamped with its index: a viewer sees the step, and no two consecutive frames
    are identical (Pillow merges identical ones, which would lose frames)."""
    from PIL import Image, ImageDraw

    first = Image.fromarray(np.ascontiguousarray(frames[0]))
    scale = max_side / max(first.size)
    size = (max(1, round(first.size[0] * scale)), max(1, round(first.size[1] * scale)))
    images = []
    for i, f in enumerate(frames):
        im = Image.fromarray(np.ascontiguousarray(f)).convert("RGB").resize(size)
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
    played = play_scored(cfg.env_id, policy, episodes, seed)
    returns = np.array([r for r, _ in played], np.float64)
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint), "env_id": cfg.env_id, "episodes": episodes, "greedy": greedy,
        "seed": seed, "mean_return": float(returns.mean()), "std_return": float(returns.std()),
        "min_return": float(returns.min()), "max_return": float(returns.max()),
        "returns": returns.tolist(), "lengths": [n for _, n in played]}
    if video is not None:
        frames, ret, length = play_recorded(cfg.env_id, policy, seed)
        result.update(video=str(video), video_frames=write_gif(frames, Path(video)),
                      video_return=ret, video_length=length)
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
