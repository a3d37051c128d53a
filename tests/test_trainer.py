"""The trainer's sample-efficiency knobs: minibatches and the learning-rate schedules (KL-adaptive, piecewise linear)."""
import pydantic
import pytest
import torch

from services.learner.trainer import Trainer, minibatch_indices, take_rows
from shared.config import RunConfig
from shared.envs import EnvSpec
from helpers import random_batch

SPEC = EnvSpec((4,), "float32", 2)
T, B = 8, 6


def make_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    return random_batch(T, B, seed) | {"versions": torch.arange(B)}


def trainer(**overrides) -> Trainer:
    torch.manual_seed(0)
    cfg = RunConfig(**{"unroll_length": T, "batch_size": T * B, "reuse": 1} | overrides)
    return Trainer(cfg, SPEC)


def test_minibatches_cover_the_batch_once_with_samples_from_every_column():
    parts = minibatch_indices(T, B, 4, seed=7)
    seen = torch.zeros(T, B, dtype=torch.int64)
    for t_idx, b_idx in parts:
        assert len(t_idx) == T * B // 4
        assert set(b_idx.tolist()) == set(range(B))  # every trajectory contributes to every minibatch
        seen[t_idx, b_idx] += 1
    assert torch.equal(seen, torch.ones(T, B, dtype=torch.int64))
    # not whole runs of consecutive steps: the timesteps are shuffled within each column
    assert any(sorted(t_idx[b_idx == 0].tolist()) != list(range(i * 2, i * 2 + 2)) for i, (t_idx, b_idx) in enumerate(parts))


def test_ranks_draw_the_global_minibatch():
    """Two ranks, each with half the columns, together take one device's minibatches."""
    whole = minibatch_indices(T, B, 2, seed=3)
    halves = [minibatch_indices(T, B // 2, 2, seed=3, offset=r * B // 2, global_columns=B) for r in (0, 1)]
    for i in range(2):
        want = set(zip(whole[i][0].tolist(), whole[i][1].tolist()))
        got = {(t, b + r * B // 2) for r in (0, 1) for t, b in zip(halves[r][i][0].tolist(), halves[r][i][1].tolist())}
        assert got == want


def test_each_minibatch_is_one_optimiser_step():
    one, four = trainer(minibatches=1), trainer(minibatches=4)
    one.train_on(make_batch())
    four.train_on(make_batch())
    assert (one.updates, four.updates) == (1, 4)
    # four steps move the weights further than one step on the same data
    start = trainer().model.state_dict()
    dist = lambda t: sum((t.model.state_dict()[k] - start[k]).norm() for k in start)  # noqa: E731
    assert dist(four) > dist(one)


def test_epochs_are_passes_over_the_new_batch_before_the_actors_act_again():
    """epochs=3 with reuse 2: each step takes one pass over the batch kept from the
    last step and then three over the new one, each pass with freshly drawn
    minibatches; the version actors act on is the one after all of them."""
    knobs = dict(algorithm="appo", minibatches=2, target_update_interval=3)
    ep, by_hand = trainer(epochs=3, reuse=2, **knobs), trainer(reuse=1, **knobs)
    for i in range(3):
        batch = make_batch(i)
        ep.train_on(dict(batch))
        if i:
            by_hand.update(dict(make_batch(i - 1)))
        for _ in range(3):
            by_hand.update(dict(batch))
        assert ep.updates == by_hand.updates == 2 * (3 * (i + 1) + i) and ep.acted_version == ep.updates
        mine, theirs = ep.model.state_dict(), by_hand.model.state_dict()
        assert all(torch.allclose(mine[k], theirs[k]) for k in theirs), i
    with pytest.raises(pydantic.ValidationError, match="epochs"):
        RunConfig(epochs=0)


def test_a_batchs_targets_are_computed_again_only_when_the_target_network_changed():
    """4 epochs of 2 minibatches, the target copied every 4 updates: the target network
    changes every second pass, so a batch needs 2 of its 4 forward passes over the
    whole batch, and the weights are exactly those of passes that each compute their own."""
    knobs = dict(algorithm="appo", minibatches=2, target_update_interval=4)
    cached, fresh = trainer(epochs=4, **knobs), trainer(**knobs)
    forwards = []
    forward = cached.target.forward_prepared
    cached.target.forward_prepared = lambda *a, **k: forwards.append(1) or forward(*a, **k)
    for i in range(3):
        batch = make_batch(i)
        cached.train_on(dict(batch))
        for _ in range(4):
            fresh.update(dict(batch))  # a new dict each pass: nothing cached
        assert len(forwards) == 2 * (i + 1)
        for name in ("model", "target"):
            mine, theirs = getattr(cached, name).state_dict(), getattr(fresh, name).state_dict()
            assert all(torch.equal(mine[k], theirs[k]) for k in theirs), (i, name)
    assert cached.target_loads == 24 // 4  # one load every 4 of the 24 updates: each one ends a cache


def test_a_pass_returns_plain_numbers_also_when_minibatches_do_not_divide_the_steps():
    # 8 steps in 3 minibatches of 3, 3 and 2 samples per column; the statistics come back
    # from the device in one read at the end of the pass, as floats the learner can publish
    t = trainer(algorithm="appo", minibatches=3)
    stats = t.train_on(make_batch())
    assert t.updates == 3
    assert {"total", "kl", "grad_norm", "mean_rho", "learning_rate"} <= stats.keys()
    assert all(type(v) is float for v in stats.values()), stats
    assert stats["grad_norm"] > 0 and stats["mean_rho"] > 0


@pytest.mark.parametrize("lr", ["schedule", "kl_adaptive"])
def test_training_ahead_takes_the_same_updates_as_train_on_alone(lr):
    """train_ahead, called after each step (while actors act), takes the reused
    passes of the next step early; after every step the weights, the target
    network, the update count, the learning rate and the reported policy lag are
    exactly those of steps alone. Reuse 3 with 2 minibatches, the target copied
    every 3 updates (inside passes), fresh steps or the KL driving the lr."""
    knobs = dict(algorithm="appo", reuse=3, minibatches=2, target_update_interval=3, entropy_coef=0.01,
                 **({"lr_schedule": [[2 * T * B, 1e-3], [5 * T * B, 1e-4]]} if lr == "schedule"
                    else {"lr_kl_target": 1e-3}))
    plain, ahead = trainer(**knobs), trainer(**knobs)
    start = {k: v.clone() for k, v in plain.model.state_dict().items()}
    passes = 0
    for i in range(7):
        batch = make_batch(i) | {"fresh_steps": torch.tensor(T * B), "versions": torch.full((B,), plain.updates)}
        want, got = plain.step(dict(batch)), ahead.step(dict(batch))
        passes += min(i + 1, 3)  # one per batch in the reuse buffer
        assert got == want and got["policy_lag"] == 0.0 and ahead.updates == plain.updates == 2 * passes
        for name in ("model", "target"):
            mine, theirs = getattr(ahead, name).state_dict(), getattr(plain, name).state_dict()
            assert all(torch.equal(mine[k], theirs[k]) for k in theirs), (i, name)
        assert ahead.opt.param_groups[0]["lr"] == plain.opt.param_groups[0]["lr"]
        ahead.train_ahead()  # meanwhile actors act on the weights of the step just taken
        ahead.train_ahead()  # once per step: a second call takes nothing
        assert ahead.acted_version == plain.updates and ahead.updates == plain.updates + 2 * min(i + 1, 2)
    assert any(not torch.equal(v, start[k]) for k, v in plain.model.state_dict().items())


def test_adaptive_lr_moves_towards_the_kl_target():
    # the KL is read before each minibatch's step, against the policy the pass started from:
    # after the first of 4 steps it is > 0, far above a tiny target, so the lr falls
    high = trainer(lr_kl_target=1e-6, learning_rate=1e-3, minibatches=4)
    high.train_on(make_batch())
    assert high.opt.param_groups[0]["lr"] < 1e-3
    # small steps: KL << a large target, so the lr grows
    low = trainer(lr_kl_target=1.0, learning_rate=1e-3, minibatches=4)
    batch = make_batch()
    with torch.no_grad():
        batch["logits"] = low.model(batch["obs"][:T].reshape(T * B, 4))[0].view(T, B, 2)
    stats = low.train_on(batch)
    assert low.opt.param_groups[0]["lr"] > 1e-3 and stats["learning_rate"] == low.opt.param_groups[0]["lr"]
    # off: the lr stays where it was set
    fixed = trainer(learning_rate=1e-3)
    fixed.train_on(make_batch())
    assert fixed.opt.param_groups[0]["lr"] == 1e-3


@pytest.mark.parametrize("bf16", ["off", "on"])
def test_frame_input_is_built_once_per_batch_and_matches_the_stacks(bf16):
    """The model input is made on a batch's first pass and reused by later passes
    of the reuse buffer; it must be exactly the rebuilt stacks, row t * B + b, in
    float32, or in bf16 when the model runs under bf16 autocast. When a batch
    leaves the buffer its input's memory is reused for the next batch."""
    from shared.envs import env_spec
    from shared.fragment import rebuild_stacks

    Ti, Bi = 4, 2
    cfg = RunConfig(env_id="ALE/Pong-v5", unroll_length=Ti, batch_size=Ti * Bi, reuse=2, minibatches=2,
                    latent_ae=True, bf16=bf16)
    tr = Trainer(cfg, env_spec(cfg))
    dtype = torch.bfloat16 if bf16 == "on" else torch.float32
    assert tr.autocast == (bf16 == "on") and tr.input_dtype == dtype

    def frames(seed: int) -> dict:
        g = torch.Generator().manual_seed(seed)
        return {"obs": torch.randint(0, 256, (Ti + 1, Bi, 84, 84), dtype=torch.uint8, generator=g),
                "context": torch.randint(0, 256, (Bi, 3, 84, 84), dtype=torch.uint8, generator=g),
                "actions": torch.randint(0, 6, (Ti, Bi), generator=g), "logits": torch.randn(Ti, Bi, 6, generator=g),
                "rewards": torch.zeros(Ti, Bi), "dones": torch.tensor([[0, 0], [1, 0], [0, 0], [0, 1]], dtype=torch.uint8)}

    batch = frames(0)
    tr.train_on(batch)
    x = batch["model_input"]
    tr.train_on(frames(1))  # a second batch; the first one is trained on again
    assert batch["model_input"] is x
    want = rebuild_stacks(batch["obs"], batch["context"], batch["dones"]).reshape(-1, 4, 84, 84).float() / 255.0
    tol = 2.0 ** -8 if dtype == torch.bfloat16 else 1e-6  # bf16 keeps 8 significant bits
    assert x.dtype == dtype and torch.allclose(x.float(), want, rtol=tol, atol=0)
    assert x.is_contiguous(memory_format=torch.channels_last)
    third = frames(2)
    tr.train_on(third)  # the first batch leaves the buffer; the third one's input takes its memory
    assert "model_input" not in batch and third["model_input"].data_ptr() == x.data_ptr()
    want3 = rebuild_stacks(third["obs"], third["context"], third["dones"]).reshape(-1, 4, 84, 84).float() / 255.0
    assert torch.allclose(third["model_input"].float(), want3, rtol=tol, atol=0)


def test_bf16_auto_is_for_image_models_only():
    from services.learner.trainer import use_bf16

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not use_bf16("auto", cpu, image=False) and not use_bf16("auto", cuda, image=False)
    assert use_bf16("auto", cuda, image=True)
    assert use_bf16("on", cpu, image=False) and not use_bf16("off", cuda, image=True)
    assert not trainer().autocast  # CartPole's MLP stays float32 whatever the CPU


def test_bf16_auto_on_cpu_follows_a_timed_step_of_the_model():
    """On a CPU, "auto" turns bf16 on only where the CPU has bf16 instructions and
    the model's own minibatch step was faster in bf16 when timed; the timing
    leaves the model as it was."""
    from services.learner.trainer import time_training_step, use_bf16
    from shared.models import build_model

    cpu = torch.device("cpu")
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert not use_bf16("auto", cpu, image=True, faster_in_bf16=lambda: False)
    assert use_bf16("auto", cpu, image=True, faster_in_bf16=lambda: True) == native

    spec = EnvSpec((4, 84, 84), "uint8", 6, frame_stack=4, clip_rewards=True)
    cfg = RunConfig(env_id="ALE/Pong-v5", latent_ae=True, latent_dim=32, unroll_length=8, batch_size=64,
                    minibatches=4, ae_fraction=0.5)
    model = build_model(cfg, spec)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    times = time_training_step(model, spec.obs_shape, 16, cfg.ae_fraction, rounds=1)
    assert set(times) == {"float32", "bf16"} and all(0 < t < 60 for t in times.values())
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    tr = Trainer(cfg, spec)
    if native:  # timed on this machine: the faster one is used, and the log line says both
        assert tr.autocast == (tr.precision_probe["bf16"] < tr.precision_probe["float32"])
        assert "ms a minibatch step" in tr.precision()
    else:  # nothing to time: float32
        assert not tr.autocast and not tr.precision_probe and tr.precision() == "float32"


def test_lr_schedule_follows_fresh_steps_trained_and_survives_a_checkpoint():
    cfg = RunConfig(learning_rate=1e-3, lr_schedule=[[100, 1e-3], [300, 1e-4]])
    assert [cfg.learning_rate_at(s) for s in (0, 100, 300, 10_000)] == [1e-3, 1e-3, 1e-4, 1e-4]
    assert abs(cfg.learning_rate_at(200) - 5.5e-4) < 1e-12  # halfway down the line
    tr = trainer(learning_rate=1e-3, lr_schedule=[[T * B, 1e-3], [3 * T * B, 1e-4]])
    lrs = []
    for i in range(4):  # each batch holds T * B fresh steps; the lr is set from the steps trained before it
        lrs.append(tr.step(make_batch(i) | {"fresh_steps": torch.tensor(T * B)})["learning_rate"])
    assert lrs[:2] == [1e-3, 1e-3] and abs(lrs[2] - 5.5e-4) < 1e-9 and abs(lrs[3] - 1e-4) < 1e-9
    assert tr.fresh_steps == 4 * T * B
    resumed = trainer(learning_rate=1e-3, lr_schedule=[[T * B, 1e-3], [3 * T * B, 1e-4]])
    resumed.load_state(tr.state())
    assert resumed.fresh_steps == 4 * T * B
    assert resumed.step(make_batch(5))["learning_rate"] == 1e-4


def test_entropy_schedule_sets_the_weight_the_loss_uses():
    cfg = RunConfig(entropy_coef=0.01, entropy_schedule=[[100, 0.01], [300, 0.001]])
    assert [cfg.entropy_coef_at(s) for s in (0, 100, 300, 10_000)] == [0.01, 0.01, 0.001, 0.001]
    assert abs(cfg.entropy_coef_at(200) - 0.0055) < 1e-12
    # past the schedule's end the weight is 0: the step must match a run with no bonus, not one with 0.5
    scheduled = trainer(entropy_coef=0.5, entropy_schedule=[[T * B, 0.0]])
    scheduled.fresh_steps = T * B
    plain, bonus = trainer(entropy_coef=0.0), trainer(entropy_coef=0.5)
    for tr in (scheduled, plain, bonus):
        tr.step(make_batch(0))
    weights = [torch.cat([p.detach().flatten() for p in tr.model.parameters()]) for tr in (scheduled, plain, bonus)]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


def test_compiled_steps_equal_eager_ones_without_a_compile_per_entropy_weight():
    """`compile` (torch.compile of the forward and losses; on CUDA replayed as CUDA graphs)
    must take the same updates as eager code, to float tolerance, and compile once per
    minibatch shape: the entropy weight falls every batch along its schedule, and were it
    a constant of the graph each new value would be a fresh compile (seconds on a CPU)."""
    torch._dynamo.reset()
    sched = dict(algorithm="appo", minibatches=2, entropy_coef=0.05, entropy_schedule=[[1, 0.05], [4 * T * B, 0.0]])
    runs = {}
    for compiled in (False, True):
        tr = trainer(**sched, compile=compiled)
        stats = [tr.step(make_batch(i) | {"fresh_steps": torch.tensor(T * B)}) for i in range(4)]
        runs[compiled] = (torch.cat([p.detach().flatten() for p in tr.model.parameters()]), stats)
    assert len({s["entropy_coef"] for s in runs[True][1]}) == 4  # the weight changed at every batch
    for eager, comp in zip(runs[False][1], runs[True][1]):
        assert comp.keys() == eager.keys() and all(type(v) is float for v in comp.values())
        assert comp["total"] == pytest.approx(eager["total"], rel=1e-4, abs=1e-6)
    assert torch.allclose(runs[True][0], runs[False][0], rtol=1e-4, atol=1e-6)
    start = torch.cat([p.detach().flatten() for p in trainer(**sched).model.parameters()])
    assert (runs[True][0] - start).abs().max() > 1e-3  # 8 steps moved the weights: the match is not vacuous
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # 2 minibatches of 24: one shape


def test_schedules_are_validated():
    for bad in ([[0, 1e-3]], [[200, 1e-3], [100, 1e-4]], [[100, 2.0]]):
        with pytest.raises(pydantic.ValidationError, match="lr_schedule"):
            RunConfig(lr_schedule=bad)
        with pytest.raises(pydantic.ValidationError, match="entropy_schedule"):
            RunConfig(entropy_schedule=[[s, v * 10] for s, v in bad])
    with pytest.raises(pydantic.ValidationError, match="lr_kl_target"):
        RunConfig(lr_schedule=[[100, 1e-4]], lr_kl_target=0.01)


@pytest.mark.parametrize("layout", ["channels_last", "vector"])
def test_take_rows_equals_indexing_and_keeps_the_layout(layout):
    g = torch.Generator().manual_seed(0)
    if layout == "vector":
        x = torch.rand(50, 4, generator=g)
    else:
        x = torch.rand(50, 4, 6, 5, generator=g).contiguous(memory_format=torch.channels_last)
    idx = torch.randperm(50, generator=g)[:17]
    got = take_rows(x, idx)
    assert torch.equal(got, x[idx])
    if layout == "channels_last":
        assert got.is_contiguous(memory_format=torch.channels_last)


def test_a_lost_life_ends_what_is_learned_but_not_the_episode():
    """life_loss_terminal: a step where a life was lost (the game goes on) is learned as a
    done is: no value carried past it. A time-limit bootstrap adds to that step's reward."""
    tr = trainer(algorithm="impala")
    batch = make_batch() | {"dones": torch.zeros(T, B, dtype=torch.uint8), "rewards": torch.ones(T, B)}
    flags = torch.zeros(T, B, dtype=torch.uint8)
    flags[T // 2, ::2] = 1
    lost = tr.targets(dict(batch, life_lost=flags))["vs"]
    done = tr.targets(dict(batch, dones=flags))["vs"]
    free = tr.targets(dict(batch))["vs"]
    assert torch.equal(lost, done) and not torch.allclose(lost, free)
    boot = torch.zeros(T, B)
    boot[T - 1] = 0.5
    bumped = batch["rewards"].clone()
    bumped[T - 1] += 0.5
    assert torch.equal(tr.targets(dict(batch, bootstrap=boot))["vs"], tr.targets(dict(batch, rewards=bumped))["vs"])


def test_the_atari_vector_env_says_when_a_life_is_lost():
    import numpy as np

    from shared.envs import VectorEnv

    env = VectorEnv("ALE/Breakout-v5", 2, seed=0, num_threads=1)
    env.reset()
    lost = 0
    rng = np.random.default_rng(0)
    for _ in range(400):
        _, _, term, trunc, _ = env.step(rng.integers(0, 4, 2))
        assert not np.any(env.life_lost & (term | trunc))
        lost += int(env.life_lost.sum())
    env.close()
    assert lost >= 4  # random play loses lives every few dozen steps
