"""Small pixel envs for the tests, registered with Gymnasium on import.

A run names them `tests.pixel_envs:PixelCatch-v0`: every service process runs
with the repository root as its working directory and on PYTHONPATH, so this
module (in the `tests` namespace package) imports there as it would from a
user's own package.

- PixelCatch-v0: a ball falls down a grid of `rows` x `cols` pixels, one row per
  step, from a random column of the top row; a paddle on the bottom row moves
  left, stays or moves right (Discrete(3)). When the ball reaches the bottom
  row the episode ends: +1 if the paddle is under it, else -1 (rows - 1 steps).
  Gray HxW uint8 by default; `layout` and `scale` give the same game as HxWx1,
  HxWx3 RGB (ball red, paddle blue) or 3xHxW, each pixel `scale` x `scale`;
  layout "float" gives HxWx1 float32 in [0, 1] (not an image to the trainer:
  only uint8 is).
  Random play scores about -0.6 on 10x5 (`random_mean_return`); moving
  towards the ball scores +1.
- PixelCatchRGB-v0: the same game as 12x10x3 RGB.
- BrokenReset-v0: builds fine, raises in reset (a run of it must fail with the reason).
"""
from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

LAYOUTS = ("hw", "hwc", "rgb", "chw", "float")
BALL_RGB, PADDLE_RGB = (255, 0, 0), (0, 0, 255)
BALL_GRAY, PADDLE_GRAY = 255, 128


class PixelCatch(gym.Env):
    """Catch on a pixel grid; see the module docstring."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 8}

    def __init__(self, rows: int = 10, cols: int = 5, layout: str = "hw", scale: int = 1,
                 render_mode: str | None = None):
        if rows < 3 or cols < 2:
            raise ValueError(f"PixelCatch needs rows >= 3 and cols >= 2 (got rows={rows}, cols={cols})")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS} (got {layout!r})")
        if scale < 1:
            raise ValueError(f"scale must be >= 1 (got {scale})")
        self.rows, self.cols, self.layout, self.scale = rows, cols, layout, scale
        self.render_mode = render_mode
        h, w = rows * scale, cols * scale
        shape = {"hw": (h, w), "hwc": (h, w, 1), "rgb": (h, w, 3), "chw": (3, h, w), "float": (h, w, 1)}[layout]
        self.observation_space = (gym.spaces.Box(0.0, 1.0, shape, np.float32) if layout == "float"
                                  else gym.spaces.Box(0, 255, shape, np.uint8))
        self.action_space = gym.spaces.Discrete(3)
        self.ball_row, self.ball_col, self.paddle = 0, 0, cols // 2

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.ball_row, self.ball_col = 0, int(self.np_random.integers(self.cols))
        self.paddle = self.cols // 2
        return self._obs(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.paddle = int(np.clip(self.paddle + int(action) - 1, 0, self.cols - 1))
        self.ball_row += 1
        terminated = self.ball_row == self.rows - 1
        reward = (1.0 if self.paddle == self.ball_col else -1.0) if terminated else 0.0
        return self._obs(), reward, terminated, False, {}

    def _grid(self, ball: tuple[int, ...], paddle: tuple[int, ...]) -> np.ndarray:
        """The grid as rows x cols x channels; a caught ball shows on the paddle (white
        in gray, magenta in RGB)."""
        img = np.zeros((self.rows, self.cols, len(ball)), np.uint8)
        img[self.rows - 1, self.paddle] = paddle
        img[self.ball_row, self.ball_col] = np.maximum(img[self.ball_row, self.ball_col], ball)
        return img

    def _rgb(self) -> np.ndarray:
        return self._grid(BALL_RGB, PADDLE_RGB)

    def _obs(self) -> np.ndarray:
        img = self._rgb() if self.layout in ("rgb", "chw") else self._grid((BALL_GRAY,), (PADDLE_GRAY,))
        img = img.repeat(self.scale, 0).repeat(self.scale, 1)
        if self.layout == "hw":
            return img[:, :, 0]
        if self.layout == "float":
            return img.astype(np.float32) / 255.0
        return np.ascontiguousarray(img.transpose(2, 0, 1)) if self.layout == "chw" else img

    def render(self) -> np.ndarray | None:
        return self._rgb() if self.render_mode == "rgb_array" else None


class BrokenReset(PixelCatch):
    """Builds (so POST /runs accepts it) but raises in reset (so the run must fail)."""

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        raise RuntimeError("reset is broken on purpose")


def random_mean_return(episodes: int = 2000, seed: int = 0, **kwargs: Any) -> float:
    """Random play's mean return on PixelCatch(**kwargs), the baseline a learned policy must beat."""
    env = PixelCatch(**kwargs)
    rng = np.random.default_rng(seed)
    total = 0.0
    env.reset(seed=seed)
    for _ in range(episodes):
        env.reset()
        done = False
        while not done:
            _, reward, done, _, _ = env.step(int(rng.integers(3)))
            total += reward
    return total / episodes


gym.register("PixelCatch-v0", entry_point=PixelCatch)
gym.register("PixelCatchRGB-v0", entry_point=PixelCatch, kwargs={"rows": 12, "cols": 10, "layout": "rgb"})
gym.register("BrokenReset-v0", entry_point=BrokenReset)
