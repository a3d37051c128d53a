"""A benchmark cut short (Ctrl-C, SIGTERM) stops its run through the API and still
writes its result: a 2M-step study stopped at 1M because it is clearly behind keeps
its curve, and a benchmark of several seeds stops after the one it was running."""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

from services.launcher.stack import ROOT
from shared.client import GatewayClient

from helpers import poll

pytestmark = pytest.mark.e2e


async def _dashboard_line(proc: subprocess.Popen, timeout: float) -> str:
    """The bench's 'run <id>: dashboard <url>' line, read from its stderr."""
    async def read() -> str:
        while True:
            line = await asyncio.to_thread(proc.stderr.readline)
            if not line:
                raise AssertionError(f"the benchmark exited (rc {proc.wait()}) before it started a run")
            if ": dashboard http" in line:
                return line
    return await asyncio.wait_for(read(), timeout)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
async def test_a_signal_stops_the_run_and_the_result_so_far_is_written(tmp_path, sig):
    bench = tmp_path / "bench"  # a copy, so the result lands in tmp_path/bench/results
    bench.mkdir()
    for f in (ROOT / "bench").glob("*.py"):
        shutil.copy(f, bench)
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    # target_return out of CartPole's reach: only the signal ends the first seed's run
    proc = subprocess.Popen([sys.executable, str(bench / "cartpole.py"), "--seeds", "3", "--timeout", "600",
                             "--set", "target_return=100000", "--set", "num_actors=1", "--name", "cut"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            # as in a terminal: a shell's background job would start with SIGINT ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = await _dashboard_line(proc, 180)
        run_id, url = re.match(r"run (\S+): dashboard (http://[^/]+)/", line).groups()
        async with GatewayClient(url) as gw:
            await poll(lambda: gw.run(run_id), lambda v: v["state"] == "running" and v["updates"] > 5,
                       180, "run trains")
        proc.send_signal(sig)
        rc = await asyncio.to_thread(proc.wait, 180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 0, proc.stderr.read()
    result = json.loads((bench / "results" / "cut.json").read_text())
    assert len(result["runs"]) == 1, "the benchmark went on to the next seed after the signal"
    run = result["runs"][0]
    assert run["state"] == "stopped" and run["agent_steps"] > 0 and run["seed"] == 0, run
