"""The two JetStream reads nats-py has no public call for, done with public calls.

Both rest on how JetStream lays out its key-value and object stores in streams
(NATS ADR-8 and ADR-20), not on nats-py's private attributes:

- `kv_keys`: every key of a KV bucket, from one stream-info request filtered on
  the bucket's subjects. nats-py's `KeyValue.keys()` runs a watcher, and once
  returned without a run that had just finished (a CI run's /metrics scrape
  lost it); an operator's list must not drop runs.
- `read_object`: an object-store object by direct gets only: its meta message,
  then its chunks one by one. No consumer is created, so a client whose
  credential may not manage JetStream (an actor) can read it, and nothing
  waits forever for chunks that a newer version has purged (nats-py's
  `ObjectStore.get` does).

tests/test_jsapi.py checks both against nats-py's own writers on a real
nats-server: if either layout changes under a release, it fails.
"""
from __future__ import annotations

import base64
import hashlib
import json

from nats.js.api import ObjectInfo


class ObjectGone(LookupError):
    """No such object, or it was replaced while being read."""


def kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"


def kv_prefix(bucket: str) -> str:
    return f"$KV.{bucket}."


def object_stream(bucket: str) -> str:
    return f"OBJ_{bucket}"


def object_meta_subject(bucket: str, name: str) -> str:
    return f"$O.{bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"


def object_chunk_subject(bucket: str, nuid: str) -> str:
    return f"$O.{bucket}.C.{nuid}"


async def kv_keys(js, bucket: str) -> list[str]:
    """Every key of the bucket, sorted (including keys whose newest entry is a delete)."""
    prefix = kv_prefix(bucket)
    info = await js.stream_info(kv_stream(bucket), subjects_filter=f"{prefix}>")
    return sorted(subject[len(prefix):] for subject in (info.state.subjects or {}))


async def object_info(js, bucket: str, name: str) -> ObjectInfo:
    """The object's meta (raises ObjectGone if there is none, or it was deleted)."""
    try:
        msg = await js.get_msg(object_stream(bucket), subject=object_meta_subject(bucket, name), direct=True)
    except Exception as e:  # nats.js.errors.NotFoundError and kin
        raise ObjectGone(f"no object {name!r} in {bucket!r}: {e}") from None
    info = ObjectInfo.from_response(json.loads(msg.data))
    if info.deleted or not info.nuid:
        raise ObjectGone(f"object {name!r} in {bucket!r} is deleted")
    return info


async def read_object(js, bucket: str, name: str, max_bytes: int) -> tuple[ObjectInfo, bytes]:
    """The object's meta and its bytes, checked against the size and SHA-256 digest in
    its meta. Raises ObjectGone (absent, or replaced while read) or ValueError (too
    large, or the bytes do not match the meta)."""
    info = await object_info(js, bucket, name)
    if info.size is None or info.size > max_bytes or info.chunks is None or info.chunks > max_bytes:
        raise ValueError(f"object {name!r} is larger than {max_bytes} bytes")
    subject, parts, seq = object_chunk_subject(bucket, info.nuid), [], 1
    for _ in range(info.chunks):
        try:
            msg = await js.get_msg(object_stream(bucket), seq=seq, subject=subject, next=True, direct=True)
        except Exception as e:
            raise ObjectGone(f"object {name!r} was replaced while being read ({e})") from None
        parts.append(msg.data or b"")
        seq = msg.seq + 1
    data = b"".join(parts)
    digest = base64.urlsafe_b64decode(info.digest.split("=", 1)[1] + "==") if info.digest else b""
    if len(data) != info.size or hashlib.sha256(data).digest() != digest:
        raise ValueError(f"object {name!r} does not match its size and digest")
    return info, data


class Bucket:
    """A KV bucket with a `keys` that does not miss any (see `kv_keys`); the rest is
    nats-py's KeyValue, passed through."""

    def __init__(self, js, kv, name: str):
        self.js, self.kv, self.name = js, kv, name

    async def keys(self) -> list[str]:
        return await kv_keys(self.js, self.name)

    async def get(self, key: str):
        return await self.kv.get(key)

    async def create(self, key: str, value: bytes) -> int:
        return await self.kv.create(key, value)

    async def update(self, key: str, value: bytes, last: int) -> int:
        return await self.kv.update(key, value, last=last)

    async def put(self, key: str, value: bytes) -> int:
        return await self.kv.put(key, value)

    async def delete(self, key: str) -> bool:
        return await self.kv.delete(key)
