"""The learner's view of actor stats: cumulative counts per actor, summed over
actors, and never raised by a malformed field (a forged message must not make
a lag-0 run look broken, nor a broken one look clean by going backwards)."""
import json

from services.learner.progress import Progress
from shared.service import Counters


def stats(actor: str, steps: int, **extra) -> bytes:
    return json.dumps({"actor": actor, "steps": steps, "episodes": [], **extra}).encode()


def test_wait_timeouts_and_failed_publications_are_cumulative_per_actor_and_summed():
    pr, counters = Progress(), Counters()
    pr.on_stats(stats("a", 100, wait_timeouts=2, publish_failed=1), counters)
    pr.on_stats(stats("a", 200, wait_timeouts=3, publish_failed=4), counters)  # cumulative: 3, not 5
    pr.on_stats(stats("b", 50, wait_timeouts=1), counters)
    pr.on_stats(stats("a", 250, wait_timeouts=1, publish_failed=2), counters)  # reordered: never backwards
    assert pr.wait_timeouts == 4 and pr.publish_failed == 4 and pr.agent_steps == 300


def test_bad_wait_timeouts_are_ignored_and_the_message_still_counts():
    pr, counters = Progress(), Counters()
    for bad in (-1, True, "7", 2.5, None, [1]):
        pr.on_stats(stats("a", 10, wait_timeouts=bad), counters)
    pr.on_stats(stats("b", 5), counters)  # older actors send no such field
    assert pr.wait_timeouts == 0 and pr.agent_steps == 15
    assert counters.get("rejected_stats", 0) == 0
