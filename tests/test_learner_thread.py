"""The learner builds its trainer on the training thread, where every step,
publication and checkpoint runs. A trainer built on the event-loop thread
left a second OpenMP team behind, and with more OpenMP threads than cores
libgomp stopped spinning between ops: Pong steps about a quarter slower."""
import asyncio
import threading
import types

import torch

from services.learner import learner as learner_mod
from shared.config import RunConfig, RunRecord


def test_trainer_is_built_on_the_training_thread(monkeypatch, tmp_path):
    built_on: list[str] = []
    real = learner_mod.Trainer

    def spy(*args, **kwargs):
        built_on.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(learner_mod, "Trainer", spy)
    host = types.SimpleNamespace(nc=None, assets=None, checkpoint_dir=tmp_path, device=torch.device("cpu"),
                                 devices=["cpu"])
    threads = torch.get_num_threads()
    try:
        rec = RunRecord(id="thread-check", config=RunConfig(env_id="CartPole-v1"))
        session = asyncio.run(learner_mod.RunSession.start(host, rec))
        steps_on = session.train_pool.submit(lambda: threading.current_thread().name).result()
    finally:
        torch.set_num_threads(threads)
    assert built_on == [steps_on] and steps_on.startswith("train"), (built_on, steps_on)
    session.train_pool.shutdown()
