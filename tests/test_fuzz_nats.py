"""Fuzz the data path: random, truncated, bit-flipped, oversized, wrong-version,
wrong-shape and foreign-run messages published to a live run's subjects. The
services stay up, the rejection counters account for exactly what was sent,
and training goes on."""
from __future__ import annotations

import asyncio
import json
import struct

import numpy as np
import pytest
from nats.errors import MaxPayloadError

from services.launcher.stack import ROOT
from shared import bus, wire, wiring
from shared.client import GatewayClient

from helpers import poll, started_stack

pytestmark = pytest.mark.e2e
PRESET = json.loads((ROOT / "configs" / "cartpole.json").read_text())
PER_KIND = 25


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory):
    with started_stack(tmp_path_factory, "nats-fuzz", actors=1) as stack:
        yield stack


def mutations(real: bytes, rng: np.random.Generator) -> dict[str, list[bytes]]:
    """Bad messages by kind, each PER_KIND of them, all derived from one real fragment."""
    meta, specs, offset = wire.decode_header(real)
    _, arrays = wire.decode(real)
    out: dict[str, list[bytes]] = {k: [] for k in (
        "random", "truncated", "bit_flipped", "huge_header_claim", "oversized_header", "old_version",
        "wrong_shape", "wrong_dtype", "foreign_run", "not_a_fragment")}
    for _ in range(PER_KIND):
        out["random"].append(rng.bytes(int(rng.integers(0, 4096))))
        out["truncated"].append(real[:int(rng.integers(0, len(real)))])
        flipped = bytearray(real)
        flipped[int(rng.integers(0, len(real)))] ^= 1 << int(rng.integers(0, 8))
        out["bit_flipped"].append(bytes(flipped))
        out["huge_header_claim"].append(struct.pack("<4sII", wire.MAGIC, 2**31, 0) + real[12:])
        big = json.dumps({"v": wire.WIRE_VERSION, "meta": {"pad": "x" * (wire.MAX_HEADER_BYTES + 10)},
                          "arrays": []}).encode()
        out["oversized_header"].append(wire.frame(big, b""))
        out["old_version"].append(b"RLW1" + real[4:])
        bad = dict(arrays, obs=np.zeros((arrays["obs"].shape[0] + 1,) + arrays["obs"].shape[1:], np.float32))
        out["wrong_shape"].append(wire.encode(meta, bad))
        out["wrong_dtype"].append(wire.encode(meta, dict(arrays, actions=arrays["actions"].astype(np.int64))))
        out["foreign_run"].append(wire.encode(dict(meta, run="run-that-does-not-exist"), arrays))
        out["not_a_fragment"].append(wire.encode(dict(meta, kind="weights"), arrays))
    for blobs in out.values():
        assert len(blobs) == PER_KIND
    return out


async def replay_shard_counters(js, run_id: str) -> dict:
    """The newest replay metrics point of the run (its per-shard counters)."""
    info = await js.stream_info(wiring.METRICS_STREAM, subjects_filter=f"metrics.{run_id}.>")
    subject = next(s for s in (info.state.subjects or {}) if ".replay-" in s)
    return json.loads((await js.get_last_msg(wiring.METRICS_STREAM, subject)).data)


async def test_bad_messages_are_counted_and_training_goes_on(fuzz_stack):
    stack = fuzz_stack
    rng = np.random.default_rng(7)
    nc = await bus.connect(stack.url_for("actor"), "fuzzer", inbox_prefix=wiring.ACTOR_INBOX_PREFIX)  # an actor host
    observer = await bus.connect(stack.nats_url, "observer")  # trusted: reads fragments and the metrics stream
    try:
        async with GatewayClient(stack.gateway_url, stack.api_token) as gw:
            await gw.wait_ready()
            run = await gw.start_run(dict(PRESET, num_actors=1, target_return=None, max_seconds=600))
            rid = run["id"]
            captured: asyncio.Queue = asyncio.Queue(maxsize=1)

            async def grab(msg) -> None:
                if captured.empty():
                    captured.put_nowait(msg.data)

            sub = await observer.subscribe(wiring.traj(rid), cb=grab)
            real = await asyncio.wait_for(captured.get(), 180)
            await sub.unsubscribe()
            before = await _settled(gw, rid)

            bad = mutations(real, rng)
            sent_traj = 0
            for kind, blobs in bad.items():
                for blob in blobs:
                    await nc.publish(wiring.traj(rid), blob)
                    sent_traj += 1
                await nc.flush()
                await asyncio.sleep(0.2)  # a steady trickle: the subscriptions' pending limits are never hit
            ghost = [wire.encode({"kind": "fragment", "run": "ghost", "actor": "a", "version": 0},
                                 {"x": np.zeros(3, np.float32)}) for _ in range(PER_KIND)]
            for blob in ghost:
                await nc.publish(wiring.traj("ghost"), blob)  # a run that does not exist
            heartbeat_junk = [rng.bytes(64), b"{}", b'{"actor": 1, "slot": 0}', b'{"actor": "a b", "slot": 0}',
                              b'{"actor": "a", "slot": -1}', b"[" * 10000] * 5
            for blob in heartbeat_junk:
                await nc.publish(wiring.actor_heartbeat(rid), blob)
            await nc.flush()

            want_learner = before["counters"].get("rejected", 0) + sent_traj
            want_heartbeats = before["counters"].get("rejected_heartbeats", 0) + len(heartbeat_junk)
            after = await _wait(gw, rid, lambda v: v["counters"].get("rejected", 0) >= want_learner
                                and v["counters"].get("rejected_heartbeats", 0) >= want_heartbeats
                                and v["replay"].get("rejected", 0) >= before["replay"].get("rejected", 0) + sent_traj)
            await asyncio.sleep(3)  # nothing more trickles in: the counts are exact, not lower bounds
            after = await gw.run(rid)
            assert after["counters"]["rejected"] == want_learner
            assert after["counters"]["rejected_heartbeats"] == want_heartbeats
            assert after["replay"]["rejected"] == before["replay"].get("rejected", 0) + sent_traj
            shard = await replay_shard_counters(observer.jetstream(), rid)
            assert shard["shard_counters"].get("unknown_run", 0) >= len(ghost)
            with pytest.raises(MaxPayloadError):  # oversized messages never leave the client
                await nc.publish(wiring.traj(rid), b"\0" * (nc.max_payload + 1))

            # Training goes on, and every service is still up.
            await _wait(gw, rid, lambda v: v["updates"] > after["updates"] + 20)
            await gw.stop(rid)
            final = await gw.wait_final(rid, timeout=120)
        assert final["state"] == "stopped"
        for name, proc in stack.procs.items():
            assert proc.poll() is None, f"{name} died"
    finally:
        await nc.close()
        await observer.close()


async def _wait(gw: GatewayClient, rid: str, ok, timeout: float = 120) -> dict:
    return await poll(lambda: gw.run(rid), ok, timeout, "run view")


async def _settled(gw: GatewayClient, rid: str) -> dict:
    """A view once training is under way and replay has reported at least once."""
    return await _wait(gw, rid, lambda v: v["updates"] > 0 and v["replay"].get("received", 0) > 0, 180)
