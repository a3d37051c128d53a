"""The launcher's and benchmarks' shared config plumbing: --set overrides and auto-sizing."""
import os

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


def test_actors_take_every_core_when_the_learner_waits_for_them():
    """The Pong preset (4 epochs, no reuse, paced actors one fragment ahead) takes turns:
    the learner idles while its actors act, so on 2 cores they get both (2 x 4, one
    emulator thread each). Where the learner trains older batches meanwhile (reuse 4
    with train_ahead) or actors run free (actor_wait 0, or a lead of 2), one core stays
    the learner's: 1 x 8."""
    import json

    from services.launcher.stack import ROOT, env_threads
    from shared.config import actor_cores

    preset = json.loads((ROOT / "configs" / "pong.json").read_text())
    sized = auto_size(dict(preset), cpus=2, devices=1)
    assert (sized["num_actors"], sized["num_envs"], actor_cores(preset, cpus=2)) == (2, 4, 2)
    assert env_threads(2, actor_cores(preset, cpus=2)) == 1
    for change in ({"reuse": 4}, {"actor_wait": 0.0}, {"actor_lead": 2}):
        cfg = dict(preset, **change)
        assert actor_cores(cfg, cpus=2) == 1, change
        assert (auto_size(cfg, cpus=2, devices=1)["num_actors"], cfg["num_envs"]) == (1, 8), change
    # reuse without training ahead: the older batches' passes wait for the new batch, so turns again
    assert actor_cores(dict(preset, reuse=4, train_ahead=False), cpus=2) == 2
    # 16 cores: one actor per env column either way
    assert auto_size(dict(preset), cpus=16, devices=1)["num_actors"] == 8


def test_actors_share_the_cores_the_learner_leaves():
    from services.launcher.stack import env_threads

    assert env_threads(1, cores=1) == 1  # the 2-core machine, old preset: one actor, one core, the learner the other
    assert env_threads(15, cores=15) == 1
    assert env_threads(2, cores=7) == 3
    assert env_threads(4, cores=1) == 1  # never zero
    assert env_threads(2) == max(1, ((os.cpu_count() or 2) - 1) // 2)  # default: all cores but one
