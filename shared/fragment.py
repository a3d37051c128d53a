"""Trajectory fragments: what actors send and the learner trains on.

A fragment is T agent steps of N envs from one actor under one policy
version. Observations have T+1 rows (the last one bootstraps). Image envs
send only each step's newest frame plus, once, the 3 older frames of the
first stack ("context"); the learner rebuilds the 4-stacks, zero-padding at
episode starts exactly like the env does, for 4x fewer bytes on the wire.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import numpy as np
import torch

from shared import wire
from shared.config import MAX_ENVS_PER_ACTOR
from shared.envs import EnvSpec

_ID_MAX = 64


@dataclasses.dataclass
class Fragment:
    run_id: str
    actor_id: str
    version: int  # behaviour policy version
    obs: np.ndarray  # [T+1, N, *obs_shape], or frames [T+1, N, H, W] for stacked images
    actions: np.ndarray  # [T, N] int32
    logits: np.ndarray  # [T, N, A] float32 behaviour logits
    rewards: np.ndarray  # [T, N] float32 raw rewards (the learner counts episode returns from them)
    dones: np.ndarray  # [T, N] uint8: obs[t+1] starts a new episode
    context: Optional[np.ndarray] = None  # [N, S-1, H, W] older frames of obs[0]'s stack
    # [T, N] float32: gamma * V(final observation) where an episode was cut by a time limit,
    # else 0; learned as part of that step's reward (a cut is not a failure). None: all 0.
    bootstrap: Optional[np.ndarray] = None
    # [T, N] uint8: 1 where an env lost a life in a game that goes on (ALE, life_loss_terminal):
    # learned as an episode's end, while the game and its return go on. None: all 0.
    life_lost: Optional[np.ndarray] = None
    seq: int = 0  # per-actor message counter: gaps at the learner are messages lost in transit
    # The seed of the actor's env vector: a name for its columns that is the same in every
    # run of a config (actor ids are not). A batch orders its fresh columns by it (see
    # services/learner/prefetch.py).
    env_seed: int = 0
    t0: int = 0  # agent steps each env took in this actor's run before this fragment (0: episodes start here)
    col0: int = 0  # the first of the actor's env columns this message holds (a part of a split fragment)

    @property
    def num_steps(self) -> int:
        return int(self.actions.shape[0] * self.actions.shape[1])

    @property
    def num_columns(self) -> int:
        return int(self.actions.shape[1])

    def columns(self, start: int, stop: int) -> "Fragment":
        """The same steps for envs start..stop-1 (views, no copy): lets a batch smaller
        than a fragment take part of one and leave the rest for the next batch."""
        return dataclasses.replace(
            self, obs=self.obs[:, start:stop], actions=self.actions[:, start:stop],
            logits=self.logits[:, start:stop], rewards=self.rewards[:, start:stop], dones=self.dones[:, start:stop],
            context=None if self.context is None else self.context[start:stop],
            bootstrap=None if self.bootstrap is None else self.bootstrap[:, start:stop],
            life_lost=None if self.life_lost is None else self.life_lost[:, start:stop], col0=self.col0 + start)


def encode_fragment(f: Fragment) -> bytes:
    arrays = {"obs": f.obs, "actions": f.actions, "logits": f.logits, "rewards": f.rewards, "dones": f.dones}
    if f.context is not None:
        arrays["context"] = f.context
    if f.bootstrap is not None:
        arrays["bootstrap"] = f.bootstrap
    if f.life_lost is not None:
        arrays["life_lost"] = f.life_lost
    return wire.encode({"kind": "fragment", "run": f.run_id, "actor": f.actor_id, "version": f.version,
                        "seq": f.seq, "env_seed": f.env_seed, "t0": f.t0, "col0": f.col0}, arrays)


def encode_within(f: Fragment, max_bytes: int) -> list[bytes]:
    """f as one message, or as several that each hold some of its env columns, so
    that every message fits in max_bytes (the broker's max_payload). Part i
    carries sequence number f.seq + i. Why: NATS refuses a message over its
    max_payload, 1 MiB by default, and 64 Pong envs x 128 steps make about
    1.2 MB; such a fragment would never reach the learner. A part is an
    ordinary fragment of fewer envs, so the learner and the replay shards take
    it as they take any other. Each part holds a multiple of gcd(envs, 8) envs:
    every learner rank takes an equal share of each message (prefetch.py,
    `my_columns`), and a device count that divides the envs and 8 still divides
    every part. A part of that many envs that still does not fit is sent as it
    is (its publication fails, counted)."""
    unit = math.gcd(f.num_columns, 8)
    n = f.num_columns // unit  # parts are made of whole units of `unit` envs
    whole = encode_fragment(f)
    if len(whole) <= max_bytes or n == 1:
        return [whole]
    k = min(n, -(-len(whole) * 5 // (4 * max_bytes)))  # a quarter spare: frames compress unevenly
    while True:
        bounds = [unit * (n * i // k) for i in range(k + 1)]
        parts = [encode_fragment(dataclasses.replace(f.columns(a, b), seq=f.seq + i))
                 for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]
        if k == n or max(map(len, parts)) <= max_bytes:
            return parts
        k = min(n, 2 * k)


OPTIONAL_ARRAYS = ("bootstrap", "life_lost")


def expected_shapes(spec: EnvSpec, T: int, N: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, dtype) of every array of a valid fragment (those in OPTIONAL_ARRAYS may be absent)."""
    shapes = {
        "actions": ((T, N), "int32"),
        "logits": ((T, N, spec.num_actions), "float32"),
        "rewards": ((T, N), "float32"),
        "dones": ((T, N), "uint8"),
        "bootstrap": ((T, N), "float32"),
        "life_lost": ((T, N), "uint8"),
    }
    if spec.frame_stack:
        hw = tuple(spec.obs_shape[1:])
        shapes["obs"] = ((T + 1, N) + hw, spec.obs_dtype)
        shapes["context"] = ((N, spec.frame_stack - 1) + hw, spec.obs_dtype)
    else:
        shapes["obs"] = ((T + 1, N) + tuple(spec.obs_shape), spec.obs_dtype)
    return shapes


def check_header(data: bytes, run_id: str, spec: EnvSpec, T: int) -> dict:
    """Cheap check (no decompression) that a message is a fragment of this run
    with the right shapes; returns its meta plus `columns`, its checked env
    count. Raises wire.WireError."""
    meta, specs, _ = wire.decode_header(data)
    if meta.get("kind") != "fragment" or meta.get("run") != run_id:
        raise wire.WireError("not a fragment of this run")
    actor, version = meta.get("actor"), meta.get("version")
    if not isinstance(actor, str) or not 0 < len(actor) <= _ID_MAX:
        raise wire.WireError("bad actor id")
    if not wire.is_count(version):
        raise wire.WireError("bad version")
    for key in ("seq", "env_seed", "t0", "col0"):
        if not wire.is_count(meta.get(key, 0)):
            raise wire.WireError(f"bad {key}")
    got = {s["name"]: (tuple(s["shape"]), s["dtype"]) for s in specs}
    if len(got) != len(specs) or "actions" not in got or len(got["actions"][0]) != 2:
        raise wire.WireError("bad array set")
    n = got["actions"][0][1]
    if not 1 <= n <= MAX_ENVS_PER_ACTOR or meta.get("col0", 0) + n > MAX_ENVS_PER_ACTOR:
        raise wire.WireError("bad env count")
    want = expected_shapes(spec, T, n)
    if got != {k: v for k, v in want.items() if k in got or k not in OPTIONAL_ARRAYS}:
        raise wire.WireError("shapes or dtypes do not match the run")
    return {**meta, "columns": n}


def check_outcomes(rewards: np.ndarray, dones: np.ndarray, bootstrap: Optional[np.ndarray]) -> None:
    """What the learner counts episodes and returns from: finite rewards, done flags
    of 0 or 1, and bootstrap values only where an episode ended. Raises WireError."""
    if not np.isfinite(rewards).all():
        raise wire.WireError("non-finite rewards")
    if dones.size and dones.max() > 1:
        raise wire.WireError("done flags other than 0 and 1")
    if bootstrap is not None and (not np.isfinite(bootstrap).all() or np.any(bootstrap[dones == 0] != 0)):
        raise wire.WireError("bootstrap values where no episode ended")


def decode_outcomes(data: bytes, meta: dict) -> tuple[np.ndarray, np.ndarray]:
    """The rewards and done flags of a message that passed `check_header` (a small part
    of it: only those two arrays are decompressed), checked. Raises WireError."""
    a = wire.decode(data, names={"rewards", "dones", "bootstrap"})
    check_outcomes(a[1]["rewards"], a[1]["dones"], a[1].get("bootstrap"))
    return a[1]["rewards"], a[1]["dones"]


def decode_fragment(data: bytes, run_id: str, spec: EnvSpec, T: int) -> Fragment:
    """Full decode and validation; raises wire.WireError on any defect."""
    meta = check_header(data, run_id, spec, T)
    _, a = wire.decode(data)
    if a["actions"].size and (a["actions"].min() < 0 or a["actions"].max() >= spec.num_actions):
        raise wire.WireError("action out of range")
    if not np.isfinite(a["logits"]).all():
        raise wire.WireError("non-finite logits")
    check_outcomes(a["rewards"], a["dones"], a.get("bootstrap"))
    if "life_lost" in a and a["life_lost"].size and a["life_lost"].max() > 1:
        raise wire.WireError("life-lost flags other than 0 and 1")
    if a["obs"].dtype.kind == "f" and not np.isfinite(a["obs"]).all():
        raise wire.WireError("non-finite observations")
    return Fragment(run_id, meta["actor"], meta["version"], a["obs"], a["actions"], a["logits"],
                    a["rewards"], a["dones"], a.get("context"), a.get("bootstrap"), a.get("life_lost"),
                    seq=meta.get("seq", 0),
                    env_seed=meta.get("env_seed", 0), t0=meta.get("t0", 0), col0=meta.get("col0", 0))


def collate(frags: Sequence[Fragment]) -> dict[str, np.ndarray]:
    """Concatenate fragments along the env axis into one [T, B] batch."""
    out = {k: np.concatenate([getattr(f, k) for f in frags], axis=1)
           for k in ("obs", "actions", "logits", "rewards", "dones")}
    out["versions"] = np.concatenate([np.full(f.actions.shape[1], f.version, np.int64) for f in frags])
    for name, dtype in (("bootstrap", np.float32), ("life_lost", np.uint8)):
        if any(getattr(f, name) is not None for f in frags):
            out[name] = np.concatenate([np.zeros(f.rewards.shape, dtype) if getattr(f, name) is None
                                        else getattr(f, name) for f in frags], axis=1)
    if frags[0].context is not None:
        out["context"] = np.concatenate([f.context for f in frags], axis=0)
    return out


def rebuild_stacks(frames: torch.Tensor, context: torch.Tensor, dones: torch.Tensor) -> torch.Tensor:
    """Frames [T+1, B, H, W], context [B, S-1, H, W], dones [T, B] -> stacks
    [T+1, B, S, H, W], oldest frame first, zeros before an episode's start.

    Works on whatever device the inputs are on (the learner's GPU on CUDA)."""
    T1, B = frames.shape[:2]
    S = context.shape[1] + 1
    seq = torch.cat([context.transpose(0, 1), frames], dim=0)  # [S-1+T+1, B, H, W]
    # start[t, b] = index (in obs time) of the first obs of the episode that obs t belongs to,
    # or -S when the episode began before this fragment (the context is then already padded).
    t_idx = torch.arange(T1, device=frames.device).unsqueeze(1).expand(T1, B)
    is_start = torch.zeros(T1, B, dtype=torch.bool, device=frames.device)
    is_start[1:] = dones.bool()
    start = torch.where(is_start, t_idx, torch.full_like(t_idx, -S)).cummax(dim=0).values
    stacks = []
    for j in range(S):  # j = S-1 is the newest frame
        back = S - 1 - j
        frame = seq[(S - 1 - back):(S - 1 - back) + T1]  # obs time t - back
        valid = (t_idx - back) >= start
        stacks.append(frame * valid.unsqueeze(-1).unsqueeze(-1).to(frame.dtype))
    return torch.stack(stacks, dim=2)
