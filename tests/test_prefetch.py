"""The prefetch pipeline: in order, nothing lost under a slow consumer, bounded when overrun;
it counts each actor's fresh columns until they are trained or dropped, and tells
actors it is short of data only once every actor's fragment of the round is in."""
import asyncio

import numpy as np
import torch

from services.learner.prefetch import Prefetcher
from services.learner.progress import SequenceGaps
from shared.config import RunConfig
from shared.envs import EnvSpec
from shared.fragment import Fragment, encode_fragment
from shared.service import Counters

SPEC = EnvSpec((4,), "float32", 2)
T, N = 8, 4


def fragment(i: int, version: int = 0, run: str = "r1", actor: str = "a", seq: int = 0, env_seed: int = 0) -> bytes:
    """Fragment number i carries i in every reward, so order can be checked after batching."""
    return encode_fragment(Fragment(run, actor, version, np.zeros((T + 1, N, 4), np.float32),
                                    np.zeros((T, N), np.int32), np.zeros((T, N, 2), np.float32),
                                    np.full((T, N), float(i), np.float32), np.zeros((T, N), np.uint8), seq=seq,
                                    env_seed=env_seed))


def make(counters, **kw) -> Prefetcher:
    cfg = RunConfig(num_actors=1, num_envs=N, unroll_length=T, batch_size=2 * N * T, prefetch_batches=2, max_policy_lag=5)
    return Prefetcher(cfg, SPEC, "r1", torch.device("cpu"), lambda: 0, counters, **kw)


async def test_in_order_without_loss_under_a_slow_consumer():
    counters = Counters()
    p = make(counters, fresh_capacity=100)
    task = asyncio.create_task(p.run())
    for i in range(40):
        p.offer(fragment(i))
    seen = []
    for _ in range(20):
        await asyncio.sleep(0.02)  # slow optimiser
        batch = await asyncio.wait_for(p.queue.get(), 10)
        assert p.queue.qsize() <= 2
        assert batch["obs"].shape == (T + 1, 2 * N, 4) and int(batch["fresh_steps"]) == 2 * N * T
        seen += [int(batch["rewards"][0, k * N]) for k in range(2)]
    task.cancel()
    assert seen == list(range(40))
    assert counters.get("dropped_fresh", 0) == 0 and counters.get("rejected", 0) == 0


async def test_a_batch_orders_its_fresh_columns_by_env_seed_not_by_arrival():
    """Two actors' fragments of a round make the same batch whichever came first (a
    race between the actors), so a seed's run repeats; one actor's keep their order."""
    batches = []
    for first, second in ((0, 1), (1, 0)):
        p = make(Counters())
        frags = {0: fragment(10, actor="a", env_seed=1000, seq=1), 1: fragment(20, actor="b", env_seed=2000, seq=1)}
        p.offer(frags[first])
        p.offer(frags[second])
        batches.append(await asyncio.wait_for(p.next_batch(), 10))
    assert all(torch.equal(batches[0][k], batches[1][k]) for k in batches[0])
    assert [int(batches[0]["rewards"][0, k * N]) for k in range(2)] == [10, 20]
    p = make(Counters())
    p.offer(fragment(1, env_seed=7, seq=1))
    p.offer(fragment(2, env_seed=7, seq=2))
    batch = await asyncio.wait_for(p.next_batch(), 10)
    assert [int(batch["rewards"][0, k * N]) for k in range(2)] == [1, 2]


async def test_overrun_drops_oldest_and_counts():
    counters = Counters()
    p = make(counters, fresh_capacity=8)
    for i in range(30):  # nobody consumes: the queue must not grow
        p.offer(fragment(i))
    assert len(p.fresh) == 8 and counters["dropped_fresh"] == 22
    batch = await asyncio.wait_for(p.next_batch(), 10)
    assert [int(batch["rewards"][0, k * N]) for k in range(2)] == [22, 23]


async def test_bad_foreign_and_stale_fragments_are_dropped_and_counted():
    counters = Counters()
    p = make(counters, fresh_capacity=100)
    p.version = lambda: 100  # learner far ahead: version-0 fragments are stale
    p.offer(b"garbage")
    p.offer(fragment(1, run="other"))
    p.offer(fragment(2, version=0))
    p.offer(fragment(3, version=99))
    p.offer(fragment(4, version=98))
    batch = await asyncio.wait_for(p.next_batch(), 10)
    assert [int(batch["rewards"][0, k * N]) for k in range(2)] == [3, 4]
    assert counters["rejected"] == 2 and counters["stale_dropped"] == 1


async def test_fragments_larger_than_a_batch_are_split_without_loss():
    """Batches of 3 columns from fragments of 4: every column trained once, in order."""
    counters = Counters()
    cfg = RunConfig(num_actors=1, num_envs=N, unroll_length=T, batch_size=3 * T, prefetch_batches=2)
    p = Prefetcher(cfg, SPEC, "r1", torch.device("cpu"), lambda: 0, counters, fresh_capacity=100)
    for i in range(3):
        p.offer(fragment(i))
    cols = []
    for _ in range(4):
        batch = await asyncio.wait_for(p.next_batch(), 10)
        assert batch["actions"].shape == (T, 3) and int(batch["fresh_steps"]) == 3 * T
        cols += [int(v) for v in batch["rewards"][0]]
    assert cols == [0] * 4 + [1] * 4 + [2] * 4


async def test_pending_counts_columns_until_trained_or_dropped():
    """Actors pace themselves by their pending fragments: a fragment counts from its
    arrival until the optimiser has trained on it, also while it is being decoded or
    waits in an assembled batch, and stops counting when it is dropped."""
    counters = Counters()
    p = make(counters, fresh_capacity=4)
    p.version = lambda: 100
    for i, version in enumerate((99, 99, 0, 99)):  # fragment 2 is stale: dropped when it is decoded
        p.offer(fragment(i, version=version))
    assert p.pending_fragments() == {"a": 4}
    p.offer(fragment(4, version=99))  # full: the oldest (0) is dropped on arrival
    assert counters["dropped_fresh"] == 1 and p.pending_fragments() == {"a": 4}
    task = asyncio.create_task(p.run())
    batch = await asyncio.wait_for(p.queue.get(), 10)
    assert counters["stale_dropped"] == 1 and [int(batch["rewards"][0, k * N]) for k in range(2)] == [1, 3]
    # the batch taken off the queue is not trained yet, and fragment 4 is in the next one
    assert p.pending_fragments() == {"a": 3}
    p.consumed()
    assert p.pending_fragments() == {"a": 1}
    task.cancel()


async def test_each_rank_takes_its_share_of_every_fragment():
    """Two ranks of a multi-device learner each take half of every fragment's env
    columns, so one round of fragments fills both ranks' batches at once (paced
    actors wait for the step that needs both); together they hold the columns one
    rank alone would, each once, and each rank's pending count is in fragments."""
    counters = Counters()
    cfg = RunConfig(num_actors=1, num_envs=N, unroll_length=T, batch_size=2 * N * T, prefetch_batches=2)
    whole = Prefetcher(cfg, SPEC, "r1", torch.device("cpu"), lambda: 0, counters)
    ranks = [Prefetcher(cfg, SPEC, "r1", torch.device("cpu"), lambda: 0, counters, columns=N, share=(r, 2))
             for r in (0, 1)]
    for i in range(2):
        data = encode_fragment(Fragment("r1", "a", 0, np.zeros((T + 1, N, 4), np.float32), np.zeros((T, N), np.int32),
                                        np.zeros((T, N, 2), np.float32),
                                        np.tile(np.arange(N, dtype=np.float32) + 10 * i, (T, 1)),  # 10 i + column
                                        np.zeros((T, N), np.uint8)))
        for p in [whole, *ranks]:
            p.offer(data)
    assert [p.pending_fragments() for p in (whole, *ranks)] == [{"a": 2}] * 3
    one = [int(v) for v in (await asyncio.wait_for(whole.next_batch(), 10))["rewards"][0]]
    halves = [await asyncio.wait_for(p.next_batch(), 10) for p in ranks]
    assert [[int(v) for v in h["rewards"][0]] for h in halves] == [[0, 1, 10, 11], [2, 3, 12, 13]]
    assert sorted(v for h in halves for v in h["rewards"][0].tolist()) == sorted(one)
    assert all(int(h["fresh_steps"]) == N * T for h in halves)
    ranks[0].consumed()
    assert ranks[0].pending_fragments() == {} and ranks[1].pending_fragments() == {"a": 2}


async def test_each_actor_is_pending_only_its_own_fragments_and_a_round_completes_before_short():
    """Two actors each make one fragment of a two-fragment batch. The faster one's
    fragment of the next round does not count against the other (it would wait for
    it to be trained, i.e. for its own); while the next batch holds only the faster
    actor's fragment, that actor is not told the batch is short (let go, it would
    fill the batch itself and the other's fragment would train a batch late). One
    actor alone, making both fragments of its batches, is told after its first."""
    p = make(Counters(), fresh_capacity=100)
    p.offer(fragment(0, actor="a", seq=1))
    p.offer(fragment(1, actor="b", seq=1))
    await asyncio.wait_for(p.next_batch(), 10)
    p.consumed()
    p.offer(fragment(2, actor="a", seq=2))
    assert p.pending_fragments() == {"a": 1} and p.awaited()  # b waits for the next weights
    waiting = asyncio.create_task(p.next_batch())
    await asyncio.sleep(0.1)
    assert [f.actor_id for f in p.waiting_with] == ["a"] and p.short_of() is None
    p.offer(fragment(3, actor="b", seq=2))
    assert [int(v) for v in (await asyncio.wait_for(waiting, 10))["rewards"][0, ::N]] == [2, 3]
    assert not p.awaited()  # both are in the batch about to be trained

    alone = make(Counters(), fresh_capacity=100)
    for seq in (1, 2, 3):
        alone.offer(fragment(seq, seq=seq))
    await asyncio.wait_for(alone.next_batch(), 10)
    waiting = asyncio.create_task(alone.next_batch())
    await asyncio.sleep(0.1)
    assert alone.short_of() == {"a": 3}
    alone.offer(fragment(4, seq=4))
    await asyncio.wait_for(waiting, 10)


async def test_at_the_start_no_actor_is_let_go_before_the_configured_actors_serve_the_run():
    """The run's first fragments: while fewer than num_actors actors serve the run, for
    round_deadline_s, the first actor is not told to fill the batch itself (which actor
    started first is a race, and the batches would differ from run to run); after that
    a run with fewer actors than configured goes on."""
    clock, members = [1000.0], {"a"}
    p = Prefetcher(RunConfig(num_envs=N, unroll_length=T, batch_size=2 * N * T, num_actors=2, round_deadline_s=10.0),
                   SPEC, "r1", torch.device("cpu"), lambda: 0, Counters(), members=lambda: set(members))
    p.clock = lambda: clock[0]
    p.offer(fragment(0, actor="a", seq=1))
    waiting = asyncio.create_task(p.next_batch())
    await asyncio.sleep(0.1)
    assert p.short_of() is None  # "b" is still starting
    clock[0] += 9.5
    assert p.short_of() is None
    clock[0] += 1.0
    assert p.short_of() == {"a": 1}
    waiting.cancel()


async def test_a_round_goes_on_without_an_actor_that_misses_its_deadline_until_it_sends_again():
    """An actor that stalls (or left without a word) holds a round for at most
    round_deadline_s from the round's weights; then it is benched: rounds no longer
    wait for it, and its next fragment brings it back."""
    clock, members = [1000.0], {"a", "slow"}
    p = Prefetcher(RunConfig(num_actors=2, num_envs=N, unroll_length=T, batch_size=2 * N * T, round_deadline_s=10.0),
                   SPEC, "r1", torch.device("cpu"), lambda: 0, Counters(), members=lambda: set(members))
    p.clock = lambda: clock[0]
    p.offer(fragment(0, actor="a", seq=1))
    p.offer(fragment(1, actor="slow", seq=1))
    await asyncio.wait_for(p.next_batch(), 10)
    p.consumed()
    p.new_round()  # the weights trained on that batch go out
    p.offer(fragment(2, actor="a", seq=2))
    waiting = asyncio.create_task(p.next_batch())
    await asyncio.sleep(0.1)
    clock[0] += 9.0
    assert p.short_of() is None  # "slow" may still come
    clock[0] += 1.5
    assert p.short_of() == {"a": 2} and p.roster() == {"a"}  # benched: the round goes on
    assert p.counters["round_deadline_missed"] == 1
    p.offer(fragment(3, actor="slow", seq=2))  # it caught up: rounds wait for it again
    assert p.roster() == {"a", "slow"}
    await asyncio.wait_for(waiting, 10)
    assert p.round_wait_max >= 10.0


async def test_a_round_that_brought_nothing_is_announced_once_overdue():
    """Every fragment of a round lost in transit (a broker restart): the batch waits
    with nothing in it, and its actors wait for weights that need that data. Once the
    round is round_deadline_s old the learner says it holds nothing, so the actors can
    tell their fragments were lost; before that, and while not waiting, it says nothing."""
    clock = [1000.0]
    p = Prefetcher(RunConfig(num_actors=1, num_envs=N, unroll_length=T, batch_size=N * T, round_deadline_s=10.0),
                   SPEC, "r1", torch.device("cpu"), lambda: 0, Counters(), members=lambda: {"a"}, gaps=SequenceGaps())
    p.clock = lambda: clock[0]
    p.offer(fragment(0, actor="a", seq=1))
    await asyncio.wait_for(p.next_batch(), 10)
    p.consumed()
    p.new_round()
    clock[0] += 20.0
    assert p.short_of() is None  # no batch is being made
    waiting = asyncio.create_task(p.next_batch())
    await asyncio.sleep(0.1)
    assert p.short_of() == {}
    p.new_round()  # weights went out again: a new round
    clock[0] += 9.0
    assert p.short_of() is None
    clock[0] += 1.0
    assert p.short_of() == {}
    p.offer(fragment(1, actor="a", seq=3))  # seq 2 never came
    await asyncio.wait_for(waiting, 10)
    assert p.counters["lost_in_transit"] == 1


async def test_only_actors_serving_the_run_hold_a_round():
    """The roster is the run's members (their heartbeats): one that stopped sending them
    (or said it left) no longer holds a round, whatever it sent before."""
    members = {"gone", "a"}
    p = Prefetcher(RunConfig(num_actors=1, num_envs=N, unroll_length=T, batch_size=2 * N * T),
                   SPEC, "r1", torch.device("cpu"), lambda: 0, Counters(), members=lambda: set(members))
    p.offer(fragment(0, actor="gone", seq=1))
    p.offer(fragment(1, actor="a", seq=1))
    await asyncio.wait_for(p.next_batch(), 10)
    p.consumed()
    p.offer(fragment(2, actor="a", seq=2))
    waiting = asyncio.create_task(p.next_batch())
    await asyncio.sleep(0.1)
    assert p.short_of() is None
    members.discard("gone")
    assert p.short_of() == {"a": 2}
    waiting.cancel()


async def test_the_runs_progress_comes_from_the_fragments():
    """Every fresh fragment that passes the header check and whose rewards and done flags
    are valid counts its steps; anything else is rejected and counts nothing."""
    seen, counters = [], Counters()
    p = Prefetcher(RunConfig(num_actors=1, num_envs=N, unroll_length=T, batch_size=2 * N * T), SPEC, "r1",
                   torch.device("cpu"), lambda: 0, counters,
                   account=lambda meta, rewards, dones: seen.append((meta["actor"], rewards.size)))
    p.offer(fragment(0, actor="a", seq=1))
    bad_dones = encode_fragment(Fragment("r1", "b", 0, np.zeros((T + 1, N, 4), np.float32), np.zeros((T, N), np.int32),
                                         np.zeros((T, N, 2), np.float32), np.zeros((T, N), np.float32),
                                         np.full((T, N), 7, np.uint8)))
    nan_rewards = encode_fragment(Fragment("r1", "c", 0, np.zeros((T + 1, N, 4), np.float32),
                                           np.zeros((T, N), np.int32), np.zeros((T, N, 2), np.float32),
                                           np.full((T, N), np.nan, np.float32), np.zeros((T, N), np.uint8)))
    for bad in (bad_dones, nan_rewards, fragment(1, run="other")):
        p.offer(bad)
    assert seen == [("a", T * N)] and counters["rejected"] == 3
