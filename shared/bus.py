"""Connecting to NATS and making sure the JetStream assets exist.

Every service calls `connect` then `ensure_assets`; creation is idempotent,
so services may start in any order against an embedded or external server.
"""
from __future__ import annotations

import asyncio
import logging
import os
import ssl
from typing import Optional

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, ObjectStoreConfig, StreamConfig
from nats.js.object_store import ObjectStore

from shared import jsapi, wiring

log = logging.getLogger(__name__)

NATS_URL_ENV = "RL_NATS_URL"
NATS_CA_ENV = "RL_NATS_CA"  # the CA certificate (PEM file) a tls:// server is verified with
# nats-server's default max_payload: the largest message a stock server takes. Actors
# use the connected server's own figure; benchmarks without a server use this one.
NATS_MAX_PAYLOAD = 1 << 20


def nats_url(explicit: Optional[str] = None) -> str:
    return explicit or os.environ.get(NATS_URL_ENV, "nats://127.0.0.1:4222")


async def connect(url: Optional[str], name: str, counters: Optional[dict] = None,
                  inbox_prefix: str = "_INBOX", ca: Optional[str] = None) -> Client:
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
        reconnected_cb=on_reconnect, pending_size=64 * 1024 * 1024, inbox_prefix=inbox_prefix,
        tls=tls_context(nats_url(url), ca))


def tls_context(url: str, ca: Optional[str] = None) -> Optional[ssl.SSLContext]:
    """For a tls:// URL: verify the server against `ca` ($RL_NATS_CA), or the system's CAs
    (a certificate from a public CA); None for nats:// (loopback, or a private network's
    own encryption)."""
    if not url.startswith("tls://"):
        return None
    ca = ca or os.environ.get(NATS_CA_ENV) or None
    return ssl.create_default_context(cafile=ca)


class Assets:
    """The JetStream handles the trusted services use (actors use none: see shared/weights.py)."""

    def __init__(self, js: JetStreamContext, runs: jsapi.Bucket, weights: ObjectStore, actors: Optional[jsapi.Bucket]):
        self.js, self.runs, self.weights, self.actors = js, runs, weights, actors


async def ensure_assets(nc: Client, create: bool = True, retries: int = 120) -> Assets:
    """Open the runs KV, the weights object store, the actors' slot KV and the metrics
    stream, creating what is missing when `create` (the learner and the gateway, whose
    credentials may manage JetStream; a replay shard only opens them, and waits until
    they exist)."""
    js = nc.jetstream(timeout=10)
    for attempt in range(retries):
        try:
            try:
                runs = await js.key_value(wiring.RUNS_BUCKET)
            except Exception:
                if not create:
                    raise
                runs = await js.create_key_value(KeyValueConfig(bucket=wiring.RUNS_BUCKET, history=8))
            try:
                weights = await js.object_store(wiring.WEIGHTS_BUCKET)
            except Exception:
                if not create:
                    raise
                weights = await js.create_object_store(wiring.WEIGHTS_BUCKET, ObjectStoreConfig(
                    bucket=wiring.WEIGHTS_BUCKET, description="latest policy weights per run"))
            actors = None
            if create:
                try:
                    actors = await js.key_value(wiring.ACTORS_BUCKET)
                except Exception:
                    actors = await js.create_key_value(KeyValueConfig(bucket=wiring.ACTORS_BUCKET, history=1))
                try:
                    await js.stream_info(wiring.METRICS_STREAM)
                except Exception:
                    await js.add_stream(StreamConfig(
                        name=wiring.METRICS_STREAM, subjects=[wiring.METRICS_WILDCARD],
                        max_msgs_per_subject=100_000, max_bytes=512 * 1024 * 1024))
            return Assets(js, jsapi.Bucket(js, runs, wiring.RUNS_BUCKET), weights,
                          None if actors is None else jsapi.Bucket(js, actors, wiring.ACTORS_BUCKET))
        except Exception as e:  # JetStream not ready yet, or a creation race between services
            if attempt == retries - 1:
                raise
            log.info("jetstream assets not ready (%s); retrying", e)
            await asyncio.sleep(0.25 if create else 1.0)
    raise RuntimeError("unreachable")
