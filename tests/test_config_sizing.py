"""Config plumbing: --set overrides, the env family's preset, the step budget, and the
sizes the learner settles for its machine (resolve_sizes)."""
import json
import os

import pytest
from pydantic import ValidationError

from services.launcher.stack import ROOT, env_threads
from shared.config import ATARI_PRESET, STEP_BUDGET, RunConfig, actor_cores, apply_overrides, resolve_sizes


def test_overrides_parse_json_and_keep_plain_strings():
    cfg = apply_overrides({"env_id": "CartPole-v1"}, ["learning_rate=0.0005", "latent_ae=false", "env_id=ALE/Pong-v5",
                                                      "max_seconds=null"])
    assert cfg == {"env_id": "ALE/Pong-v5", "learning_rate": 0.0005, "latent_ae": False, "max_seconds": None}
    RunConfig(**cfg)  # and the result is a valid run


def test_every_ale_game_gets_the_atari_preset_and_pong_only_adds_its_stop_condition():
    for game in ("ALE/Breakout-v5", "ALE/SpaceInvaders-v5", "ALE/MsPacman-v5"):
        cfg = RunConfig(env_id=game)
        assert {k: getattr(cfg, k) for k in ATARI_PRESET} == RunConfig.model_validate(
            {"env_id": game, **ATARI_PRESET}).model_dump(include=set(ATARI_PRESET)), game
        assert cfg.latent_ae and cfg.unroll_length == 128 and cfg.flow == "sync"
    pong = json.loads((ROOT / "configs" / "pong.json").read_text())
    assert set(pong) == {"env_id", "target_return"}
    # a run's own fields win over the preset
    assert RunConfig(env_id="ALE/Breakout-v5", learning_rate=0.0003).learning_rate == 0.0003
    # other envs keep the defaults
    assert RunConfig(env_id="Acrobot-v1").unroll_length == RunConfig.model_fields["unroll_length"].default


def test_a_run_without_a_stop_condition_gets_its_family_budget():
    assert RunConfig(env_id="ALE/Breakout-v5").max_agent_steps == STEP_BUDGET["atari"]
    assert RunConfig(env_id="CartPole-v1").max_agent_steps == STEP_BUDGET["other"]
    assert RunConfig(env_id="CartPole-v1", target_return=475).max_agent_steps is None
    assert RunConfig(env_id="ALE/Pong-v5", max_seconds=60).max_agent_steps is None


def test_refusals_name_the_field():
    cases = {"env_id": {"env_id": "Pendulum-v1"}, "model": {"env_id": "ALE/Pong-v5", "model": "nature_cnn"},
             "latent_ae": {"latent_ae": True}, "sticky_actions": {"sticky_actions": 0.25},
             "env_kwargs": {"env_id": "ALE/Pong-v5", "env_kwargs": {"frameskip": 2}},
             "batch_size": {"batch_size": 8}}
    for field, body in cases.items():
        with pytest.raises(ValidationError) as e:
            RunConfig(**body)
        assert [err["loc"] for err in e.value.errors()] == [(field,)], (field, e.value.errors())
    assert "discrete actions only" in str(pytest.raises(ValidationError, RunConfig, env_id="Pendulum-v1").value)
    assert "Tuple" in str(pytest.raises(ValidationError, RunConfig, env_id="Blackjack-v1").value)


def test_a_stored_record_is_read_without_building_its_env():
    stored = RunConfig().model_dump() | {"env_id": "not_installed_anywhere:Env-v0"}
    assert RunConfig.model_validate(stored, context={"stored": True}).env_id == stored["env_id"]
    with pytest.raises(ValidationError):
        RunConfig.model_validate(stored)


def test_resolve_sizes_fills_only_what_is_missing():
    cart = RunConfig(env_id="CartPole-v1")  # reuse 4 trains ahead while actors act: one core stays the learner's
    assert (resolve_sizes(cart, cpus=2, devices=1).num_actors, resolve_sizes(cart, cpus=2, devices=1).num_envs) == (1, 16)
    assert resolve_sizes(cart, cpus=16, devices=1).num_actors == 8  # one per env column, up to the cores
    given = RunConfig(num_actors=4, num_envs=2, learner_threads=1)
    assert resolve_sizes(given, cpus=16).model_dump() == given.model_dump()
    assert resolve_sizes(RunConfig(num_envs=8), cpus=16, devices=1).num_actors == 15
    assert resolve_sizes(cart, cpus=2).learner_threads == 1 and resolve_sizes(cart, cpus=16).learner_threads == 1
    pong = RunConfig(env_id="ALE/Pong-v5")
    assert resolve_sizes(pong, cpus=2).learner_threads == 2 and resolve_sizes(pong, cpus=16).learner_threads == 8
    # async: the actors act while the learner trains, and it takes the cores they leave
    pong_async = RunConfig(env_id="ALE/Pong-v5", flow="async")
    assert resolve_sizes(pong_async, cpus=2, devices=1).learner_threads == 1
    assert resolve_sizes(pong_async, cpus=16, devices=1).learner_threads == 8  # 8 actors, one per env column


def test_one_round_of_the_sized_actors_is_one_batch():
    """Where a run gives neither actors nor envs (the Atari preset: 8 env columns of 128
    steps), one round of fragments, one per actor, is exactly one batch, so actors in sync
    flow act together at policy lag 0."""
    pong = RunConfig(env_id="ALE/Pong-v5")
    sized = {(c, d): resolve_sizes(pong, cpus=c, devices=d) for c, d in ((2, 1), (4, 1), (16, 1), (16, 2), (64, 1))}
    assert {k: (v.num_actors, v.num_envs) for k, v in sized.items()} == {
        (2, 1): (2, 4), (4, 1): (4, 2), (16, 1): (8, 1), (16, 2): (4, 2), (64, 1): (8, 1)}
    for (_, devices), v in sized.items():
        assert v.num_actors * v.num_envs == 8 and v.num_envs % devices == 0
    # actors given (--actors 3): enough envs each for a round to fill a batch, split evenly over devices
    assert resolve_sizes(RunConfig(env_id="ALE/Pong-v5", num_actors=3), cpus=16, devices=2).num_envs == 4


def test_actors_take_every_core_when_the_learner_waits_for_them():
    """The Atari preset (sync flow, 4 epochs, no reuse) takes turns: the learner idles while
    its actors act, so on 2 cores they get both (2 x 4, one emulator thread each). Where the
    learner trains older batches meanwhile (reuse 4 with train_ahead) or actors run free
    (async flow), one core stays the learner's: 1 x 8."""
    pong = RunConfig(env_id="ALE/Pong-v5")
    assert actor_cores(pong, cpus=2) == 2 and env_threads(2, actor_cores(pong, cpus=2)) == 1
    for change in ({"reuse": 4}, {"flow": "async"}):
        cfg = pong.model_copy(update=change)
        assert actor_cores(cfg, cpus=2) == 1, change
        assert (resolve_sizes(cfg, cpus=2, devices=1).num_actors, resolve_sizes(cfg, cpus=2, devices=1).num_envs) == (1, 8)
    # reuse without training ahead: the older batches' passes wait for the new batch, so turns again
    assert actor_cores(pong.model_copy(update={"reuse": 4, "train_ahead": False}), cpus=2) == 2


def test_actors_share_the_cores_the_learner_leaves():
    assert env_threads(1, cores=1) == 1
    assert env_threads(15, cores=15) == 1
    assert env_threads(2, cores=7) == 3
    assert env_threads(4, cores=1) == 1  # never zero
    assert env_threads(2) == max(1, ((os.cpu_count() or 2) - 1) // 2)  # default: all cores but one
