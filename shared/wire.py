"""Wire format for arrays: a versioned JSON header plus lz4-compressed raw bytes.

    b"RLW2" | u32 header length | u32 CRC-32 of the rest | header JSON | array bodies

The CRC makes any bit flip or splice in transit a rejected message instead
of a fragment of silently wrong numbers (lz4 blocks carry no checksum).

Never pickle: the header names dtypes and shapes from an allow-list, every
size is checked against limits *before* any allocation, and anything that
fails raises WireError, which services turn into a dropped-and-counted message.
"""
from __future__ import annotations

import json
import struct
import zlib
from typing import Any, Mapping, Optional

import lz4.block
import numpy as np

MAGIC = b"RLW2"
WIRE_VERSION = 2
MAX_HEADER_BYTES = 64 * 1024
MAX_RAW_BYTES = 256 * 1024 * 1024  # weights of a large model, a big fragment
MAX_ARRAYS = 256
MAX_NDIM = 6
DTYPES = {"uint8", "int8", "int32", "int64", "float16", "float32", "float64", "bool"}
_PREFIX = struct.Struct("<4sII")
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.")


class WireError(ValueError):
    """A message that is not a valid wire message; drop it and count it."""


def encode(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], level: int = 0) -> bytes:
    """Encode JSON-able meta plus named arrays. level 0 is lz4's fast mode."""
    specs, bodies = [], []
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        if arr.dtype.name not in DTYPES:
            raise WireError(f"dtype {arr.dtype} of {name!r} not allowed")
        raw = arr.tobytes()
        body = lz4.block.compress(raw, store_size=False, mode="fast", acceleration=1) if level == 0 else \
            lz4.block.compress(raw, store_size=False, mode="high_compression", compression=level)
        specs.append({"name": name, "dtype": arr.dtype.name, "shape": list(arr.shape), "csize": len(body)})
        bodies.append(body)
    header = json.dumps({"v": WIRE_VERSION, "meta": dict(meta), "arrays": specs}, separators=(",", ":")).encode()
    return frame(header, b"".join(bodies))


def frame(header: bytes, body: bytes) -> bytes:
    """Prefix (magic, header length, CRC-32 over header and body) + header + body."""
    crc = zlib.crc32(body, zlib.crc32(header))
    return b"".join([_PREFIX.pack(MAGIC, len(header), crc), header, body])


def decode_header(data: bytes) -> tuple[dict, list[dict], int]:
    """Parse and check the header only (cheap): (meta, array specs, body offset)."""
    if len(data) < _PREFIX.size:
        raise WireError("truncated prefix")
    magic, hlen, crc = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise WireError("bad magic (or another wire version)")
    if hlen > MAX_HEADER_BYTES or _PREFIX.size + hlen > len(data):
        raise WireError("bad header length")
    if zlib.crc32(memoryview(data)[_PREFIX.size:]) != crc:
        raise WireError("checksum mismatch: corrupt or truncated")
    try:
        header = json.loads(data[_PREFIX.size:_PREFIX.size + hlen])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WireError(f"header is not JSON: {e}") from None
    if not isinstance(header, dict) or header.get("v") != WIRE_VERSION:
        raise WireError("wrong wire version")
    meta, specs = header.get("meta"), header.get("arrays")
    if not isinstance(meta, dict) or not isinstance(specs, list) or len(specs) > MAX_ARRAYS:
        raise WireError("bad header fields")
    offset = _PREFIX.size + hlen
    total_raw, total_c = 0, 0
    for s in specs:
        _check_spec(s)
        total_raw += _nbytes(s)
        total_c += s["csize"]
    if total_raw > MAX_RAW_BYTES:
        raise WireError("arrays too large")
    if offset + total_c != len(data):
        raise WireError("body length does not match header")
    return meta, specs, offset


def decode(data: bytes, names: Optional[set[str]] = None) -> tuple[dict, dict[str, np.ndarray]]:
    """Decode: (meta, {name: array}), all arrays or only those in `names` (the others
    stay compressed). Raises WireError on any defect."""
    meta, specs, offset = decode_header(data)
    arrays: dict[str, np.ndarray] = {}
    view = memoryview(data)
    for s in specs:
        body = view[offset:offset + s["csize"]]
        offset += s["csize"]
        if names is not None and s["name"] not in names:
            continue
        size = _nbytes(s)
        try:
            raw = lz4.block.decompress(body, uncompressed_size=size) if size else b""
        except lz4.block.LZ4BlockError as e:
            raise WireError(f"corrupt body of {s['name']!r}: {e}") from None
        if len(raw) != size:
            raise WireError(f"body of {s['name']!r} has wrong size")
        if s["name"] in arrays:
            raise WireError(f"duplicate array {s['name']!r}")
        arrays[s["name"]] = np.frombuffer(raw, dtype=s["dtype"]).reshape(s["shape"])
    return meta, arrays


def is_count(v: Any, upper: int = 2**53 - 1) -> bool:
    """A JSON integer in 0..upper (bools are ints in Python and are refused): the one
    check for every count, size, version and sequence number read off the network."""
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= upper


def _check_spec(s: Any) -> None:
    if not isinstance(s, dict):
        raise WireError("array spec is not an object")
    name, dtype, shape, csize = s.get("name"), s.get("dtype"), s.get("shape"), s.get("csize")
    if not isinstance(name, str) or not 0 < len(name) <= 64 or not set(name) <= _NAME_CHARS:
        raise WireError("bad array name")
    if dtype not in DTYPES:
        raise WireError(f"dtype {dtype!r} not allowed")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(is_count(d, MAX_RAW_BYTES) for d in shape):
        raise WireError("bad shape")
    if not is_count(csize, MAX_RAW_BYTES):
        raise WireError("bad compressed size")
    if _nbytes(s) > MAX_RAW_BYTES:
        raise WireError("array too large")


def _nbytes(s: dict) -> int:
    n = np.dtype(s["dtype"]).itemsize
    for d in s["shape"]:
        n *= d
    return n


_BLOB_COUNT = struct.Struct("<I")


def pack_blobs(blobs: list[bytes]) -> bytes:
    """Several messages in one (replay replies): u32 count, then u32 length + bytes each."""
    parts = [_BLOB_COUNT.pack(len(blobs))]
    for b in blobs:
        parts += [_BLOB_COUNT.pack(len(b)), b]
    return b"".join(parts)


def unpack_blobs(data: bytes, max_count: int = 4096) -> list[bytes]:
    if len(data) < 4:
        raise WireError("truncated blob list")
    (count,) = _BLOB_COUNT.unpack_from(data)
    if count > max_count:
        raise WireError("too many blobs")
    out, offset = [], 4
    for _ in range(count):
        if offset + 4 > len(data):
            raise WireError("truncated blob list")
        (n,) = _BLOB_COUNT.unpack_from(data, offset)
        offset += 4
        if offset + n > len(data):
            raise WireError("truncated blob")
        out.append(data[offset:offset + n])
        offset += n
    if offset != len(data):
        raise WireError("trailing bytes after blobs")
    return out
