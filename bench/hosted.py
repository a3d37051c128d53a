"""A benchmark stack whose actors live on network-namespace "hosts" where those
can be made (loopback otherwise): the core services in the server namespace,
actor i on host i, each reached over its own veth link."""
from __future__ import annotations

import contextlib
import subprocess
import tempfile
from typing import Iterator, Optional

from services.launcher import netns
from services.launcher.stack import Stack


class HostedStack:
    def __init__(self, stack: Stack, hosts: Optional[netns.Hosts], reason: Optional[str]):
        self.stack, self.hosts = stack, hosts
        self.where = "network namespaces + veth" if hosts else f"loopback ({reason})"

    def start_actor(self, i: int, *args: str) -> subprocess.Popen:
        """Actor i (0-based) on host i+1, talking to NATS over that host's link, over TLS,
        with the actor's credential; its slot comes from the registry, as on a real host."""
        h = self.hosts
        extra = ("--nats", self.stack.nats_url_at(h.server_addr_for(i + 1), role="actor")) if h else ()
        return self.stack.start("actor", *extra, *args, name=f"actor-{i}", netns=h.hosts[i] if h else None)


@contextlib.contextmanager
def hosted_stack(n_hosts: int) -> Iterator[HostedStack]:
    """nats-server, gateway and learner started; actors left to the caller."""
    reason = netns.unavailable_reason()
    hosts = netns.Hosts(n_hosts) if reason is None else None
    try:
        with tempfile.TemporaryDirectory() as d:
            kw = dict(host=hosts.server_addr, nats_bind="0.0.0.0", netns=hosts.server, tls=True,
                      tls_hosts=tuple(hosts.server_addr_for(i + 1) for i in range(n_hosts))) if hosts else {}
            with Stack(d, **kw) as stack:
                stack.start_nats()
                stack.start("gateway")
                stack.start("learner", "--checkpoint-dir", str(stack.run_dir / "ckpt"))
                yield HostedStack(stack, hosts, reason)
    finally:
        if hosts:
            hosts.close()
