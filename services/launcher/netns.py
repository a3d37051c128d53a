"""Hosts on one machine: Linux network namespaces joined by veth pairs (iproute2).

Used by the cross-host test and the scaling benchmark to put nats-server and
the learner on one "host" and actors on others, each reached only over its
own link, so a link can be cut and restored like a network fault:

    root ns --veth 10.A.0.0/30-- server ns --veth 10.A.i.0/30-- host ns i (i = 1..n)

Only namespaces and addresses made here are touched, and `close()` deletes
them (deleting a namespace deletes its veth ends). Needs root and `ip`.
"""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import uuid
from typing import Optional


def _ip(*args: str, netns: Optional[str] = None) -> None:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


def unavailable_reason() -> Optional[str]:
    """None if namespaces can be made here, else why not (for a clear skip)."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"rlprobe-{uuid.uuid4().hex[:6]}"
    try:
        _ip("netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as e:
        err = getattr(e, "stderr", b"") or b""
        return f"cannot create a network namespace: {err.decode(errors='replace').strip() or e}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    return None


class Hosts:
    """A server namespace reachable from the root namespace, plus `n` host namespaces."""

    def __init__(self, n: int):
        tag = uuid.uuid4().hex[:5]
        self.a = random.randint(64, 250)  # 10.A.x.x: a private /16 per instance, made here only
        self.server = f"rl{tag}-srv"
        self.hosts = [f"rl{tag}-h{i}" for i in range(1, n + 1)]
        self._links: list[tuple[str, str]] = []  # (server-side veth, other namespace)
        self.closed = False
        try:
            _ip("netns", "add", self.server)
            _ip("link", "set", "lo", "up", netns=self.server)
            self._link(0, f"rl{tag}r", f"rl{tag}s0", None)
            for i, ns in enumerate(self.hosts, start=1):
                _ip("netns", "add", ns)
                _ip("link", "set", "lo", "up", netns=ns)
                self._link(i, f"rl{tag}h{i}", f"rl{tag}s{i}", ns)
        except Exception:
            self.close()
            raise

    def _link(self, i: int, outer: str, inner: str, outer_ns: Optional[str]) -> None:
        """veth `outer` (in outer_ns, .2) <-> `inner` (in the server ns, .1) on 10.A.i.0/30."""
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", self.server)
        if outer_ns:
            _ip("link", "set", outer, "netns", outer_ns)
        _ip("addr", "add", f"10.{self.a}.{i}.2/30", "dev", outer, netns=outer_ns)
        _ip("addr", "add", f"10.{self.a}.{i}.1/30", "dev", inner, netns=self.server)
        _ip("link", "set", outer, "up", netns=outer_ns)
        _ip("link", "set", inner, "up", netns=self.server)
        self._links.append((inner, outer_ns or ""))

    @property
    def server_addr(self) -> str:
        """The server namespace's address as the root namespace sees it."""
        return f"10.{self.a}.0.1"

    def server_addr_for(self, host: int) -> str:
        """The server namespace's address on host `host`'s link (1-based)."""
        return f"10.{self.a}.{host}.1"

    def cut(self, host: int) -> None:
        """Take host `host`'s link down (server side): its packets go nowhere."""
        _ip("link", "set", self._links[host][0], "down", netns=self.server)

    def restore(self, host: int) -> None:
        _ip("link", "set", self._links[host][0], "up", netns=self.server)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for ns in [*self.hosts, self.server]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        if self._links:  # the root-side veth goes with its peer; make sure
            subprocess.run(["ip", "link", "del", self._links[0][0].replace("s0", "r")], capture_output=True,
                           timeout=30)

    def __enter__(self) -> "Hosts":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
