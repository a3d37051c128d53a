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


def test_one_round_of_the_auto_sized_actors_is_one_batch():
    """Where a config gives its batch but no actors or envs (the Pong preset: 8 env columns of
    128 steps), the actors' fragments of one round make exactly one batch, so paced actors
    act together at policy lag 0; on 2 cores that is the preset's 1 actor x 8 envs."""
    pong = {"batch_size": 1024, "unroll_length": 128}
    sized = {(c, d): auto_size(dict(pong), cpus=c, devices=d) for c, d in ((2, 1), (4, 1), (16, 1), (16, 2), (64, 1))}
    assert {k: (v["num_actors"], v["num_envs"]) for k, v in sized.items()} == {
        (2, 1): (1, 8), (4, 1): (2, 4), (16, 1): (8, 1), (16, 2): (4, 2), (64, 1): (8, 1)}
    for (_, devices), v in sized.items():
        assert v["num_actors"] * v["num_envs"] == 8 and v["num_envs"] % devices == 0
        RunConfig(**v)
    # actors given (--actors 3): enough envs each for a round to fill a batch, split evenly over devices
    assert auto_size(dict(pong, num_actors=3), cpus=16, devices=2)["num_envs"] == 4
    # envs given: as before, one actor per core but the learner's
    assert auto_size(dict(pong, num_envs=8), cpus=16, devices=1)["num_actors"] == 15


def test_actors_share_the_cores_the_learner_leaves():
    from services.launcher.stack import env_threads

    assert env_threads(1, cpus=2) == 1  # the 2-core machine: one actor, one core, the learner the other
    assert env_threads(15, cpus=16) == 1
    assert env_threads(2, cpus=8) == 3
    assert env_threads(4, cpus=1) == 1  # never zero
