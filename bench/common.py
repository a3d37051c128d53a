"""Helpers every benchmark shares: the machine, the results file, running a config on the stack."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(RESULTS.parents[1]))


def machine() -> dict:
    """Where a result was measured. The CPU's family and model go with its name: a VM
    may call itself "AMD EPYC" on Zen 2, 3 and 4 alike, and those differ in speed
    and, with AVX-512 or not, in the floating-point path a seed's run follows."""
    cpu, family, model = platform.processor(), "", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "model name":
                cpu = value
            elif key == "cpu family":
                family = value
            elif key == "model":
                model = value
            elif not line.strip():  # the first processor's block is enough
                break
    except OSError:
        pass
    if family:
        cpu += f" (family {family} model {model})"
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"host": platform.node(), "cpus": os.cpu_count(), "cpu_model": cpu, "python": platform.python_version(),
            "torch": torch.__version__, "gpus": gpus, "platform": platform.platform()}


def write_result(name: str, result: dict) -> Path:
    """Print the result as JSON and write it to bench/results/<name>.json (with the machine)."""
    result = {"benchmark": name, "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine(), **result}
    # A copy of the tree (the GPU machine's) is told its commit: what git says there may be
    # an older base commit (on 2026-12-04 it said d95a342 for 1160b9a).
    result["git_commit"] = os.environ.get("RL_GIT_COMMIT", "")
    if not result["git_commit"]:
        try:
            result["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                                  text=True, cwd=RESULTS.parent).stdout.strip()
        except OSError:
            pass
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return path


def load_config(path: Path | str, overrides: list[str]) -> dict:
    """A named run's JSON plus KEY=VALUE overrides, as the whole config the learner on
    this machine trains (see `whole_config`)."""
    from shared.config import apply_overrides

    return whole_config(apply_overrides(json.loads(Path(path).read_text()), overrides))


def whole_config(fields: dict) -> dict:
    """A run's fields with everything the learner on this machine fills in: the env
    family's preset, the step budget and the sizes for this machine."""
    from shared.config import RunConfig, resolve_sizes

    return resolve_sizes(RunConfig(**fields)).model_dump(mode="json")


_interrupted = False  # set once a signal has stopped a run_on_stack run


def interrupted() -> bool:
    """Whether Ctrl-C or SIGTERM stopped a run: a benchmark of several runs stops there."""
    return _interrupted


def run_on_stack(config: dict, timeout: float, learner_args: tuple[str, ...] = (),
                 workdir: str | Path | None = None) -> tuple[dict, list[dict]]:
    """Start the whole stack in `workdir` (default: a temp dir, removed after), run one
    config through the REST API, return (final run view, metrics series). A caller that
    reads what the run left (its checkpoints) passes a directory of its own.

    Ctrl-C or SIGTERM stops the run through the API and returns it as it stood (state
    "stopped"), so a study cut short still writes its curve; a second signal ends the
    benchmark at once."""
    import asyncio
    import signal
    import tempfile

    from services.launcher.stack import Stack
    from shared.client import GatewayClient
    from shared.config import RunConfig, actor_cores

    async def go(stack: Stack) -> tuple[dict, list[dict]]:
        global _interrupted
        task = asyncio.current_task()
        assert task is not None
        # SIGINT already cancels the task under asyncio.run; SIGTERM does the same here.
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        async with GatewayClient(stack.gateway_url, stack.api_token) as gw:
            await gw.wait_ready()
            run = await gw.start_run(config)
            print(f"run {run['id']}: dashboard {stack.dashboard_url}", file=sys.stderr, flush=True)
            try:
                final = await gw.wait_final(run["id"], timeout, interval=2.0)
            except asyncio.CancelledError:
                task.uncancel()
                _interrupted = True
                print(f"run {run['id']}: interrupted; stopping it and keeping its record", file=sys.stderr, flush=True)
                final = await gw.stop_and_wait(run["id"])
            return final, await gw.metrics(run["id"])

    with tempfile.TemporaryDirectory() as tmp, Stack(workdir or tmp) as stack:
        stack.start_all(actors=config["num_actors"], learner_args=learner_args,
                        cores=actor_cores(RunConfig(**config)))
        return asyncio.run(go(stack))


def first_reach(points: list[dict], threshold: float) -> dict | None:
    """Agent steps and seconds when the mean return of the last 100 episodes first reached threshold."""
    for p in points:
        if p.get("mean_return") is not None and p.get("episodes", 0) >= 100 and p["mean_return"] >= threshold:
            return {"agent_steps": p["agent_steps"], "seconds": p["elapsed"]}
    return None


def curve(points: list[dict]) -> list[list[float]]:
    """[agent_steps, seconds, mean_return] rows of a metrics series, for plots and JSON."""
    return [[p["agent_steps"], round(p["elapsed"], 2), p["mean_return"]] for p in points
            if p.get("mean_return") is not None]


def plot_curve(rows: list[list[float]], path: Path, title: str, lines: dict[str, float]) -> None:
    """Mean return against agent steps and against seconds, side by side, with labelled
    horizontal lines (a target, random and human scores)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, col, label in ((axes[0], 0, "agent steps"), (axes[1], 1, "seconds")):
        ax.plot([r[col] for r in rows], [r[2] for r in rows])
        for name, score in lines.items():
            ax.axhline(score, color="gray", linestyle="--", linewidth=0.8)
            ax.annotate(name, (0, score), fontsize=7, color="gray", va="bottom")
        ax.set_xlabel(label)
        ax.set_ylabel("mean raw return (last 100 episodes)")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
