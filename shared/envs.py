"""Vector environments behind one small interface, for actors and for tests.

Gymnasium ids run in a SyncVectorEnv; ALE ids run in ale-py's AtariVectorEnv
(C++ threads, its own 84x84 gray 4-stack preprocessing). Both use SAME_STEP
autoreset: the observation returned with a terminal step is already the first
of the next episode, so no transition is ever wasted or mistrained.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import gymnasium as gym
import numpy as np

_ale_registered = False


def _register_ale() -> None:
    global _ale_registered
    if not _ale_registered:
        import ale_py

        gym.register_envs(ale_py)
        _ale_registered = True


def is_atari(env_id: str) -> bool:
    return env_id.startswith("ALE/")


def is_registered(env_id: str) -> bool:
    if is_atari(env_id):
        _register_ale()
    return env_id in gym.envs.registry


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """What learner and actors must agree on about observations and actions."""

    obs_shape: tuple[int, ...]  # one agent step's observation, as the model sees it
    obs_dtype: str
    num_actions: int
    frame_stack: int = 0  # >0: image env whose wire carries only the newest frame
    clip_rewards: bool = False  # learn on sign-clipped rewards (Atari), report raw

    def to_json(self) -> dict:
        return dataclasses.asdict(self) | {"obs_shape": list(self.obs_shape)}


class VectorEnv:
    """num_envs copies of one env, stepped together; actions are ints."""

    def __init__(self, env_id: str, num_envs: int, seed: int, num_threads: int = 0):
        self.num_envs = num_envs
        self._seed = seed
        if is_atari(env_id):
            from ale_py.vector_env import AtariVectorEnv

            _register_ale()
            game = env_id.split("/", 1)[1].split("-")[0]
            game = "".join("_" + c.lower() if c.isupper() and i else c.lower() for i, c in enumerate(game))
            self._env: Any = AtariVectorEnv(
                game=game, num_envs=num_envs, num_threads=num_threads, autoreset_mode="SameStep",
                reward_clipping=False, repeat_action_probability=0.0, noop_max=30, frameskip=4,
                stack_num=4, img_height=84, img_width=84, grayscale=True, episodic_life=False,
                full_action_space=False)
            n_act = int(self._env.single_action_space.n)
            self.spec = EnvSpec((4, 84, 84), "uint8", n_act, frame_stack=4, clip_rewards=True)
        else:
            self._env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync",
                                     vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP})
            space = self._env.single_action_space
            if not isinstance(space, gym.spaces.Discrete):
                raise ValueError(f"{env_id}: only discrete action spaces are supported, got {space}")
            obs_space = self._env.single_observation_space
            self.spec = EnvSpec(tuple(obs_space.shape), "float32", int(space.n))

    def reset(self) -> np.ndarray:
        obs, _ = self._env.reset(seed=self._seed)
        return self._cast(obs)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Optional[np.ndarray]]:
        """Returns obs, raw rewards, terminated, truncated, and for truncated envs
        their final observation (else None) so the caller can bootstrap."""
        obs, rew, term, trunc, info = self._env.step(actions)
        final = None
        if "final_obs" in info and np.any(trunc):
            mask = info.get("_final_obs", trunc)
            final = np.stack([info["final_obs"][i] if mask[i] else obs[i] for i in range(self.num_envs)])
            final = self._cast(final)
        return self._cast(obs), np.asarray(rew, np.float32), np.asarray(term, bool), np.asarray(trunc, bool), final

    def _cast(self, obs: np.ndarray) -> np.ndarray:
        return np.asarray(obs, dtype=self.spec.obs_dtype)

    def close(self) -> None:
        self._env.close()


def env_spec(env_id: str) -> EnvSpec:
    """The spec of an env id, from a throwaway single env."""
    env = VectorEnv(env_id, 1, 0, num_threads=1)
    try:
        return env.spec
    finally:
        env.close()
