"""The multi-device learner path on the whole stack: two gloo ranks on the CPU
(the same code runs NCCL ranks on GPUs), each taking half of every fragment's
envs; the run trains and ends normally, and actors in sync flow stay
at policy lag 0 without a wait running out."""
import json

import pytest

from services.launcher.stack import ROOT, Stack, wait_port
from shared.client import GatewayClient

pytestmark = pytest.mark.e2e


async def test_two_rank_learner_trains_cartpole(tmp_path):
    stack = Stack(tmp_path)
    try:
        stack.start_nats()
        stack.start("gateway")
        stack.start("learner", "--devices", "cpu,cpu", "--log-dir", str(stack.logs),
                    "--checkpoint-dir", str(tmp_path / "ckpt"))
        stack.start("actor", "--index", "0", name="actor-0")
        stack.start("actor", "--index", "1", name="actor-1")
        wait_port(stack.gateway_port, timeout=60)
        config = json.loads((ROOT / "configs" / "cartpole.json").read_text())
        # Waits that ran out would take 30 s each: the run would not end in time.
        config.update(max_agent_steps=40_000, target_return=None, round_deadline_s=30.0, num_actors=2, num_envs=8)
        async with GatewayClient(stack.gateway_url, stack.api_token) as gw:
            await gw.wait_ready()
            run = await gw.start_run(config)
            final = await gw.wait_final(run["id"], timeout=400)
    finally:
        stack.close()
    assert final["state"] == "finished", final
    assert final["agent_steps"] >= 40_000 and final["updates"] > 0
    # Both ranks trained: each rank takes one 8-env fragment (16 steps x 8) per step, and the
    # trained count is summed over ranks, so one step is 256 steps. With reuse=4 the circular
    # buffer gives 1, 2, 3, 4, 4, ... updates per step: 4 n - 6 after n >= 3 steps, and both ranks
    # train the next step's 3 passes over older batches ahead after the last one (train_ahead),
    # their gradients all-reduced in step: 4 n - 3.
    per_step = final["config"]["unroll_length"] * final["config"]["num_envs"] * 2
    assert final["trained_steps"] % per_step == 0
    n = final["trained_steps"] // per_step
    assert n >= 3 and final["updates"] == 4 * n - 3, (n, final["updates"])
    assert "rank 1 of run" in (stack.logs / "learner-rank1.log").read_text()
    # Every round of the two actors' fragments filled both ranks' batches at once. When NATS
    # handed each fragment to one rank (a queue group), half the rounds left one rank without
    # data while the actors waited for the step that needed it, until their wait ran out.
    counters = final["counters"]
    assert counters.get("round_deadline_missed", 0) == 0 and counters.get("lagged_batches", 0) == 0, counters
