"""The learner's weights notices as actors read them: a short-of-data notice lets
exactly the actor whose newest fragment the learner holds act on, once; forged
notices are rejected, never obeyed."""
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


def test_newer_weights_and_backlog_still_pace_as_before():
    feed = feed_at(64)
    assert feed._may_act(32, 1, sent=("a", 3)) and not feed._may_act(64, 1, sent=("a", 3))
    feed.backlog = 1
    assert not feed._may_act(32, 1, sent=("a", 3))


def test_notices_parse_and_forged_ones_are_rejected():
    n = weights.parse_notice(json.dumps({"version": 5, "backlog": 1, "short": {"a": 2}}).encode())
    assert (n.version, n.backlog, n.short) == (5, 1, {"a": 2})
    assert weights.parse_notice(b'{"version": 5}').short is None
    for bad in ({"version": 5, "short": []}, {"version": 5, "short": {"a": -1}}, {"version": 5, "short": {"a": True}},
                {"version": 5, "short": {str(i): 1 for i in range(weights.MAX_SHORT_ACTORS + 1)}}, {"version": -1}):
        with pytest.raises(ValueError):
            weights.parse_notice(json.dumps(bad).encode())
