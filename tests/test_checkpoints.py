"""Checkpoint files: atomic, newest-K kept, weights_only loading, RNG states round-trip."""
import random

import numpy as np
import torch

from services.learner import checkpoints
from services.learner.trainer import Trainer
from shared.config import RunConfig
from shared.envs import env_spec


def test_atomic_save_keeps_newest_k_and_loads_weights_only(tmp_path):
    store = checkpoints.CheckpointDir(tmp_path, "run-1", keep=2)
    trainer = Trainer(RunConfig(), env_spec("CartPole-v1"))
    for updates in (5, 10, 15):
        trainer.updates = updates
        store.save(trainer.state() | {"rng": checkpoints.rng_state()}, updates)
    names = [p.name for p in store.all()]
    assert names == ["ckpt_000000010.pt", "ckpt_000000015.pt"]
    assert not list(store.path.glob("*.tmp")) and not list(store.path.glob(".*"))
    state = checkpoints.load(store.newest())  # weights_only=True inside
    other = Trainer(RunConfig(), env_spec("CartPole-v1"))
    other.load_state(state)
    assert other.updates == 15
    for a, b in zip(trainer.model.state_dict().values(), other.model.state_dict().values()):
        assert torch.equal(a, b)


def test_rng_states_round_trip():
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    saved = checkpoints.rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    checkpoints.set_rng_state(saved)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_clock_by_time_and_by_updates():
    by_updates = checkpoints.CheckpointClock(interval_s=0, every_updates=10)
    assert not by_updates.due(9) and by_updates.due(10)
    by_updates.mark(10)
    assert not by_updates.due(15)
    assert checkpoints.CheckpointClock(interval_s=0, every_updates=0).due(10**6) is False
    by_time = checkpoints.CheckpointClock(interval_s=1e-9, every_updates=0)
    assert by_time.due(0)
