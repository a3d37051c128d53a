"""Fuzz the gateway's REST API from its own OpenAPI schema (schemathesis):
whatever arrives, valid or not, with or without the token, never a 500."""
from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

from services.launcher.stack import wait_port

EXAMPLES = 60


@pytest.fixture(scope="module")
def gateway_stack(tmp_path_factory):
    from services.launcher.stack import Stack

    stack = Stack(tmp_path_factory.mktemp("rest-fuzz"))
    stack.start_nats()
    stack.start("gateway")
    wait_port(stack.gateway_port, timeout=60)
    yield stack
    stack.close()


def _operations(stack) -> list:
    schema = schemathesis.openapi.from_url(stack.gateway_url + "/openapi.json", wait_for_schema=60)
    return [result.ok() for result in schema.get_all_operations()]


def test_no_server_errors_from_schema_driven_requests(gateway_stack):
    ops = _operations(gateway_stack)
    labels = {op.label for op in ops}
    assert {"POST /runs", "GET /runs/{run_id}", "POST /runs/{run_id}/resume"} <= labels, labels
    session = requests.Session()
    seen: dict[int, int] = {}
    for op in ops:
        for auth in (True, False):
            headers = {"Authorization": f"Bearer {gateway_stack.api_token}"} if auth else {}

            @settings(max_examples=EXAMPLES, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy())
            def check(case) -> None:
                response = case.call(base_url=gateway_stack.gateway_url, session=session, headers=headers,
                                     timeout=30)
                seen[response.status_code] = seen.get(response.status_code, 0) + 1
                assert response.status_code < 500, (op.label, case.body, response.text[:500])

            check()
    assert sum(seen.values()) >= len(ops) * 2
    assert 401 in seen and 422 in seen, seen  # both the token check and the validator were reached


def test_mutating_calls_need_the_token_and_bodies_are_bounded(gateway_stack):
    url = gateway_stack.gateway_url
    assert requests.post(f"{url}/runs", json={}, timeout=30).status_code == 401
    assert requests.post(f"{url}/runs/x/stop", timeout=30).status_code == 401
    assert requests.post(f"{url}/runs/x/resume", timeout=30).status_code == 401
    auth = {"Authorization": f"Bearer {gateway_stack.api_token}"}
    big = requests.post(f"{url}/runs", data=b"{" + b" " * (1 << 20) + b"}", timeout=30,
                        headers={**auth, "Content-Type": "application/json"})
    assert big.status_code == 413
    r = requests.post(f"{url}/runs", json={"num_envs": 10**9}, headers=auth, timeout=30)
    assert r.status_code == 422 and "num_envs" in r.text
    huge = {"env_id": "ALE/Pong-v5", "batch_size": 65536, "reuse": 64, "prefetch_batches": 64}
    r = requests.post(f"{url}/runs", json=huge, headers=auth, timeout=30)
    assert r.status_code == 422 and "GiB" in r.text and "batch_size" in r.text  # would not fit in memory
    r = requests.post(f"{url}/runs", json={"env_id": "NoSuchEnv-v0"}, headers=auth, timeout=30)
    assert r.status_code == 422 and "NoSuchEnv-v0" in r.text
    r = requests.post(f"{url}/runs/no-such-run/resume", headers=auth, timeout=30)
    assert r.status_code == 404
