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

import numpy as np
import pytest
import yaml

from services.launcher.certs import make_certificates
from services.launcher.stack import ROOT, Stack, free_port, nats_server_binary, wait_port
from shared import bus, roles, wire, wiring
from shared.client import GatewayClient

COMPOSE = ROOT / "compose.yaml"
SECRETS = {"GATEWAY_PASSWORD": "compose-gateway-pw", "LEARNER_PASSWORD": "compose-learner-pw",
           "REPLAY_PASSWORD": "compose-replay-pw", "ACTOR_PASSWORD": "compose-actor-pw",
           "RL_API_TOKEN": "compose-api-secret", "NATS_TLS_DIR": "/srv/tls"}
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
    env = dict(os.environ, **SECRETS)
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
    # Each service connects with its own role's credential, over TLS; actors carry no --index.
    for name in OURS:
        url = ours[name]["environment"]["RL_NATS_URL"]
        role = "learner" if name.startswith("learner") else name
        assert url == f"tls://{role}:{SECRETS[role.upper() + '_PASSWORD']}@nats:4222", name
    assert "--index" not in ours["actor"]["command"]
    # The broker's rules are shared/roles.py's, written out by `python -m shared.roles`.
    assert (ROOT / "compose" / "nats.conf").read_text() == roles.compose_config()
    # Nothing runs unauthenticated: without the passwords, compose refuses the file.
    bare = {k: v for k, v in os.environ.items() if k not in SECRETS}
    out = subprocess.run([dc, "-f", str(COMPOSE), "config", "-q"], env=bare, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0 and "PASSWORD" in out.stderr


def as_local(svc: dict, nats_port: int, data: Path, tls: Path, gateway_port: int) -> tuple[list[str], dict[str, str]]:
    """A compose service's command and environment, pointed at this machine instead of the containers:
    the `nats` host at the embedded server, /data at a temp dir, the CA at the test's, the gateway's
    port at a free one."""
    cmd = [sys.executable if a == "python" else a for a in svc["command"]]
    cmd = [str(data) + a[len("/data"):] if a.startswith("/data") else a for a in cmd]
    if "--port" in cmd:
        cmd[cmd.index("--port") + 1] = str(gateway_port)
    env = {k: str(v).replace("@nats:4222", f"@127.0.0.1:{nats_port}").replace("/etc/nats/tls", str(tls))
           for k, v in svc.get("environment", {}).items()}
    return cmd, env


def start_compose_nats(stack: Stack, nats: dict, tls: Path) -> None:
    """nats-server with compose/nats.conf and the environment compose gives it, its paths and port local."""
    stack.nats_port = free_port()
    conf = (ROOT / "compose" / "nats.conf").read_text().replace('"0.0.0.0:4222"', f'"127.0.0.1:{stack.nats_port}"')
    conf = conf.replace('"/data"', json.dumps(str(stack.run_dir / "nats"))).replace("/etc/nats/tls", str(tls))
    conf = conf.replace("http_port: 8222", f"http_port: {free_port()}")
    (stack.run_dir / "nats.conf").write_text(conf)
    proc = stack.spawn("nats", [nats_server_binary(), "-c", str(stack.run_dir / "nats.conf")],
                       env={k: str(v) for k, v in nats["environment"].items()})
    wait_port(stack.nats_port, timeout=60, proc=proc, log=stack.logs / "nats.log")


@pytest.mark.e2e
async def test_services_start_with_compose_commands(tmp_path):
    tls = tmp_path / "tls"
    certs = make_certificates(tls, ["nats", "127.0.0.1", "localhost"])  # what an operator makes for compose
    ours = services(dict(os.environ, **(SECRETS | {"NATS_TLS_DIR": str(tls)})))
    stack = Stack(tmp_path / "stack")
    stack.passwords = {role: SECRETS[f"{role.upper()}_PASSWORD"] for role in roles.ROLES}
    stack.tls = certs
    data = tmp_path / "data"
    gateway_port = free_port()
    observed: dict[tuple[str, int], np.ndarray] = {}
    try:
        start_compose_nats(stack, ours["nats"], tls)
        for name, count in (("gateway", 1), ("learner-cpu", 1), ("replay", 1), ("actor", 3)):
            cmd, env = as_local(ours[name], stack.nats_port, data, tls, gateway_port)
            assert env["RL_NATS_URL"].startswith("tls://")
            for i in range(count):
                stack.spawn(f"{name}-{i}", cmd, env=env)
        wait_port(gateway_port, timeout=90)
        preset = json.loads((ROOT / "configs" / "cartpole.json").read_text())
        config = dict(preset, target_return=None, max_seconds=None, max_agent_steps=20_000, num_actors=3,
                      num_envs=4, batch_size=192)
        observer = await bus.connect(stack.url_for("learner"), "observer", ca=str(certs.ca))
        async with GatewayClient(f"http://127.0.0.1:{gateway_port}", SECRETS["RL_API_TOKEN"]) as gw:
            await gw.wait_ready(90)
            run = await gw.start_run(config)

            async def on_traj(msg) -> None:
                meta, arrays = wire.decode(msg.data)
                observed[(meta["actor"], meta["version"])] = arrays["obs"]

            await observer.subscribe(wiring.traj(run["id"]), cb=on_traj)
            final = await gw.wait_final(run["id"], timeout=300)
        await observer.close()
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
    # Three actors started with the same command line got three slots, so three different env
    # seeds: in a round (the fragments acted on one weights version) their observations differ.
    rounds: dict[int, list[np.ndarray]] = {}
    for (actor, version), obs in observed.items():
        rounds.setdefault(version, []).append(obs)
    full = [obs for obs in rounds.values() if len(obs) == 3]
    assert full, {v: len(o) for v, o in rounds.items()}
    for obs in full:
        assert all(not np.array_equal(obs[i], obs[j]) for i in range(3) for j in range(i + 1, 3))
