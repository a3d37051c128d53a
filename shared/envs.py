"""Vector environments behind one small interface, for actors, learner, eval and tests.

Three families, told apart by the env id and its observation space:

- `ALE/<Game>-v5` ids run in ale-py's AtariVectorEnv (C++ threads, its own
  84x84 gray 4-stack preprocessing). Sticky actions, the full action space
  and the episode frame cap are run options (`EnvOptions`); left unset they
  are the env id's own registration (v5: 0.25, minimal set, 108,000 frames).
- Any other Gymnasium id, or `module:EnvId` for an env a user's package
  registers on import (the module must be importable in every process that
  builds the env: gateway, learner, actors, eval), runs in a SyncVectorEnv.
  `env_kwargs` go to its constructor.
- Observations: a uint8 Box of 2 or 3 axes is an image (gray HxW, HWC or
  CHW; see `image_layout`) and travels as uint8 CHW, the layout the CNNs
  read; a Discrete observation becomes a one-hot vector; any other Box
  (float, or uint8 of 1 or 4+ axes) is a flat float32 vector, so that only
  uint8 images ever reach a CNN. Actions must be Discrete. Anything else is
  refused with a reason (`EnvRefused`), which the gateway turns into a 422.

Both vector envs use SAME_STEP autoreset: the observation returned with a
terminal step is already the first of the next episode, so no transition is
ever wasted or mistrained.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import json
from typing import Any, Optional

import gymnasium as gym
import numpy as np

ATARI_PREFIX = "ALE/"
ATARI_STACK = 4  # frames per Atari observation (the vector env's own stacking)
ATARI_SIZE = 84


class EnvRefused(ValueError):
    """The env cannot be trained here (unknown id, unsupported spaces, a failing
    constructor); the message says why, for a 422 or a failed run's reason."""


_ale_registered = False


def _register_ale() -> None:
    global _ale_registered
    if not _ale_registered:
        import ale_py

        gym.register_envs(ale_py)
        _ale_registered = True


def is_atari(env_id: str) -> bool:
    return env_id.startswith(ATARI_PREFIX)


def registry_id(env_id: str) -> str:
    """The id as Gymnasium's registry knows it. `module:EnvId` first imports the
    module (which registers the env as a side effect, Gymnasium's own convention
    for `gym.make("module:EnvId")`), then names EnvId. Raises EnvRefused."""
    if is_atari(env_id):
        _register_ale()
    module, sep, name = env_id.rpartition(":")
    if sep:
        try:
            importlib.import_module(module)
        except Exception as e:  # ImportError, or the module's own error on import
            raise EnvRefused(f"cannot import module {module!r} for env {env_id!r}: {type(e).__name__}: {e} "
                             "(it must be importable on every host that builds the env: in the image, "
                             "or on PYTHONPATH)") from None
        if name not in gym.envs.registry:
            raise EnvRefused(f"unknown env id {env_id!r}: module {module!r} imported, but it registered no env "
                             f"{name!r} (it must call gymnasium.register({name!r}, ...) on import)")
        return name
    if env_id not in gym.envs.registry:
        raise EnvRefused(f"unknown env id {env_id!r}: not registered in gymnasium (or ale-py)")
    return env_id


def is_registered(env_id: str) -> bool:
    try:
        registry_id(env_id)
        return True
    except EnvRefused:
        return False


@dataclasses.dataclass(frozen=True)
class EnvOptions:
    """Everything that decides which env a run steps (hashable: specs are cached by it)."""

    env_id: str
    env_kwargs_json: str = "{}"  # canonical JSON of the constructor's keyword arguments
    sticky_actions: Optional[float] = None  # ALE repeat_action_probability; None: the id's own
    full_action_space: Optional[bool] = None  # ALE: all 18 actions; None: the id's own
    max_episode_frames: Optional[int] = None  # ALE: frame cap per episode; None: the id's own

    @classmethod
    def of(cls, env: "str | EnvOptions | Any") -> "EnvOptions":
        """From an env id, EnvOptions, or anything with the RunConfig fields of those names."""
        if isinstance(env, EnvOptions):
            return env
        if isinstance(env, str):
            return cls(env)
        return cls(env.env_id, json.dumps(env.env_kwargs, sort_keys=True), env.sticky_actions,
                   env.full_action_space, env.max_episode_frames)

    @property
    def env_kwargs(self) -> dict[str, Any]:
        return json.loads(self.env_kwargs_json)


def ale_options(env: "str | EnvOptions | Any") -> dict[str, Any]:
    """The ALE options a run of this env uses, resolved against the id's registration
    (what every Atari benchmark result records); {} for other envs."""
    opts = EnvOptions.of(env)
    if not is_atari(opts.env_id):
        return {}
    _register_ale()
    own = gym.spec(registry_id(opts.env_id)).kwargs
    pick = lambda mine, key, default: own.get(key, default) if mine is None else mine  # noqa: E731
    return {"game": own["game"],
            "sticky_actions": float(pick(opts.sticky_actions, "repeat_action_probability", 0.25)),
            "full_action_space": bool(pick(opts.full_action_space, "full_action_space", False)),
            "max_episode_frames": int(pick(opts.max_episode_frames, "max_num_frames_per_episode", 108_000)),
            "frameskip": 4, "noop_max": 30, "frame_stack": ATARI_STACK, "size": ATARI_SIZE,
            "episodic_life": False, "reward_clipping_for_learning": True}


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """What learner and actors must agree on about observations and actions."""

    obs_shape: tuple[int, ...]  # one agent step's observation, as the model sees it (images: C, H, W)
    obs_dtype: str
    num_actions: int
    frame_stack: int = 0  # >0: image env whose wire carries only the newest frame
    clip_rewards: bool = False  # learn on sign-clipped rewards (Atari), report raw

    def to_json(self) -> dict:
        return dataclasses.asdict(self) | {"obs_shape": list(self.obs_shape)}

    @property
    def image(self) -> bool:
        return len(self.obs_shape) == 3


def image_layout(shape: tuple[int, ...]) -> str:
    """How a uint8 image observation is laid out: "hw" (gray), "chw" or "hwc".
    A 3-axis shape is HWC when its last axis looks like channels (1, 3 or 4) or
    its first does not (Gymnasium's rgb arrays are HWC), else CHW."""
    if len(shape) == 2:
        return "hw"
    return "hwc" if shape[-1] in (1, 3, 4) or shape[0] not in (1, 3, 4) else "chw"


class _Observations:
    """Turns a vector env's batch of observations into what the model reads."""

    def __init__(self, env_id: str, space: gym.Space):
        self.kind, self.n = "vector", 0
        if isinstance(space, gym.spaces.Discrete):
            self.kind, self.n, self.start = "onehot", int(space.n), int(space.start)
            self.shape: tuple[int, ...] = (self.n,)
            self.dtype = "float32"
        elif isinstance(space, gym.spaces.MultiBinary) and len(space.shape) == 1:
            self.shape, self.dtype = tuple(space.shape), "float32"
        elif isinstance(space, gym.spaces.Box):
            if space.dtype == np.uint8 and len(space.shape) in (2, 3):
                self.kind = image_layout(space.shape)
                h, w, c = {"hw": lambda s: (s[0], s[1], 1), "hwc": lambda s: s,
                           "chw": lambda s: (s[1], s[2], s[0])}[self.kind](space.shape)
                self.shape, self.dtype = (int(c), int(h), int(w)), "uint8"
            elif not space.shape or int(np.prod(space.shape)) == 0:
                raise EnvRefused(f"{env_id}: empty observation space {space}")
            else:  # flat: a float Box of 3 axes must not pass for an image (EnvSpec.image) and meet a CNN
                self.shape, self.dtype = (int(np.prod(space.shape)),), "float32"
        else:
            raise EnvRefused(f"{env_id}: observation space {type(space).__name__} is not supported "
                             "(Box, Discrete or MultiBinary observations only; wrap Dict/Tuple spaces "
                             "into one Box, e.g. with gymnasium.wrappers.FlattenObservation)")

    def __call__(self, obs: Any) -> np.ndarray:
        """[N, ...] raw observations -> [N, *shape] arrays of `dtype` (contiguous)."""
        if self.kind == "onehot":
            idx = np.asarray(obs, np.int64) - self.start
            out = np.zeros((len(idx), self.n), np.float32)
            out[np.arange(len(idx)), idx] = 1.0
            return out
        if self.kind == "hw":
            return np.ascontiguousarray(np.asarray(obs, np.uint8)[:, None])
        if self.kind == "hwc":
            return np.ascontiguousarray(np.asarray(obs, np.uint8).transpose(0, 3, 1, 2))
        if self.kind == "chw":
            return np.ascontiguousarray(np.asarray(obs, np.uint8))
        obs = np.asarray(obs, dtype=self.dtype)
        return np.ascontiguousarray(obs.reshape(len(obs), *self.shape))


class VectorEnv:
    """num_envs copies of one env, stepped together; actions are ints in [0, num_actions)."""

    def __init__(self, env: "str | EnvOptions | Any", num_envs: int, seed: int, num_threads: int = 0,
                 render: bool = False):
        """render: Gymnasium envs render rgb_array frames (eval videos); ALE needs none."""
        opts = EnvOptions.of(env)
        self.num_envs = num_envs
        self._seed = seed
        self._action_start = 0
        self._info: dict[str, Any] = {}  # the last step's info (final observations)
        # After each step: which envs lost a life in a game that goes on (ALE; all False elsewhere).
        self.life_lost = np.zeros(num_envs, bool)
        self._lives = np.zeros(num_envs)
        if is_atari(opts.env_id):
            from ale_py.vector_env import AtariVectorEnv

            ale = ale_options(opts)
            self._env: Any = AtariVectorEnv(
                game=ale["game"], num_envs=num_envs, num_threads=num_threads, autoreset_mode="SameStep",
                reward_clipping=False, repeat_action_probability=ale["sticky_actions"], noop_max=30, frameskip=4,
                stack_num=ATARI_STACK, img_height=ATARI_SIZE, img_width=ATARI_SIZE, grayscale=True,
                episodic_life=False, full_action_space=ale["full_action_space"],
                max_num_frames_per_episode=ale["max_episode_frames"])
            n_act = int(self._env.single_action_space.n)
            self._convert = lambda obs: np.asarray(obs, np.uint8)
            self.spec = EnvSpec((ATARI_STACK, ATARI_SIZE, ATARI_SIZE), "uint8", n_act, frame_stack=ATARI_STACK,
                                clip_rewards=True)
            return
        name = registry_id(opts.env_id)
        # render wins over a render_mode in env_kwargs (else: "multiple values for keyword argument")
        kwargs = opts.env_kwargs | ({"render_mode": "rgb_array"} if render else {})
        try:
            self._env = gym.make_vec(name, num_envs=num_envs, vectorization_mode="sync",
                                     vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}, **kwargs)
        except EnvRefused:
            raise
        except Exception as e:
            raise EnvRefused(f"{opts.env_id}: the env's constructor raised {type(e).__name__}: {e}") from None
        try:
            space = self._env.single_action_space
            if not isinstance(space, gym.spaces.Discrete):
                raise EnvRefused(f"{opts.env_id}: action space {space} is not supported: this trainer learns "
                                 "discrete actions only (IMPALA's categorical policy)")
            self._action_start = int(space.start)
            self._convert = _Observations(opts.env_id, self._env.single_observation_space)
        except Exception:
            self._env.close()
            raise
        self.spec = EnvSpec(self._convert.shape, self._convert.dtype, int(space.n))

    def reset(self) -> np.ndarray:
        obs, info = self._env.reset(seed=self._seed)
        self._lives = np.asarray(info.get("lives", np.zeros(self.num_envs)))
        return self._convert(obs)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Optional[np.ndarray]]:
        """Returns obs, raw rewards, terminated, truncated, and for truncated envs
        their final observation (else None) so the caller can bootstrap."""
        obs, rew, term, trunc, info = self._env.step(np.asarray(actions) + self._action_start)
        self._info = info
        if "lives" in info:  # ALE: a life lost this step, in a game that goes on
            lives = np.asarray(info["lives"])
            self.life_lost = (lives < self._lives) & ~(np.asarray(term) | np.asarray(trunc))
            self._lives = lives
        conv, final = self._convert(obs), None
        if "final_obs" in info and np.any(trunc):
            final = conv.copy()
            for i in np.flatnonzero(info.get("_final_obs", trunc)):
                final[i] = self._convert(np.asarray(info["final_obs"][i])[None])[0]
        return conv, np.asarray(rew, np.float32), np.asarray(term, bool), np.asarray(trunc, bool), final

    def final_observation(self, i: int) -> Optional[np.ndarray]:
        """Env i's last observation of the episode that ended in the last step (converted),
        or None (none ended; ALE ids keep none). Why: SAME_STEP autoreset returns the next
        episode's first observation in its place, and an eval video of an image env would
        otherwise never show how an episode ends."""
        info = self._info
        if "final_obs" not in info or not info.get("_final_obs", np.zeros(i + 1, bool))[i]:
            return None
        return self._convert(np.asarray(info["final_obs"][i])[None])[0]

    def render(self) -> Optional[np.ndarray]:
        """The first env's rgb_array frame (built with render=True), or None."""
        frames = self._env.render()
        return None if frames is None else np.asarray(frames[0])

    def close(self) -> None:
        self._env.close()


@functools.lru_cache(maxsize=64)
def _spec(opts: EnvOptions) -> EnvSpec:
    env = VectorEnv(opts, 1, 0, num_threads=1)
    try:
        return env.spec
    finally:
        env.close()


def env_spec(env: "str | EnvOptions | Any") -> EnvSpec:
    """The spec of an env, from a throwaway single env (cached). Raises EnvRefused."""
    return _spec(EnvOptions.of(env))


def check_env(env: "str | EnvOptions | Any", seed: int = 0) -> EnvSpec:
    """Build one env, reset it and take one step: what the learner does before it
    trains a run, so a run whose env cannot even start fails at once with the reason
    (an env that raises in reset, a missing ROM) instead of leaving actors to fail
    one by one. Raises EnvRefused."""
    opts = EnvOptions.of(env)
    venv = VectorEnv(opts, 1, seed, num_threads=1)
    try:
        venv.reset()
        venv.step(np.zeros(1, np.int64))
        return venv.spec
    except EnvRefused:
        raise
    except Exception as e:
        raise EnvRefused(f"{opts.env_id}: the env raised {type(e).__name__} in reset or step: {e}") from None
    finally:
        venv.close()
