"""A run's progress is counted from the fragments the learner validated, never from
what actors claim: episode returns summed from raw rewards and done flags across
fragments and parts of fragments, only for episodes seen from their first step,
and forgotten when an actor's messages went missing."""
import numpy as np

from services.learner.progress import EpisodeTracker, Progress


def outcomes(T: int, N: int, reward: float, done_at: dict[int, list[int]]) -> tuple[np.ndarray, np.ndarray]:
    rewards = np.full((T, N), reward, np.float32)
    dones = np.zeros((T, N), np.uint8)
    for t, cols in done_at.items():
        dones[t, cols] = 1
    return rewards, dones


def test_returns_span_fragments_and_count_only_whole_episodes():
    tr = EpisodeTracker(num_envs=2)
    # fragment 1 (t0 0: the actor just reset its envs): column 0 ends an episode of 3 steps
    assert tr.add("a", 0, 0, *outcomes(4, 2, 1.0, {2: [0]})) == [(3.0, 3)]
    # fragment 2: column 1's episode, 4 + 2 steps long, ends; column 0's second one runs on
    assert tr.add("a", 0, 4, *outcomes(4, 2, 0.5, {1: [1]})) == [(4.0 + 2 * 0.5, 6)]
    # fragment 3: column 0's second episode (1 step of fragment 1, 4 of fragment 2, 1 here) ends
    assert tr.add("a", 0, 8, *outcomes(4, 2, 0.0, {0: [0]})) == [(1.0 + 4 * 0.5, 6)]


def test_an_actor_first_seen_mid_run_counts_from_its_first_done():
    tr = EpisodeTracker(num_envs=1)
    assert tr.add("late", 0, 128, *outcomes(4, 1, 1.0, {1: [0]})) == []  # began before we saw it
    assert tr.add("late", 0, 132, *outcomes(4, 1, 1.0, {3: [0]})) == [(6.0, 6)]


def test_parts_of_a_split_fragment_add_up_per_column():
    tr = EpisodeTracker(num_envs=4)
    assert tr.add("a", 0, 0, *outcomes(2, 2, 1.0, {1: [1]})) == [(2.0, 2)]  # columns 0-1
    assert tr.add("a", 2, 0, *outcomes(2, 2, 2.0, {1: [0]})) == [(4.0, 2)]  # columns 2-3
    assert tr.add("a", 2, 2, *outcomes(2, 2, 2.0, {0: [1]})) == [(6.0, 3)]


def test_a_gap_forgets_the_actors_open_episodes():
    tr = EpisodeTracker(num_envs=1)
    tr.add("a", 0, 0, *outcomes(4, 1, 1.0, {}))
    tr.lost("a")  # its next message was lost: this episode's return is unknown
    assert tr.add("a", 0, 8, *outcomes(4, 1, 1.0, {0: [0]})) == []
    assert tr.add("a", 0, 12, *outcomes(4, 1, 1.0, {3: [0]})) == [(7.0, 7)]  # 3 steps after that done, 4 here


def test_forged_actor_ids_cannot_grow_the_tracker():
    tr = EpisodeTracker(num_envs=1, max_actors=10)
    for i in range(1000):
        tr.add(f"forged-{i}", 0, 0, *outcomes(1, 1, 1e9, {}))
    assert len(tr.open) == 10


def test_progress_counts_steps_and_keeps_a_window_of_returns():
    pr = Progress(window=3, steps_offset=100, episodes_offset=7)
    pr.add_steps(64)
    pr.add_episodes([(1.0, 5), (2.0, 5), (3.0, 5), (10.0, 5)])
    assert pr.agent_steps == 164 and pr.episodes == 11 and pr.mean_return == 5.0 and pr.window_full
    assert pr.check_solved(5.0, 1.0) and pr.solved["agent_steps"] == 164 and pr.solved["mean_return"] >= 5.0
    assert not Progress(window=3).check_solved(0.0, 1.0)  # no episodes yet: not solved
