"""Wire format: round trip, and every kind of bad input is a WireError (never a crash or a big allocation)."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import wire


def sample_arrays():
    rng = np.random.default_rng(0)
    return {"obs": rng.integers(0, 255, (5, 3, 84, 84), dtype=np.uint8),
            "logits": rng.normal(size=(4, 3, 6)).astype(np.float32),
            "actions": rng.integers(0, 6, (4, 3)).astype(np.int32), "empty": np.zeros((0, 3), np.float32)}


def test_round_trip():
    arrays = sample_arrays()
    data = wire.encode({"run": "r1", "version": 7}, arrays)
    meta, out = wire.decode(data)
    assert meta == {"run": "r1", "version": 7}
    assert set(out) == set(arrays)
    for k, v in arrays.items():
        assert out[k].dtype == v.dtype and np.array_equal(out[k], v)


def test_every_truncation_is_rejected():
    data = wire.encode({"x": 1}, {"a": np.arange(100, dtype=np.float32)})
    for cut in range(len(data)):
        with pytest.raises(wire.WireError):
            wire.decode(data[:cut])


def test_corrupt_bodies_are_rejected():
    data = bytearray(wire.encode({}, {"a": np.arange(1000, dtype=np.int64)}))
    rejected = 0
    rng = np.random.default_rng(1)
    _, _, offset = wire.decode_header(bytes(data))
    for _ in range(200):
        bad = bytearray(data)
        i = int(rng.integers(offset, len(bad)))
        bad[i] ^= 0xFF
        try:
            wire.decode(bytes(bad))
        except wire.WireError:
            rejected += 1
    assert rejected == 200  # the CRC catches every flip, even those lz4 would decode to wrong values


def forged(header: dict, body: bytes = b"") -> bytes:
    h = json.dumps(header).encode()
    return wire.frame(h, body)


@pytest.mark.parametrize("header", [
    {"v": 1, "meta": {}, "arrays": []},  # wrong version
    {"v": 2, "meta": [], "arrays": []},  # meta not an object
    {"v": 2, "meta": {}, "arrays": [{"name": "a", "dtype": "object", "shape": [1], "csize": 0}]},  # no objects
    {"v": 2, "meta": {}, "arrays": [{"name": "a", "dtype": "float32", "shape": [2**40], "csize": 0}]},  # huge
    {"v": 2, "meta": {}, "arrays": [{"name": "a", "dtype": "float32", "shape": [-1], "csize": 0}]},
    {"v": 2, "meta": {}, "arrays": [{"name": "a b", "dtype": "float32", "shape": [1], "csize": 0}]},
    {"v": 2, "meta": {}, "arrays": [{"name": "a", "dtype": "float32", "shape": [1, 1, 1, 1, 1, 1, 1], "csize": 0}]},
    {"v": 2, "meta": {}, "arrays": [{"name": "a", "dtype": "float32", "shape": [4], "csize": 10}]},  # no body
])
def test_forged_headers_are_rejected(header):
    with pytest.raises(wire.WireError):
        wire.decode(forged(header))


def test_decompression_bomb_is_bounded():
    """A body that claims far more than the limit is refused before decompression."""
    header = {"v": 2, "meta": {}, "arrays": [
        {"name": "a", "dtype": "uint8", "shape": [wire.MAX_RAW_BYTES + 1], "csize": 3}]}
    with pytest.raises(wire.WireError):
        wire.decode(forged(header, b"abc"))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_never_crash(data):
    try:
        wire.decode(data)
    except wire.WireError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_blob_lists_round_trip(blobs):
    assert wire.unpack_blobs(wire.pack_blobs(blobs)) == blobs


def test_blob_list_defects():
    good = wire.pack_blobs([b"abc", b"de"])
    for cut in range(len(good)):
        with pytest.raises(wire.WireError):
            wire.unpack_blobs(good[:cut])
    with pytest.raises(wire.WireError):
        wire.unpack_blobs(good + b"x")
    with pytest.raises(wire.WireError):
        wire.unpack_blobs(wire.pack_blobs([b""] * 5), max_count=4)
