"""Connecting to NATS and making sure the JetStream assets exist.

Every service calls `connect` then `ensure_assets`; creation is idempotent,
so services may start in any order against an embedded or external server.
"""
from __future__ import annotations

import asyncio
import logging
import os
from typing import Optional

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, ObjectStoreConfig, StreamConfig
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from shared import wiring

log = logging.getLogger(__name__)

NATS_URL_ENV = "RL_NATS_URL"
# nats-server's default max_payload: the largest message a stock server takes. Actors
# use the connected server's own figure; benchmarks without a server use this one.
NATS_MAX_PAYLOAD = 1 << 20


def nats_url(explicit: Optional[str] = None) -> str:
    return explicit or os.environ.get(NATS_URL_ENV, "nats://127.0.0.1:4222")


async def connect(url: Optional[str], name: str, counters: Optional[dict] = None) -> Client:
    """Connect with endless reconnects; NATS errors are logged and counted, never fatal."""

    async def on_error(e: Exception) -> None:
        if counters is not None:
            key = "slow_consumer" if "slow consumer" in str(e).lower() else "nats_errors"
            counters[key] = counters.get(key, 0) + 1
        log.warning("%s: nats error: %s", name, e)

    async def on_disconnect() -> None:
        log.warning("%s: disconnected from nats", name)

    async def on_reconnect() -> None:
        if counters is not None:
            counters["reconnects"] = counters.get("reconnects", 0) + 1
        log.warning("%s: reconnected to nats", name)

    return await nats.connect(
        nats_url(url), name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
        connect_timeout=5, allow_reconnect=True, error_cb=on_error, disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect, pending_size=64 * 1024 * 1024)


class Assets:
    """The JetStream handles every service needs."""

    def __init__(self, js: JetStreamContext, runs: KeyValue, weights: ObjectStore):
        self.js, self.runs, self.weights = js, runs, weights


async def ensure_assets(nc: Client, retries: int = 40) -> Assets:
    """Create (or open) the runs KV, weights object store and metrics stream."""
    js = nc.jetstream(timeout=10)
    for attempt in range(retries):
        try:
            try:
                runs = await js.key_value(wiring.RUNS_BUCKET)
            except Exception:
                runs = await js.create_key_value(KeyValueConfig(bucket=wiring.RUNS_BUCKET, history=8))
            try:
                weights = await js.object_store(wiring.WEIGHTS_BUCKET)
            except Exception:
                weights = await js.create_object_store(wiring.WEIGHTS_BUCKET, ObjectStoreConfig(
                    bucket=wiring.WEIGHTS_BUCKET, description="latest policy weights per run"))
            try:
                await js.stream_info(wiring.METRICS_STREAM)
            except Exception:
                await js.add_stream(StreamConfig(
                    name=wiring.METRICS_STREAM, subjects=[wiring.METRICS_WILDCARD],
                    max_msgs_per_subject=100_000, max_bytes=512 * 1024 * 1024))
            return Assets(js, runs, weights)
        except Exception as e:  # JetStream not ready yet, or a creation race between services
            if attempt == retries - 1:
                raise
            log.info("jetstream assets not ready (%s); retrying", e)
            await asyncio.sleep(0.25)
    raise RuntimeError("unreachable")
