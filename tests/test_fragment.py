"""Fragments: validation against the run's spec, and Atari stack rebuild from frames."""
import numpy as np
import pytest
import torch

from shared import wire
from shared.envs import EnvSpec, VectorEnv
from shared.fragment import (Fragment, check_header, collate, decode_fragment, encode_fragment, encode_within,
                             rebuild_stacks)

SPEC = EnvSpec((4,), "float32", 2)


def make_fragment(T=8, N=3, run="r1", version=5, spec=SPEC):
    rng = np.random.default_rng(0)
    return Fragment(run, "a1", version, rng.normal(size=(T + 1, N) + spec.obs_shape).astype(np.float32),
                    rng.integers(0, spec.num_actions, (T, N)).astype(np.int32),
                    rng.normal(size=(T, N, spec.num_actions)).astype(np.float32),
                    np.ones((T, N), np.float32), np.zeros((T, N), np.uint8))


def test_fragment_round_trip_and_collate():
    f = make_fragment()
    f.seq = 42  # the learner's short-of-data notice names each actor's newest fragment by it
    f.env_seed = 101_000  # a batch orders its columns by it
    g = decode_fragment(encode_fragment(f), "r1", SPEC, 8)
    assert g.version == 5 and np.array_equal(g.obs, f.obs) and np.array_equal(g.actions, f.actions)
    assert (g.actor_id, g.seq, g.env_seed) == ("a1", 42, 101_000)
    batch = collate([g, g])
    assert batch["obs"].shape == (9, 6, 4) and batch["actions"].shape == (8, 6)
    assert list(batch["versions"]) == [5] * 6


def test_a_fragment_over_the_message_limit_is_sent_as_parts_of_its_envs():
    """Each part fits, carries the next sequence number (no false 'lost in transit'),
    and the parts together are the fragment: the same columns in the same order."""
    f = make_fragment(T=16, N=10)
    f.seq = 7
    whole = encode_fragment(f)
    assert encode_within(f, len(whole)) == [whole]  # fits: one message, as before
    limit = len(whole) // 3
    parts = encode_within(f, limit)
    assert len(parts) >= 3 and all(len(p) <= limit for p in parts)
    got = [decode_fragment(p, "r1", SPEC, 16) for p in parts]
    assert [g.seq for g in got] == list(range(7, 7 + len(parts)))
    assert {g.version for g in got} == {5}
    batch, want = collate(got), collate([f])
    assert all(np.array_equal(batch[k], want[k]) for k in want)
    assert all(g.num_columns % 2 == 0 for g in got)  # 10 envs: parts of whole pairs, one per rank of 2
    two_columns = len(encode_fragment(f.columns(0, 2)))
    assert len(encode_within(f, two_columns // 2)) == 5  # nothing smaller than one pair to send


@pytest.mark.parametrize("mutate", [
    lambda f: setattr(f, "run_id", "other"),  # claims another run
    lambda f: setattr(f, "obs", f.obs[:, :, :3].copy()),  # wrong obs shape
    lambda f: setattr(f, "actions", f.actions.astype(np.int64)),  # wrong dtype
    lambda f: setattr(f, "actions", f.actions + 7),  # action out of range
    lambda f: setattr(f, "logits", f.logits * np.nan),  # non-finite
    lambda f: setattr(f, "rewards", f.rewards[:4].copy()),  # inconsistent T
    lambda f: setattr(f, "version", -1),
    lambda f: setattr(f, "env_seed", -3),
])
def test_bad_fragments_are_rejected(mutate):
    f = make_fragment()
    mutate(f)
    with pytest.raises(wire.WireError):
        decode_fragment(encode_fragment(f), "r1", SPEC, 8)


def test_wrong_unroll_length_is_rejected():
    with pytest.raises(wire.WireError):
        check_header(encode_fragment(make_fragment(T=8)), "r1", SPEC, 16)


def test_stack_rebuild_equals_the_envs_own_stacks():
    """Breakout with random actions ends episodes often; rebuild every window, including ones
    that start mid-episode and ones that cross episode boundaries."""
    env = VectorEnv("ALE/Breakout-v5", 4, seed=0, num_threads=1)
    obs = [env.reset()]
    dones = []
    rng = np.random.default_rng(0)
    for _ in range(400):
        o, _, term, trunc, _ = env.step(rng.integers(0, env.spec.num_actions, 4))
        obs.append(o)
        dones.append(term | trunc)
    env.close()
    obs, dones = np.stack(obs), np.stack(dones).astype(np.uint8)
    assert dones.sum() >= 2, "the test needs episode ends inside the window"
    for start in (0, 50, 123, 250):
        stacks = obs[start:]
        rebuilt = rebuild_stacks(torch.from_numpy(stacks[:, :, -1].copy()), torch.from_numpy(stacks[0, :, :-1].copy()),
                                 torch.from_numpy(dones[start:]))
        assert np.array_equal(rebuilt.numpy(), stacks)


def test_sequence_gaps_count_lost_fragments_with_bounded_memory():
    from services.learner.progress import SequenceGaps

    gaps = SequenceGaps(max_actors=2)
    assert [gaps.observe("a", s) for s in (1, 2, 5, 6)] == [0, 0, 2, 0]
    assert gaps.observe("a", 3) == 0  # late or reordered: not counted twice, never negative
    assert gaps.observe("b", 10) == 0  # first sight of an actor: no history, nothing lost
    gaps.observe("c", 1)
    assert len(gaps.last) == 2 and "a" not in gaps.last  # least recently seen forgotten
