"""Evaluation jobs the gateway runs for POST /runs/{id}/eval.

Each job is a child process (`python -m services.eval`), so playing
episodes never stalls the API's event loop, writing result.json and
episode.gif under <eval dir>/<run id>/<job id>/. The directory is the record:
a restarted gateway lists finished jobs from disk.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger("gateway.evals")

_JOB_ID = re.compile(r"^[a-z0-9-]{1,64}$")
VIDEO_NAME = "episode.gif"


class EvalJobs:
    def __init__(self, base_dir: str | Path, root: Path):
        self.base_dir, self.root = Path(base_dir), root
        self.running: dict[str, asyncio.Task] = {}

    def job_dir(self, run_id: str, job_id: str) -> Path:
        if not _JOB_ID.match(job_id):
            raise KeyError(job_id)
        return self.base_dir / run_id / "evals" / job_id

    def start(self, run_id: str, checkpoint: str, episodes: int, greedy: bool, seed: int) -> dict[str, Any]:
        job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        d = self.job_dir(run_id, job_id)
        d.mkdir(parents=True)
        request = {"id": job_id, "run": run_id, "checkpoint": checkpoint, "episodes": episodes, "greedy": greedy,
                   "seed": seed, "created_at": time.time()}
        (d / "request.json").write_text(json.dumps(request))
        cmd = [sys.executable, "-m", "services.eval", checkpoint, "--episodes", str(episodes), "--seed", str(seed),
               "--video", str(d / VIDEO_NAME), "--out", str(d / "result.json")]
        if not greedy:
            cmd.append("--sampled")
        self.running[job_id] = asyncio.create_task(self._run(job_id, cmd, d))
        return self.get(run_id, job_id)

    async def _run(self, job_id: str, cmd: list[str], d: Path) -> None:
        try:
            with open(d / "eval.log", "wb") as out:  # noqa: ASYNC230  (creating an empty file does not block)
                proc = await asyncio.create_subprocess_exec(*cmd, cwd=self.root, stdout=out, stderr=out)
                await proc.wait()
        except Exception as e:  # noqa: BLE001  (whatever failed, the job reads as failed, with its log)
            log.warning("eval %s could not run: %s", job_id, e)
        finally:
            self.running.pop(job_id, None)

    def get(self, run_id: str, job_id: str) -> dict[str, Any]:
        d = self.job_dir(run_id, job_id)
        if not (d / "request.json").exists():
            raise KeyError(job_id)
        job = json.loads((d / "request.json").read_text())
        result_path = d / "result.json"
        if result_path.exists():
            job.update(state="done", result=json.loads(result_path.read_text()))
            job["result"].pop("checkpoint", None)
            job["result"].pop("video", None)
            job["video_url"] = f"/runs/{run_id}/evals/{job_id}/video"
        elif job_id in self.running:
            job["state"] = "running"
        else:
            job.update(state="failed", error=_tail(d / "eval.log"))
        return job

    def list(self, run_id: str) -> list[dict[str, Any]]:
        d = self.base_dir / run_id / "evals"
        if not d.is_dir():
            return []
        return [self.get(run_id, p.name) for p in sorted(d.iterdir()) if (p / "request.json").exists()]

    def video(self, run_id: str, job_id: str) -> Path | None:
        p = self.job_dir(run_id, job_id) / VIDEO_NAME
        return p if p.exists() else None

    async def close(self) -> None:
        for task in list(self.running.values()):
            task.cancel()


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "no log"
