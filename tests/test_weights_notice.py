"""The learner's weights notices as actors read them: a short-of-data notice lets
exactly the actor whose newest fragment the learner holds act on, once; each
actor paces itself by its own untrained fragments only; forged notices are
rejected, never obeyed."""
import asyncio
import json
import types

import pytest

from services.actor.actor import ENDED, Serving, WeightsFeed
from shared import weights
from shared.service import Counters


NOW = 1e9  # when the last fragment went out: later than any notice (short_at) unless a test says so


def feed_at(version: int) -> WeightsFeed:
    feed = WeightsFeed(types.SimpleNamespace(counters=Counters()), "run", Serving("a", 0), round_deadline_s=10.0)
    feed.ready = (version, {})
    return feed


def test_short_notice_frees_only_the_actor_whose_newest_fragment_is_held():
    feed = feed_at(64)
    feed.short = (64, {"a": 3, "b": 7})
    assert feed.turn(64, sent=("a", 3), sent_at=NOW)
    assert not feed.turn(64, sent=("a", 4), sent_at=NOW)  # a repeated notice: "a" has sent another since
    assert not feed.turn(64, sent=("c", 3), sent_at=NOW)  # an actor the learner holds nothing new from
    assert not feed_short_of_newer_weights().turn(64, sent=("a", 3), sent_at=NOW)


def test_an_actor_whose_newest_fragment_the_learner_lost_acts_again_after_the_deadline():
    """A fragment lost in transit (a broker restart) would leave the actor waiting for
    weights and the learner for the fragment, forever: a short-of-data notice that came
    round_deadline_s after the fragment went out and does not hold it lets the actor act
    again; an earlier notice, or one from before it went out, does not."""
    feed = feed_at(64)
    sent_at = 1000.0
    for have in ({"a": 3}, {}, {"b": 9}):  # an older fragment of ours, or none, in the partial batch
        feed.short = (64, have)
        feed.short_at = sent_at + 10.0
        assert feed.turn(64, ("a", 4), sent_at) == "lost"
        feed.short_at = sent_at + 9.0
        assert feed.turn(64, ("a", 4), sent_at) is None  # it may still be on its way
        feed.short_at = sent_at - 1.0
        assert feed.turn(64, ("a", 4), sent_at) is None  # a notice from before it went out
    feed.short, feed.short_at = (64, {"a": 4}), sent_at + 30.0
    assert feed.turn(64, ("a", 4), sent_at) == "held"
    feed.short = (65, {})  # the learner trained past our weights: fetch those first
    assert feed.turn(64, ("a", 4), sent_at) is None


def feed_short_of_newer_weights() -> WeightsFeed:
    feed = feed_at(32)  # the learner is at 64: acting on 32 would be a lag, so wait for 64
    feed.short = (64, {"a": 3})
    return feed


def test_newer_weights_and_the_actors_own_untrained_fragments_pace_it():
    feed = feed_at(64)
    assert feed.turn(32, sent=("a", 3), sent_at=NOW) and not feed.turn(64, sent=("a", 3), sent_at=NOW)
    feed.pending = {"b": 1}  # another actor's fragment of the next round came first: no reason to wait
    assert feed.turn(32, sent=("a", 3), sent_at=NOW)
    feed.pending = {"a": 1, "b": 1}  # ours is not trained yet: acting now would train a batch late
    assert not feed.turn(32, sent=("a", 3), sent_at=NOW)
    assert feed.turn(None, sent=("a", 3), sent_at=NOW)  # the first fragment needs only weights
    no_weights = WeightsFeed(types.SimpleNamespace(counters=Counters()), "run", Serving("a", 0), round_deadline_s=10.0)
    assert not no_weights.turn(None, ("a", 0), sent_at=NOW)


async def test_the_learners_end_notice_ends_the_wait_at_once():
    feed = feed_at(64)
    waiting = asyncio.create_task(feed.wait_for_turn(64, ("a", 3), NOW))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await feed.on_notice(types.SimpleNamespace(data=json.dumps({"version": 64, "ended": True}).encode()))
    await asyncio.wait_for(waiting, 5)
    assert feed.state.left == ENDED


def test_notices_parse_and_forged_ones_are_rejected():
    n = weights.parse_notice(json.dumps({"version": 5, "pending": {"b": 1}, "short": {"a": 2}}).encode())
    assert (n.version, n.pending, n.short) == (5, {"b": 1}, {"a": 2})
    assert weights.parse_notice(b'{"version": 5}') == (5, {}, None, False)
    assert weights.parse_notice(b'{"version": 5, "ended": true}').ended
    too_many = {str(i): 1 for i in range(weights.MAX_NOTICE_ACTORS + 1)}
    for bad in ({"version": 5, "short": []}, {"version": 5, "short": {"a": -1}}, {"version": 5, "short": {"a": True}},
                {"version": 5, "short": too_many}, {"version": 5, "pending": too_many},
                {"version": 5, "pending": {"a": "1"}}, {"version": 5, "pending": 3}, {"version": -1}):
        with pytest.raises(ValueError):
            weights.parse_notice(json.dumps(bad).encode())
