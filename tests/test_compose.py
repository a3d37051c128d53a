"""compose.yaml: valid for docker-compose, and its services really start with
the commands and environment it gives them (against an embedded nats-server,
since no Docker engine is needed for that)."""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from services.launcher.stack import ROOT, Stack, free_port, wait_port
from shared.client import GatewayClient

COMPOSE = ROOT / "compose.yaml"
TOKENS = {"NATS_TOKEN": "compose-nats-secret", "RL_API_TOKEN": "compose-api-secret"}
OURS = ("gateway", "learner", "learner-cpu", "replay", "actor")  # built from our image
_VAR = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


def interpolate(value, env: dict[str, str]):
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, applied to every string."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match) -> str:
        name, op, arg = m.groups()
        if env.get(name):
            return env[name]
        if op == "?":
            raise KeyError(f"{name}: {arg}")
        return arg if op == "-" else ""

    return _VAR.sub(one, value)


def services(env: dict[str, str]) -> dict[str, dict]:
    raw = yaml.safe_load(COMPOSE.read_text())  # safe_load resolves the x- anchors and << merges
    return {name: interpolate(svc, env) for name, svc in raw["services"].items()}


def docker_compose() -> str:
    found = shutil.which("docker-compose")
    if not found:
        pytest.skip("Debian's docker-compose is not installed (./dev test installs it as root)")
    return found


def test_compose_config_is_valid():
    dc = docker_compose()
    env = dict(os.environ, **TOKENS)
    for profile in ([], ["--profile", "cpu"], ["--profile", "tensorboard"]):
        out = subprocess.run([dc, "-f", str(COMPOSE), *profile, "config"], env=env, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
    resolved = yaml.safe_load(out.stdout)["services"]
    ours = services(env)
    # docker-compose resolves the file the way this test's reader does.
    for name, svc in resolved.items():
        assert svc["command"] == ours[name]["command"], name
        assert svc.get("environment", {}) == ours[name].get("environment", {}), name
    gpu = ours["learner"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["count"] == 2 and "gpu" in gpu["capabilities"]
    assert ours["learner"]["command"] == ours["learner-cpu"]["command"] and "deploy" not in ours["learner-cpu"]
    for name in ("gateway", "learner", "learner-cpu"):
        assert any(v.startswith("run-data:/data") for v in ours[name]["volumes"]), name
    # Nothing runs unauthenticated: without the tokens, compose refuses the file.
    bare = {k: v for k, v in os.environ.items() if k not in TOKENS}
    out = subprocess.run([dc, "-f", str(COMPOSE), "config", "-q"], env=bare, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0 and "NATS_TOKEN" in out.stderr


def as_local(svc: dict, nats_port: int, data: Path, gateway_port: int) -> tuple[list[str], dict[str, str]]:
    """A compose service's command and environment, pointed at this machine instead of the containers:
    the `nats` host at the embedded server, /data at a temp dir, the gateway's port at a free one."""
    cmd = [sys.executable if a == "python" else a for a in svc["command"]]
    cmd = [str(data) + a[len("/data"):] if a.startswith("/data") else a for a in cmd]
    if "--port" in cmd:
        cmd[cmd.index("--port") + 1] = str(gateway_port)
    env = {k: str(v).replace("@nats:4222", f"@127.0.0.1:{nats_port}") for k, v in svc.get("environment", {}).items()}
    return cmd, env


@pytest.mark.e2e
async def test_services_start_with_compose_commands(tmp_path):
    ours = services(dict(os.environ, **TOKENS))
    nats_cmd = ours["nats"]["command"]
    stack = Stack(tmp_path / "stack")
    stack.nats_token = nats_cmd[nats_cmd.index("--auth") + 1]  # the token compose gives nats-server
    stack.api_token = "not-the-compose-token"  # the gateway must take compose's RL_API_TOKEN
    data = tmp_path / "data"
    gateway_port = free_port()
    try:
        stack.start_nats()
        for name, count in (("gateway", 1), ("learner-cpu", 1), ("replay", 1), ("actor", 2)):
            cmd, env = as_local(ours[name], stack.nats_port, data, gateway_port)
            assert env["RL_NATS_URL"] == stack.nats_url
            for i in range(count):
                stack.spawn(f"{name}-{i}", cmd, env=env)
        wait_port(gateway_port, timeout=90)
        preset = json.loads((ROOT / "configs" / "cartpole.json").read_text())
        config = dict(preset, target_return=None, max_seconds=None, max_agent_steps=20_000)
        async with GatewayClient(f"http://127.0.0.1:{gateway_port}", TOKENS["RL_API_TOKEN"]) as gw:
            await gw.wait_ready(90)
            run = await gw.start_run(config)
            final = await gw.wait_final(run["id"], timeout=300)
        assert final["state"] == "finished" and final["agent_steps"] >= 20_000, final
        assert final["replay"]["fragments"] > 0  # the replay shard got its share of the trajectories
        # The volume layout compose.yaml describes: checkpoints and per-run logs under /data.
        assert Path(final["checkpoint"]).is_relative_to(data / "checkpoints")
        for _ in range(60):
            if (data / "logs" / run["id"] / "metrics.jsonl").exists():
                break
            await asyncio.sleep(0.5)
        assert (data / "logs" / run["id"] / "tb").is_dir()
    finally:
        stack.close()
