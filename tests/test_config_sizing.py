"""The launcher's and benchmarks' shared config plumbing: --set overrides and auto-sizing."""
from shared.config import RunConfig, apply_overrides, auto_size


def test_overrides_parse_json_and_keep_plain_strings():
    cfg = apply_overrides({"env_id": "CartPole-v1"}, ["learning_rate=0.0005", "latent_ae=true", "env_id=ALE/Pong-v5",
                                                      "max_seconds=null"])
    assert cfg == {"env_id": "ALE/Pong-v5", "learning_rate": 0.0005, "latent_ae": True, "max_seconds": None}
    RunConfig(**cfg)  # and the result is a valid run


def test_auto_size_fills_only_what_is_missing():
    assert auto_size({}, cpus=2) == {"num_actors": 1, "learner_threads": 2}
    assert auto_size({}, cpus=16) == {"num_actors": 15, "learner_threads": 8}
    assert auto_size({"num_actors": 4, "learner_threads": 1}, cpus=16) == {"num_actors": 4, "learner_threads": 1}


def test_actors_share_the_cores_the_learner_leaves():
    from services.launcher.stack import env_threads

    assert env_threads(1, cpus=2) == 1  # the 2-core machine: one actor, one core, the learner the other
    assert env_threads(15, cpus=16) == 1
    assert env_threads(2, cpus=8) == 3
    assert env_threads(4, cpus=1) == 1  # never zero
