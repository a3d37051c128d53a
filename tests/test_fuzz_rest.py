"""Fuzz the gateway's REST API from its own OpenAPI schema (schemathesis), with
and without the token, valid and invalid data, and every check schemathesis
has: no server error; every status code, content type, header and body as
documented; schema-invalid requests refused and schema-valid ones taken; the
token enforced where the schema says it is needed. What schemathesis's coverage
phase would also send (undeclared methods, no token at all) is asked of every
path and operation of the schema below."""
from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from services.launcher.stack import wait_port

EXAMPLES = 40
# POST /runs: the schema cannot say all that makes a run config valid, so a body it allows may
# still be a 422 naming the field: cross-field rules (batch_size >= unroll_length, ALE options
# for ALE ids only, schedules that rise), whether env_id names an env that builds (any
# registered id, or module:EnvId) and whether the run fits in memory. positive_data_acceptance
# expects no 422 for a schema-valid body, so it cannot hold there; every other check does.
NOT_CHECKED = {"POST /runs": [positive_data_acceptance]}


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


# schemathesis.pytest.from_fixture (its lazy schema) does not run under pytest 9, so each
# operation's strategy is driven here; call_and_validate runs every check schemathesis has.
@pytest.mark.parametrize("auth", [True, False], ids=["token", "no-token"])
def test_the_api_is_as_documented(gateway_stack, auth):
    ops = _operations(gateway_stack)
    assert {"POST /runs", "GET /runs/{run_id}", "POST /runs/{run_id}/resume"} <= {op.label for op in ops}
    session = requests.Session()
    headers = {"Authorization": f"Bearer {gateway_stack.api_token}"} if auth else {}
    seen: dict[int, int] = {}
    for op in ops:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                fuzz(op, mode, gateway_stack.gateway_url, session, headers, seen)
            except Unsatisfiable:  # nothing to make invalid: no body, and a path string takes any value
                assert mode == GenerationMode.NEGATIVE and not list(op.body), op.label
    assert sum(seen.values()) >= len(ops) * 2
    assert (422 in seen) if auth else (401 in seen), seen  # the validator, or the token check, was reached


def fuzz(op, mode: GenerationMode, url: str, session: requests.Session, headers: dict, seen: dict[int, int]) -> None:
    excluded = NOT_CHECKED.get(op.label, [])

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=mode))
    def check(case) -> None:
        response = case.call_and_validate(base_url=url, session=session, headers=headers, timeout=30,
                                          excluded_checks=excluded)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1

    check()


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


def test_bodies_have_the_json_types_of_the_schema(gateway_stack):
    """Pydantic's lax mode would take these as seed 0, seed 5 and prefetch true."""
    auth = {"Authorization": f"Bearer {gateway_stack.api_token}"}
    for body, field in [({"seed": False}, "seed"), ({"seed": "5"}, "seed"), ({"prefetch": 1}, "prefetch"),
                        ({"lr_schedule": [[1000, "0.1"]]}, "lr_schedule")]:
        r = requests.post(f"{gateway_stack.gateway_url}/runs", json=body, headers=auth, timeout=30)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][:2] == ["body", field], (body, r.text)
    r = requests.post(f"{gateway_stack.gateway_url}/runs", json={"batch_size": 256.0, "ae_channels": [16, 32]},
                      headers=auth, timeout=30)
    assert r.status_code == 201, r.text  # 256.0 is an integer to JSON, and an array fills a tuple


def test_every_path_answers_an_undeclared_method_with_405_and_its_methods(gateway_stack):
    url = gateway_stack.gateway_url
    spec = requests.get(f"{url}/openapi.json", timeout=30).json()
    for path, operations in spec["paths"].items():
        declared = {m.upper() for m in operations}
        concrete = path.replace("{run_id}", "run-x").replace("{job_id}", "job-x")
        for method in ("OPTIONS", "PUT", "DELETE", "PATCH", "POST" if "post" not in operations else "GET"):
            if method in declared:
                continue
            r = requests.request(method, url + concrete, timeout=30)
            assert r.status_code == 405, (method, path, r.status_code)
            assert set(r.headers["allow"].split(", ")) == declared, (method, path, r.headers["allow"])


def test_every_operation_that_needs_the_token_refuses_without_it(gateway_stack):
    url = gateway_stack.gateway_url
    spec = requests.get(f"{url}/openapi.json", timeout=30).json()
    secured = [(m, p) for p, ops in spec["paths"].items() for m, op in ops.items() if op.get("security")]
    assert {("post", "/runs"), ("post", "/runs/{run_id}/stop"), ("post", "/runs/{run_id}/eval")} <= set(secured)
    for method, path in secured:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eDp5"}):
            r = requests.request(method, url + path.replace("{run_id}", "run-x"), headers=headers, timeout=30)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (method, path, headers)
            assert "401" in spec["paths"][path][method]["responses"]
