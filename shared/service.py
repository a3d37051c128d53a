"""What every service process shares: logging, signals, argument basics."""
from __future__ import annotations

import argparse
import asyncio
import io
import logging
import os
import signal
import socket
from typing import Awaitable, Callable


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--nats", default=None, help="NATS URL (default: $RL_NATS_URL or nats://127.0.0.1:4222)")
    p.add_argument("--log-level", default=os.environ.get("RL_LOG_LEVEL", "INFO"))
    return p


def run_service(main: Callable[[asyncio.Event], Awaitable[None]], log_level: str = "INFO") -> None:
    """Run main(stop_event) until it returns; SIGTERM/SIGINT set the event so
    the service can finish its current step and leave cleanly."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
        await main(stop)

    asyncio.run(runner())


def dump_tasks() -> None:
    """SIGUSR1: log where every asyncio task of this service is waiting (for a stuck service)."""
    out = io.StringIO()
    for task in asyncio.all_tasks():
        task.print_stack(file=out)
    logging.getLogger("service").warning("asyncio tasks:\n%s", out.getvalue())


class Counters(dict):
    """Named event counts (dropped, rejected, ...) that a service reports."""

    def inc(self, key: str, n: int = 1) -> None:
        self[key] = self.get(key, 0) + n


def free_port() -> int:
    """A free TCP port on loopback (for nats-server, the gateway, torch.distributed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent() -> None:
    """Popen preexec_fn: ask Linux to send SIGTERM when the parent dies, so a killed
    launcher (or learner leader) leaves no orphaned services behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the parent's own cleanup still runs on normal exits
