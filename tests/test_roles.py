"""The broker's roles, enforced by a real nats-server: an actor's credential may use
its data path and nothing else; TLS when the broker listens beyond loopback, and a
client that does not trust the stack's CA is refused."""
import asyncio
import json
import ssl

import nats
import pytest
from nats.js.api import StreamConfig

from services.launcher.stack import ROOT, Stack
from shared import bus, jsapi, roles, wiring


async def connect_as(stack: Stack, role: str, errors: list[str], **kw) -> nats.aio.client.Client:
    async def on_error(e: Exception) -> None:
        errors.append(str(e).lower())

    return await nats.connect(stack.url_for(role), error_cb=on_error, max_reconnect_attempts=0, **kw)


async def refused(errors: list[str], subject: str) -> bool:
    for _ in range(50):
        if any("permissions violation" in e and subject.lower() in e for e in errors):
            return True
        await asyncio.sleep(0.1)
    return False


async def test_an_actors_credential_may_use_its_data_path_and_nothing_else(nats_stack):
    trusted = await bus.connect(nats_stack.nats_url, "trusted")
    assets = await bus.ensure_assets(trusted)
    errors: list[str] = []
    actor = await connect_as(nats_stack, "actor", errors, inbox_prefix=wiring.ACTOR_INBOX_PREFIX)
    seen: list[str] = []

    async def on_msg(msg) -> None:
        seen.append(msg.subject)

    try:
        for subject in (wiring.traj("r1"), wiring.weights("r1"), wiring.actor_heartbeat("r1"), "metrics.r1.learner"):
            await trusted.subscribe(subject, cb=on_msg)
        await trusted.flush()
        # its data path
        await actor.publish(wiring.traj("r1"), b"fragment")
        await actor.publish(wiring.actor_heartbeat("r1"), b"{}")
        await actor.subscribe(wiring.weights("r1"))
        await assets.weights.put("r1", b"weights")
        _, data = await jsapi.read_object(actor.jetstream(), wiring.WEIGHTS_BUCKET, "r1", 1 << 20)
        assert data == b"weights"
        # and nothing else: a run record, a weights notice, a metrics point, a stream
        await actor.publish(f"$KV.{wiring.RUNS_BUCKET}.r1", b'{"forged": true}')
        await actor.publish(wiring.weights("r1"), json.dumps({"version": 10**9}).encode())
        await actor.publish("metrics.r1.learner", b'{"agent_steps": 1000000000000000}')
        with pytest.raises(Exception):
            await actor.jetstream(timeout=1).add_stream(StreamConfig(name="FORGED", subjects=["forged.>"]))
        await actor.subscribe(wiring.traj("r1"))  # nor read other actors' fragments
        await actor.flush()
        for subject in (f"$KV.{wiring.RUNS_BUCKET}.r1", wiring.weights("r1"), "metrics.r1.learner",
                        "$JS.API.STREAM.CREATE.FORGED", wiring.traj("r1")):
            assert await refused(errors, subject), (subject, errors)
        # Delivery to the observer is asynchronous (a callback task per subscription): wait
        # for the two allowed messages, then make sure nothing else came with them.
        for _ in range(100):
            if len(seen) >= 2:
                break
            await asyncio.sleep(0.1)
        await trusted.flush()
        assert seen == [wiring.traj("r1"), wiring.actor_heartbeat("r1")], (seen, errors, trusted.is_connected)
        assert await assets.runs.keys() == []
        with pytest.raises(Exception):
            await trusted.jetstream().stream_info("FORGED")
    finally:
        await actor.close()
        await trusted.close()


def test_the_compose_broker_config_is_the_roles_table():
    assert (ROOT / "compose" / "nats.conf").read_text() == roles.compose_config()


@pytest.fixture
def tls_stack(tmp_path):
    stack = Stack(tmp_path / "stack", tls=True)
    stack.start_nats()
    yield stack
    stack.close()


async def test_tls_is_required_and_the_stacks_ca_verifies_the_server(tls_stack):
    assert tls_stack.url_for("actor").startswith("tls://")
    ok = await bus.connect(tls_stack.url_for("actor"), "actor", inbox_prefix=wiring.ACTOR_INBOX_PREFIX,
                           ca=str(tls_stack.tls.ca))
    await ok.close()
    # a client that does not trust the stack's CA (the system's CAs only) is refused
    with pytest.raises(Exception) as e:
        await nats.connect(tls_stack.url_for("actor"), tls=ssl.create_default_context(), max_reconnect_attempts=0,
                           connect_timeout=5, allow_reconnect=False)
    assert "certificate" in str(e.value).lower() or isinstance(e.value, (ssl.SSLError, nats.errors.NoServersError))
    # and one in clear text never gets to send its credential: the server demands TLS
    with pytest.raises(Exception):
        await nats.connect(tls_stack.url_for("actor").replace("tls://", "nats://"), max_reconnect_attempts=0,
                           connect_timeout=5, allow_reconnect=False)
