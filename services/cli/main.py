"""impala-trainer: the command line for people.

    impala-trainer up [launcher args]       the embedded stack (NATS + every service) and a run
    impala-trainer train [--env ...]        start a run on a gateway and follow it with a progress bar
    impala-trainer runs | status ID | stop ID | resume ID
    impala-trainer eval CHECKPOINT | --run ID

Everything but `up` and a local `eval` talks to the gateway's REST API
through shared.client.GatewayClient, like any other client. The gateway and
its token come from --url/--token or $RL_GATEWAY_URL/$RL_API_TOKEN.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

from shared.client import GatewayClient, GatewayError

DEFAULT_URL = "http://127.0.0.1:8000"


def _client(a: argparse.Namespace) -> GatewayClient:
    return GatewayClient(a.url, a.token)


async def cmd_train(a: argparse.Namespace) -> int:
    from tqdm import tqdm

    from services.launcher.__main__ import build_config

    config = build_config(a)
    async with _client(a) as gw:
        run = await gw.start_run(config)
        print(f"run {run['id']} started; follow it at {a.url}/run/{run['id']}", flush=True)
        if a.detach:
            return 0
        total = config.get("max_agent_steps")
        bar = tqdm(total=total, unit=" steps", unit_scale=True, dynamic_ncols=True, file=sys.stdout)

        def on_poll(v: dict) -> None:
            bar.update(max(0, v["agent_steps"] - bar.n))
            ret = "-" if v.get("mean_return") is None else f"{v['mean_return']:.1f}"
            bar.set_postfix_str(f"{v['state']} return {ret} ({v['episodes']} ep) {v['steps_per_s']:,.0f}/s "
                                f"lag {v.get('policy_lag') or 0:.1f}", refresh=True)

        try:
            final = await gw.wait_final(run["id"], a.timeout, on_poll=on_poll, interval=1.0)
        except (KeyboardInterrupt, asyncio.CancelledError, TimeoutError):
            bar.write("stopping the run ...")
            await gw.stop(run["id"])
            final = await gw.wait_final(run["id"], 120, on_poll=on_poll)
        finally:
            bar.close()
    print(f"run {final['id']} {final['state']}: {final.get('reason')}; checkpoint {final.get('checkpoint')}")
    return 0 if final["state"] in ("finished", "stopped") else 1


def _row(v: dict) -> str:
    ret = "-" if v.get("mean_return") is None else f"{v['mean_return']:.1f}"
    return (f"{v['id']:34s} {v['config']['env_id']:16s} {v['config']['algorithm']:6s} {v['state']:9s} "
            f"{v['agent_steps']:>12,d} {v['steps_per_s']:>9,.0f} {ret:>8s}")


async def cmd_runs(a: argparse.Namespace) -> int:
    async with _client(a) as gw:
        views = await gw.runs()
    print(f"{'run':34s} {'env':16s} {'algo':6s} {'state':9s} {'agent steps':>12s} {'steps/s':>9s} {'return':>8s}")
    for v in views:
        print(_row(v))
    return 0


async def cmd_status(a: argparse.Namespace) -> int:
    async with _client(a) as gw:
        print(json.dumps(await gw.run(a.id), indent=2))
    return 0


async def cmd_stop(a: argparse.Namespace) -> int:
    async with _client(a) as gw:
        print(_row(await gw.stop(a.id)))
    return 0


async def cmd_resume(a: argparse.Namespace) -> int:
    async with _client(a) as gw:
        print(_row(await gw.resume(a.id)))
    return 0


async def cmd_eval(a: argparse.Namespace) -> int:
    if a.run is None:
        from services.eval.evaluate import evaluate

        if a.checkpoint is None:
            raise SystemExit("eval: give a CHECKPOINT file or --run ID")
        result: dict[str, Any] = evaluate(a.checkpoint, a.episodes, not a.sampled, a.seed, a.video)
    else:
        async with _client(a) as gw:
            job = await gw.eval(a.run, a.episodes, not a.sampled, a.seed)
            job = await gw.wait_eval(a.run, job["id"], timeout=a.timeout)
            if job["state"] != "done":
                print(job.get("error", job), file=sys.stderr)
                return 1
            result = job["result"] | {"video_url": a.url + job["video_url"]}
            if a.video:
                Path(a.video).write_bytes(await gw.download(job["video_url"]))
                result["video"] = a.video
    print(json.dumps(result, indent=2))
    print(f"mean return {result['mean_return']:.1f} +- {result['std_return']:.1f} over {result['episodes']} "
          f"{'greedy' if not a.sampled else 'sampled'} episodes (min {result['min_return']:.1f}, "
          f"max {result['max_return']:.1f})")
    return 0


def parser() -> argparse.ArgumentParser:
    from services.launcher.__main__ import add_config_args

    p = argparse.ArgumentParser(prog="impala-trainer", description="Distributed IMPALA/APPO trainer: CLI.")
    p.add_argument("--url", default=os.environ.get("RL_GATEWAY_URL", DEFAULT_URL), help="gateway URL")
    p.add_argument("--token", default=os.environ.get("RL_API_TOKEN"), help="API token (default: $RL_API_TOKEN)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="the embedded stack: NATS + every service + a run (see up --help)", add_help=False)
    t = sub.add_parser("train", help="start a run on the gateway and follow it")
    add_config_args(t)
    t.add_argument("--timeout", type=float, default=24 * 3600, help="stop the run after this many seconds")
    t.add_argument("--detach", action="store_true", help="start the run and return at once")
    sub.add_parser("runs", help="list runs")
    for name, text in (("status", "one run as JSON"), ("stop", "stop a run"), ("resume", "resume a stopped run")):
        sub.add_parser(name, help=text).add_argument("id")
    e = sub.add_parser("eval", help="play N episodes of a checkpoint: mean and spread of the return, one GIF")
    e.add_argument("checkpoint", nargs="?", help="a checkpoint file (evaluated here)")
    e.add_argument("--run", default=None, help="evaluate this run's last checkpoint on the gateway instead")
    e.add_argument("--episodes", type=int, default=10)
    e.add_argument("--sampled", action="store_true", help="sample actions (default: greedy)")
    e.add_argument("--seed", type=int, default=12345)
    e.add_argument("--video", default=None, help="write the recorded episode to this .gif")
    e.add_argument("--timeout", type=float, default=600.0)
    return p


COMMANDS = {"train": cmd_train, "runs": cmd_runs, "status": cmd_status, "stop": cmd_stop, "resume": cmd_resume,
            "eval": cmd_eval}


def main(argv: Optional[list[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "up":
        from services.launcher.__main__ import main as launcher_main

        sys.argv = ["impala-trainer up", *argv[1:]]
        launcher_main()
        return
    a = parser().parse_args(argv)
    try:
        sys.exit(asyncio.run(COMMANDS[a.command](a)))
    except GatewayError as e:
        print(f"impala-trainer {a.command}: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
