"""The replay store stays within its fragment and byte bounds, oldest out first."""
from hypothesis import given
from hypothesis import strategies as st

from services.replay.store import FragmentStore


def test_count_bound_evicts_oldest():
    s = FragmentStore(capacity=3, capacity_bytes=10**6, seed=0)
    for i in range(10):
        s.add(bytes([i]) * 10)
    assert len(s) == 3 and s.evicted == 7
    assert set(s.sample(50, 10**6)) == {bytes([i]) * 10 for i in (7, 8, 9)}


def test_byte_bound():
    s = FragmentStore(capacity=100, capacity_bytes=250, seed=0)
    for i in range(10):
        s.add(b"x" * 100)
    assert s.nbytes <= 250 and len(s) == 2
    assert not s.add(b"y" * 251)  # larger than the whole store: refused, nothing evicted
    assert len(s) == 2


def test_sample_respects_reply_size():
    s = FragmentStore(capacity=10, capacity_bytes=10**6, seed=0)
    for _ in range(10):
        s.add(b"z" * 100)
    assert len(s.sample(10, 350)) == 3
    assert FragmentStore(1, 1).sample(5, 100) == []


@given(st.lists(st.integers(1, 400), max_size=60), st.integers(1, 20), st.integers(1, 2000))
def test_bounds_hold_for_any_sequence(sizes, cap, cap_bytes):
    s = FragmentStore(cap, cap_bytes, seed=1)
    for n in sizes:
        s.add(b"a" * n)
        assert len(s) <= cap and s.nbytes <= cap_bytes
        assert s.nbytes == sum(len(x) for x in s._items)
