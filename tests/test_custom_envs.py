"""Your own env through the whole stack (separate processes, real NATS): pixel envs
defined in tests/pixel_envs.py and named `tests.pixel_envs:<Id>`, imported by the
gateway, the learner, the actors and eval alike.

- PixelCatch (10x5 gray) learns well above random play, and its checkpoint
  plays and records a GIF of its observations with `python -m services.eval`;
- env_kwargs reach every process (rows=8: 7-step episodes, an 8x5 model);
- an env that raises in reset fails its run with the reason, and the learner
  trains the next run;
- an HxWx3 RGB env runs;
- Box actions and Tuple observations are a 422 naming env_id, with the reason.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import started_stack
from PIL import Image

from services.launcher.stack import ROOT
from shared.client import GatewayClient, GatewayError


from tests.pixel_envs import BALL_GRAY, PixelCatch, random_mean_return  # noqa: E402

pytestmark = pytest.mark.e2e
CATCH = "tests.pixel_envs:PixelCatch-v0"
# 2 actors x 8 envs x 16 steps: one round of fragments is one batch of 256 (sync flow, policy lag 0).
# Measured on the busy 2-core box: 0.9 (last 100 episodes) after 5.6k-9.1k agent steps, 6-41 s.
SIZES = {"num_actors": 2, "num_envs": 8, "unroll_length": 16, "batch_size": 256}
LEARN = {"env_id": CATCH, **SIZES, "learning_rate": 0.002, "entropy_coef": 0.01, "target_return": 0.9,
         "max_seconds": 150}
SHORT = {**SIZES, "max_agent_steps": 2048}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with started_stack(tmp_path_factory, "custom", actors=2) as s:
        yield s


@pytest.fixture(scope="module")
def learned(stack) -> dict:
    """The final view of a PixelCatch run trained through the stack (for the learning and the eval test)."""
    async def train() -> dict:
        async with GatewayClient(stack.gateway_url, stack.api_token) as gw:
            await gw.wait_ready()
            run = await gw.start_run(LEARN)
            return await gw.wait_final(run["id"], timeout=300)

    return asyncio.run(train())


def test_pixel_env_learns_well_above_random(learned):
    random_play = random_mean_return(episodes=5000)
    assert -0.8 < random_play < -0.4  # about -0.6: the paddle is under the ball 1 time in 5
    assert learned["state"] == "finished", learned
    assert learned["episodes"] >= 100 and learned["rejected"] == 0
    assert learned["mean_return"] >= max(0.5, random_play + 1.0), (learned["mean_return"], random_play)


def cells(gif_frame: np.ndarray) -> np.ndarray:
    """A GIF frame of a 10x5 observation (cells of 32x32) back to 10x5: each cell's centre,
    clear of the step number stamped in the top left corner."""
    return gif_frame[16::32, 16::32]


def test_eval_cli_records_the_observations(learned, tmp_path):
    """`python -m services.eval CHECKPOINT --video x.gif` on the run's checkpoint: the
    policy plays well, and the GIF shows the 10x5 observations, the last one included."""
    gif, out = tmp_path / "catch.gif", tmp_path / "result.json"
    proc = subprocess.run([sys.executable, "-m", "services.eval", learned["checkpoint"], "--episodes", "20",
                           "--video", str(gif), "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["env_id"] == CATCH and result["lengths"] == [9] * 20
    assert result["mean_return"] >= 0.5, result
    assert result["video_length"] == 9 and result["video_frames"] == 10
    with Image.open(gif) as im:
        assert im.size == (160, 320) and im.n_frames == 10  # 10x5 pixels of 32x32
        first = np.asarray(im.convert("L"))
        im.seek(9)
        last = np.asarray(im.convert("L"))
    want = PixelCatch().reset(seed=result["seed"])[0]  # the episode eval recorded starts as a reset with its seed
    np.testing.assert_array_equal(cells(first), want)
    assert cells(last)[9].max() == BALL_GRAY and cells(last)[:9].max() == 0  # the ball reached the bottom row


def trained_without_rejects(final: dict) -> dict:
    """A SHORT run that finished, trained on episodes, rejected no fragment: its checkpoint."""
    assert final["state"] == "finished", final
    assert final["agent_steps"] >= 2048 and final["episodes"] > 0 and final["updates"] > 0, final
    assert final["rejected"] == 0, final
    return torch.load(Path(final["checkpoint"]), weights_only=True)


async def test_env_kwargs_reach_every_process_and_a_broken_env_fails_alone(stack):
    async with GatewayClient(stack.gateway_url, stack.api_token) as gw:
        await gw.wait_ready()
        # The gateway builds the env (constructor only), so an env broken in reset is accepted ...
        broken = await gw.start_run({"env_id": "tests.pixel_envs:BrokenReset-v0", **SHORT})
        failed = await gw.wait_final(broken["id"], timeout=120)
        # ... and the learner's check (build, reset, step) fails that run, with the env's message.
        assert failed["state"] == "failed", failed
        assert "reset is broken on purpose" in failed["reason"] and "RuntimeError" in failed["reason"], failed
        # The gateway's constructor sees env_kwargs: a bad value is a 422 naming env_id.
        with pytest.raises(GatewayError) as e:
            await gw.start_run({"env_id": CATCH, "env_kwargs": {"rows": 1}, **SHORT})
        assert e.value.status == 422 and "env_id" in map(str, e.value.detail[0]["loc"])
        assert "rows >= 3" in e.value.detail[0]["msg"], e.value.detail
        # The same learner trains the next run, whose env_kwargs every process uses:
        run = await gw.start_run({"env_id": CATCH, "env_kwargs": {"rows": 8}, **SHORT})
        final = await gw.wait_final(run["id"], timeout=180)
        points = await gw.metrics(run["id"])
    # the actors' 8x5 fragments matched the learner's spec (none rejected) ...
    ckpt = trained_without_rejects(final)
    # ... their episodes last rows - 1 = 7 steps (10 rows: 9), and the model was sized for 8x5
    assert points[-1]["mean_length"] == 7.0, points[-1]
    assert ckpt["config"]["env_kwargs"] == {"rows": 8}
    assert ckpt["model"]["encoder.fc.0.weight"].shape[1] == 32 * 8 * 5


async def test_an_rgb_env_runs(stack):
    async with GatewayClient(stack.gateway_url, stack.api_token) as gw:
        await gw.wait_ready()
        run = await gw.start_run({"env_id": "tests.pixel_envs:PixelCatchRGB-v0", **SHORT})
        final = await gw.wait_final(run["id"], timeout=180)
    ckpt = trained_without_rejects(final)
    assert ckpt["model"]["encoder.conv.0.weight"].shape[1] == 3  # RGB: 3 input channels


@pytest.mark.parametrize("env_id,reason", [
    ("Pendulum-v1", "action space Box(-2.0, 2.0, (1,), float32) is not supported"),
    ("Blackjack-v1", "observation space Tuple is not supported"),
])
async def test_unsupported_spaces_are_a_422_naming_env_id(stack, env_id, reason):
    async with GatewayClient(stack.gateway_url, stack.api_token) as gw:
        await gw.wait_ready()
        with pytest.raises(GatewayError) as e:
            await gw.start_run({"env_id": env_id, "max_agent_steps": 1000})
        runs = await gw.runs()
    assert e.value.status == 422
    (err,) = e.value.detail
    assert "env_id" in map(str, err["loc"]) and env_id in err["msg"] and reason in err["msg"], err
    assert all(r["config"]["env_id"] != env_id for r in runs)  # nothing was queued
