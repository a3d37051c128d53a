"""The gateway as its own process against a real nats-server: validation, auth, lifecycle."""
import aiohttp
import pytest

from services.launcher.stack import wait_port
from shared.client import GatewayClient, GatewayError


@pytest.fixture
def gateway(nats_stack):
    nats_stack.start("gateway")
    wait_port(nats_stack.gateway_port, timeout=60)
    return nats_stack


async def test_validation_names_the_field(gateway):
    async with GatewayClient(gateway.gateway_url, gateway.api_token) as gw:
        await gw.wait_ready()
        for body, field in [({"learning_rate": -1}, "learning_rate"), ({"env_id": "NoSuchEnv-v9"}, "env_id"),
                            ({"num_envs": 100000}, "num_envs"), ({"algorithm": "dqn"}, "algorithm"),
                            ({"bogus": 1}, "bogus"), ({"unroll_length": "x"}, "unroll_length")]:
            with pytest.raises(GatewayError) as e:
                await gw.start_run(body)
            assert e.value.status == 422
            assert any(field in map(str, err["loc"]) for err in e.value.detail), (body, e.value.detail)


async def test_unknown_run_is_404(gateway):
    async with GatewayClient(gateway.gateway_url, gateway.api_token) as gw:
        await gw.wait_ready()
        for call in (gw.run("nope"), gw.stop("nope"), gw.metrics("nope"), gw.run("bad id!")):
            with pytest.raises(GatewayError) as e:
                await call
            assert e.value.status == 404


async def test_mutating_calls_need_the_token(gateway):
    async with GatewayClient(gateway.gateway_url, "wrong") as gw:
        await gw.wait_ready()
        with pytest.raises(GatewayError) as e:
            await gw.start_run({})
        assert e.value.status == 401
        assert await gw.runs() == []  # reads stay open


async def test_pending_run_lifecycle_and_restart(gateway):
    async with GatewayClient(gateway.gateway_url, gateway.api_token) as gw:
        await gw.wait_ready()
        run = await gw.start_run({"env_id": "CartPole-v1", "num_envs": 4})
        assert run["state"] == "pending" and run["config"]["num_envs"] == 4 and run["actors"] == 0
        assert [r["id"] for r in await gw.runs()] == [run["id"]]
        stopped = await gw.stop(run["id"])  # no learner: a pending run stops at once
        assert stopped["state"] == "stopped"
        with pytest.raises(GatewayError) as e:
            await gw.stop(run["id"])
        assert e.value.status == 409
    # A restarted gateway still knows every run (records live in the KV bucket).
    gateway.kill("gateway")
    gateway.start("gateway")
    wait_port(gateway.gateway_port, timeout=60)
    async with GatewayClient(gateway.gateway_url, gateway.api_token) as gw:
        await gw.wait_ready()
        assert (await gw.run(run["id"]))["state"] == "stopped"


async def test_openapi_is_served(gateway):
    async with aiohttp.ClientSession() as s, s.get(gateway.gateway_url + "/openapi.json") as r:
        spec = await r.json()
    assert "/runs" in spec["paths"] and "/runs/{run_id}/stop" in spec["paths"]
    # every status a route answers is documented (tests/test_fuzz_rest.py checks that against the server)
    responses = {f"{m.upper()} {p}": set(op["responses"]) for p, ops in spec["paths"].items() for m, op in ops.items()}
    assert {"201", "400", "401", "413", "422"} <= responses["POST /runs"]
    assert {"200", "401", "404", "409"} <= responses["POST /runs/{run_id}/stop"]
    assert {"202", "400", "401", "404", "409", "413", "422"} <= responses["POST /runs/{run_id}/eval"]
    assert {"200", "404"} <= responses["GET /runs/{run_id}/metrics"]
    video = spec["paths"]["/runs/{run_id}/evals/{job_id}/video"]["get"]["responses"]["200"]
    assert list(video["content"]) == ["image/gif"]
    assert spec["components"]["schemas"]["RunView"]["properties"]["actors"]["type"] == "integer"
