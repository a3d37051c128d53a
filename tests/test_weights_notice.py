"""The learner's weights notices as actors read them: a short-of-data notice lets
exactly the actor whose newest fragment the learner holds act on, once; each
actor paces itself by its own untrained fragments only; forged notices are
rejected, never obeyed."""
import json
import types

import pytest

from services.actor.actor import WeightsFeed
from shared import weights
from shared.service import Counters


def feed_at(version: int) -> WeightsFeed:
    feed = WeightsFeed(types.SimpleNamespace(counters=Counters()), "run")
    feed.ready = (version, {})
    return feed


def test_short_notice_frees_only_the_actor_whose_newest_fragment_is_held():
    feed = feed_at(64)
    feed.short = (64, {"a": 3, "b": 7})
    assert feed._may_act(64, 1, sent=("a", 3))
    assert not feed._may_act(64, 1, sent=("a", 4))  # a repeated notice: "a" has sent another since
    assert not feed._may_act(64, 1, sent=("c", 3))  # an actor the learner holds nothing new from
    assert not feed_short_of_newer_weights()._may_act(64, 1, sent=("a", 3))


def feed_short_of_newer_weights() -> WeightsFeed:
    feed = feed_at(32)  # the learner is at 64: acting on 32 would be a lag, so wait for 64
    feed.short = (64, {"a": 3})
    return feed


def test_newer_weights_and_the_actors_own_untrained_fragments_pace_it():
    feed = feed_at(64)
    assert feed._may_act(32, 1, sent=("a", 3)) and not feed._may_act(64, 1, sent=("a", 3))
    feed.pending = {"b": 1}  # another actor's fragment of the next round came first: no reason to wait
    assert feed._may_act(32, 1, sent=("a", 3))
    feed.pending = {"a": 1, "b": 1}  # ours is not trained yet: acting now would train a batch late
    assert not feed._may_act(32, 1, sent=("a", 3))
    assert feed._may_act(32, 2, sent=("a", 3))  # actor_lead 2 allows one untrained


def test_notices_parse_and_forged_ones_are_rejected():
    n = weights.parse_notice(json.dumps({"version": 5, "pending": {"b": 1}, "short": {"a": 2}}).encode())
    assert (n.version, n.pending, n.short) == (5, {"b": 1}, {"a": 2})
    assert weights.parse_notice(b'{"version": 5}') == (5, {}, None)
    too_many = {str(i): 1 for i in range(weights.MAX_NOTICE_ACTORS + 1)}
    for bad in ({"version": 5, "short": []}, {"version": 5, "short": {"a": -1}}, {"version": 5, "short": {"a": True}},
                {"version": 5, "short": too_many}, {"version": 5, "pending": too_many},
                {"version": 5, "pending": {"a": "1"}}, {"version": 5, "pending": 3}, {"version": -1}):
        with pytest.raises(ValueError):
            weights.parse_notice(json.dumps(bad).encode())
