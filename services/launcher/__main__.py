"""python -m services.launcher: the embedded default, the project's main job.

Starts nats-server (JetStream, loopback, token auth) and every service as its
own process, starts a run through the gateway's REST API, prints live
progress, and stops everything on Ctrl-C or when the run ends.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

from services.launcher.stack import ROOT, Stack
from shared.client import GatewayClient
from shared.config import STOP_FIELDS, RunConfig, actor_cores, apply_overrides, resolve_sizes

# Named runs: an env's stop condition (configs/*.json). Every field they leave out comes
# from RunConfig's defaults, or for ALE ids from the Atari preset (shared/config.py).
PRESETS = {"CartPole-v1": "cartpole.json", "ALE/Pong-v5": "pong.json"}


def build_config(args: argparse.Namespace) -> dict:
    """The run's fields: the env's named run (configs/*.json) < --config file < --set
    overrides. Sizes it leaves out are settled by the learner for its machine."""
    cfg: dict = {}
    preset = PRESETS.get(args.env)
    if preset:
        cfg.update(json.loads((ROOT / "configs" / preset).read_text()))
    if args.config:
        cfg.update(json.loads(Path(args.config).read_text()))
    cfg["env_id"] = args.env if args.env else cfg.get("env_id", "CartPole-v1")
    apply_overrides(cfg, args.set)
    if args.actors is not None:
        cfg["num_actors"] = args.actors
    return cfg


def describe(config: dict, run: RunConfig) -> str:
    """What a run will do that its fields did not say: its sizes, and the step budget
    of a run given no stop condition."""
    said = f"{run.num_actors} actor{'s' if run.num_actors > 1 else ''} x {run.num_envs} envs, {run.flow} flow"
    if all(config.get(k) is None for k in STOP_FIELDS):
        said += f"; no stop condition given: it stops after {run.max_agent_steps:,} agent steps"
    return said


def progress_line(v: dict) -> str:
    ret = "-" if v.get("mean_return") is None else f"{v['mean_return']:7.1f}"
    lag = "-" if v.get("policy_lag") is None else f"{v['policy_lag']:.1f}"
    return (f"[{v.get('elapsed') or 0:6.1f}s] {v['state']:8s} steps {v['agent_steps']:>10,d} "
            f"({v['steps_per_s']:>7,.0f}/s) | return {ret} ({v['episodes']} ep) | updates {v['updates']:>6,d} "
            f"| lag {lag} | dropped {v['dropped']} rejected {v['rejected']}")


async def follow(stack: Stack, config: dict, timeout: float) -> dict:
    async with GatewayClient(stack.gateway_url, stack.api_token) as gw:
        await gw.wait_ready()
        run = await gw.start_run(config)
        print(f"run {run['id']} started: {json.dumps(config)}", flush=True)
        try:
            final = await gw.wait_final(run["id"], timeout, on_poll=lambda v: print(progress_line(v), flush=True),
                                        interval=2.0)
        except asyncio.CancelledError:
            raise
        except BaseException:
            print("stopping the run ...", flush=True)
            final = await gw.stop_and_wait(run["id"], 60)
        return final


def this_machine(bind: str) -> list[str]:
    """Names and addresses other machines may use for this one (its certificate names them
    all), the likeliest first: the bound address, this host's IPv4 addresses, its names."""
    names = [bind] if bind not in ("0.0.0.0", "::") else []
    try:
        out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, timeout=10).stdout
        names += [line.split()[3].split("/")[0] for line in out.splitlines() if len(line.split()) > 3]
    except (OSError, subprocess.SubprocessError):
        pass
    names += [socket.getfqdn(), socket.gethostname()]
    return [n for n in dict.fromkeys(names) if not n.startswith("127.") and n != "localhost"] or ["localhost"]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def remote_actor_command(stack: Stack, host: str) -> str:
    """What to run on another machine (with this repository installed) so that its actor
    joins this stack: the actor's credential only, over TLS, trusting this stack's CA."""
    url = stack.url_for("actor", host)
    return (f"actors on other machines: copy {stack.tls.ca} there as ca.pem, then run\n"
            f"  RL_NATS_URL='{url}' RL_NATS_CA=ca.pem python -m services.actor")


def add_config_args(p: argparse.ArgumentParser) -> None:
    """The run-config flags build_config reads; shared with the CLI's train."""
    p.add_argument("--env", default="CartPole-v1", help="env id: any Gymnasium id, any ALE/<Game>-v5 (the Atari "
                   "preset), or module:EnvId for your own env; configs/ names CartPole-v1's and ALE/Pong-v5's "
                   "stop conditions")
    p.add_argument("--config", default=None, help="JSON file with RunConfig fields")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one config field")
    p.add_argument("--actors", type=int, default=None,
                   help="actor processes (default: sized to this machine's cores: resolve_sizes in shared/config.py)")


def main() -> None:
    p = argparse.ArgumentParser(description="Run the whole trainer on this machine (embedded NATS).")
    add_config_args(p)
    p.add_argument("--run-dir", default=None, help="where logs, NATS data and checkpoints go")
    p.add_argument("--timeout", type=float, default=24 * 3600, help="give up after this many seconds")
    p.add_argument("--listen", default=None, metavar="ADDR[:PORT]",
                   help="let actors on other machines join: nats-server listens on ADDR (e.g. 0.0.0.0) and requires "
                        "TLS, with a certificate made for this machine; prints the command that starts an actor there")
    p.add_argument("--public-host", action="append", default=[], metavar="NAME",
                   help="a name or address other machines use for this one (repeat; default: its hostname and "
                        "addresses)")
    args = p.parse_args()
    config = build_config(args)
    try:
        sized = resolve_sizes(RunConfig(**config))  # as the learner, on this same machine, will size it
    except ValueError as e:
        p.error(str(e))
    print(describe(config, sized), flush=True)
    run_dir = Path(args.run_dir or ROOT / "runs" / time.strftime("%Y%m%d-%H%M%S"))
    bind, port, public = "127.0.0.1", None, []
    if args.listen:
        bind, _, given = args.listen.partition(":")
        port = int(given) if given else (4222 if port_free(4222) else None)
        public = args.public_host or this_machine(bind)
    stack = Stack(run_dir, nats_bind=bind, tls=bool(args.listen), tls_hosts=tuple(public))
    print(f"run dir {run_dir}; logs in {stack.logs}", flush=True)
    try:
        stack.start_all(actors=sized.num_actors, cores=actor_cores(sized), nats_port=port)
        print(f"nats {stack.nats_url.split('@')[-1]} | gateway {stack.gateway_url} (docs at /docs) | "
              f"API token {stack.api_token}", flush=True)
        if args.listen:
            print(remote_actor_command(stack, public[0]), flush=True)
        print(f"dashboard {stack.dashboard_url} | TensorBoard: tensorboard --logdir {stack.tb_dir}", flush=True)
        final = asyncio.run(follow(stack, config, args.timeout))
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        final = None
    finally:
        stack.close()
    if final:
        print(f"run {final['id']} {final['state']}: {final.get('reason')}; checkpoint {final.get('checkpoint')}")
        if final.get("solved"):
            s = final["solved"]
            print(f"solved after {s['agent_steps']:,} agent steps and {s['seconds']:.1f} s")
        sys.exit(0 if final["state"] in ("finished", "stopped") else 1)


if __name__ == "__main__":
    main()
