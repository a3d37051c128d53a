"""A small async client for the gateway's REST API (aiohttp), for scripts and notebooks.

    async with GatewayClient("http://127.0.0.1:8000", token) as gw:
        run = await gw.start_run({"env_id": "CartPole-v1", "target_return": 475})
        print(await gw.run(run["id"]))
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Optional

import aiohttp

FINAL_STATES = {"stopped", "finished", "failed"}


class GatewayError(RuntimeError):
    def __init__(self, status: int, detail: Any):
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail = status, detail


class GatewayClient:
    def __init__(self, base_url: str, token: Optional[str] = None, timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: Optional[aiohttp.ClientSession] = None

    async def __aenter__(self) -> "GatewayClient":
        self._session = aiohttp.ClientSession(headers=self.headers, timeout=self.timeout)
        return self

    async def __aexit__(self, *exc) -> None:
        if self._session:
            await self._session.close()

    async def _call(self, method: str, path: str, json: Any = None, params: Optional[dict] = None) -> Any:
        assert self._session is not None, "use 'async with GatewayClient(...)'"
        async with self._session.request(method, self.base_url + path, json=json, params=params) as r:
            try:
                body = await r.json(content_type=None)
            except ValueError:  # e.g. a proxy's HTML error page
                body = {"detail": (await r.text())[:500]}
            if r.status >= 400:
                raise GatewayError(r.status, body.get("detail", body) if isinstance(body, dict) else body)
            return body

    async def _bytes(self, path: str) -> bytes:
        assert self._session is not None, "use 'async with GatewayClient(...)'"
        async with self._session.get(self.base_url + path) as r:
            data = await r.read()
            if r.status >= 400:
                raise GatewayError(r.status, data[:500].decode(errors="replace"))
            return data

    async def start_run(self, config: dict) -> dict:
        return await self._call("POST", "/runs", json=config)

    async def runs(self) -> list[dict]:
        return await self._call("GET", "/runs")

    async def run(self, run_id: str) -> dict:
        return await self._call("GET", f"/runs/{run_id}")

    async def stop(self, run_id: str) -> dict:
        return await self._call("POST", f"/runs/{run_id}/stop")

    async def stop_and_wait(self, run_id: str, timeout: float = 120.0) -> dict:
        """Stop a run and return its final record (checkpointed, with its metrics); a run
        that ended meanwhile (409) returns the record it ended with."""
        try:
            await self.stop(run_id)
        except GatewayError as e:
            if e.status != 409:
                raise
        return await self.wait_final(run_id, timeout)

    async def resume(self, run_id: str) -> dict:
        """POST /runs/{id}/resume; a gateway without resume answers 404/405 (GatewayError)."""
        return await self._call("POST", f"/runs/{run_id}/resume")

    async def eval(self, run_id: str, episodes: int = 10, greedy: bool = True, seed: int = 12345) -> dict:
        """Start evaluating the run's last checkpoint on the gateway; returns the job (state running)."""
        return await self._call("POST", f"/runs/{run_id}/eval",
                                json={"episodes": episodes, "greedy": greedy, "seed": seed})

    async def evals(self, run_id: str) -> list[dict]:
        return await self._call("GET", f"/runs/{run_id}/evals")

    async def wait_eval(self, run_id: str, job_id: str, timeout: float = 600.0, interval: float = 1.0) -> dict:
        """Poll an eval job until it is done or failed."""
        deadline = time.time() + timeout
        while True:
            job = await self._call("GET", f"/runs/{run_id}/evals/{job_id}")
            if job["state"] != "running":
                return job
            if time.time() > deadline:
                raise TimeoutError(f"eval {job_id} still running after {timeout} s")
            await asyncio.sleep(interval)

    async def download(self, path: str) -> bytes:
        """Any file the gateway serves, e.g. an eval's video_url."""
        return await self._bytes(path)

    async def prometheus(self) -> str:
        """The Prometheus text exposition at /metrics."""
        return (await self._bytes("/metrics")).decode()

    async def metrics(self, run_id: str, since: float = 0.0) -> list[dict]:
        return (await self._call("GET", f"/runs/{run_id}/metrics", params={"since": since}))["points"]

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.time() + timeout
        while True:
            try:
                if (await self._call("GET", "/healthz")).get("ok"):
                    return
            except (aiohttp.ClientError, GatewayError, asyncio.TimeoutError):
                pass
            if time.time() > deadline:
                raise TimeoutError("gateway did not become ready")
            await asyncio.sleep(0.2)

    async def wait_final(self, run_id: str, timeout: float, on_poll=None, interval: float = 1.0) -> dict:
        """Poll until the run is stopped/finished/failed; on_poll(view) each time."""
        deadline = time.time() + timeout
        while True:
            view = await self.run(run_id)
            if on_poll:
                on_poll(view)
            if view["state"] in FINAL_STATES:
                return view
            if time.time() > deadline:
                raise TimeoutError(f"run {run_id} still {view['state']} after {timeout} s")
            await asyncio.sleep(interval)
