"""shared/jsapi.py reads JetStream's KV and object-store layouts with public calls
only. These tests hold it against nats-py's own writers on a real nats-server: a
release that changes either layout fails here, not in a run."""
import hashlib
import os

import pytest

from shared import bus, jsapi, wiring


async def test_kv_keys_lists_every_key_nats_py_wrote(nc):
    assets = await bus.ensure_assets(nc)
    for key in ("run-b", "run-a", "run-c"):
        await assets.runs.kv.put(key, b"{}")
    await assets.runs.kv.delete("run-c")
    assert await jsapi.kv_keys(nc.jetstream(), wiring.RUNS_BUCKET) == ["run-a", "run-b", "run-c"]
    assert await assets.runs.keys() == ["run-a", "run-b", "run-c"]


async def test_read_object_reads_what_the_object_store_wrote_without_a_consumer(nc):
    assets = await bus.ensure_assets(nc)
    data = os.urandom(3 * 128 * 1024 + 17)  # several chunks of nats-py's default size
    await assets.weights.put("r1", data)
    info, got = await jsapi.read_object(nc.jetstream(), wiring.WEIGHTS_BUCKET, "r1", max_bytes=1 << 20)
    assert got == data and info.chunks == 4 and hashlib.sha256(got).digest()
    # a new version replaces the old one; the reader gets the new bytes
    await assets.weights.put("r1", b"v2")
    assert (await jsapi.read_object(nc.jetstream(), wiring.WEIGHTS_BUCKET, "r1", 1 << 20))[1] == b"v2"
    consumers = await nc.jetstream().consumers_info(jsapi.object_stream(wiring.WEIGHTS_BUCKET))
    assert consumers == []  # direct gets only
    with pytest.raises(jsapi.ObjectGone):
        await jsapi.read_object(nc.jetstream(), wiring.WEIGHTS_BUCKET, "no-such-run", 1 << 20)
    with pytest.raises(ValueError):
        await jsapi.read_object(nc.jetstream(), wiring.WEIGHTS_BUCKET, "r1", max_bytes=1)
