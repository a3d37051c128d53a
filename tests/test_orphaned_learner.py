"""A learner whose nats-server is gone still leaves promptly on SIGTERM, with its run's
final checkpoint on disk: compose sends SIGKILL 10 s after SIGTERM, and what the broker
cannot take (the end record, the last metrics) must not cost the checkpoint."""
from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from services.launcher.stack import ROOT
from services.learner import checkpoints
from shared.client import GatewayClient

from helpers import poll, started_stack

pytestmark = pytest.mark.e2e
CONFIG = dict(json.loads((ROOT / "configs" / "cartpole.json").read_text()), num_actors=1, max_seconds=600,
              target_return=None, max_agent_steps=10**9)
EXIT_WITHIN_S = 9.0  # under compose's 10 s grace


async def test_sigterm_after_the_broker_died_exits_in_time_with_a_checkpoint(tmp_path_factory):
    with started_stack(tmp_path_factory, "orphan", actors=1) as stack:
        async with GatewayClient(stack.gateway_url, stack.api_token) as gw:
            await gw.wait_ready()
            rid = (await gw.start_run(CONFIG))["id"]
            running = await poll(lambda: gw.run(rid), lambda v: v["state"] == "running" and v["updates"] > 5,
                                 120, "run trains")
        stack.kill("nats")
        learner = stack.procs["learner"]
        t = time.monotonic()
        learner.send_signal(signal.SIGTERM)
        try:
            learner.wait(60)
        except subprocess.TimeoutExpired:
            pytest.fail("the learner did not exit within 60 s of SIGTERM without its broker")
        took = time.monotonic() - t
        saved = sorted((stack.run_dir / "checkpoints" / rid).glob("ckpt_*.pt"))
    assert learner.returncode == 0, learner.returncode
    assert took < EXIT_WITHIN_S, f"the learner took {took:.1f} s to exit after SIGTERM without its broker"
    assert saved, "no final checkpoint"
    final = checkpoints.load(saved[-1])  # weights_only=True
    assert final["run_id"] == rid and final["updates"] >= running["updates"]
