"""S3-specific behaviour (the conformance suite also runs on S3 through fixtures_s3.py)."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from collections import Counter

import pytest
import trio

from fixtures_s3 import TEST_ACCESS_KEY, TEST_REGION, TEST_SECRET_KEY
from gffs.chunks.store import ChunkStore
from gffs.index import ChunkMap, Index
from gffs.placement import Placement
from gffs_backends.base import (BackendError, BackendFull, BackendUnavailable, ObjectMissing,
                                load_backend_class)
from gffs_backends.local import LocalBackend

boto3 = pytest.importorskip("boto3")
from botocore.exceptions import (ClientError, ConnectTimeoutError,  # noqa: E402
                                 EndpointConnectionError, ReadTimeoutError)

from gffs_backends.s3 import S3Backend  # noqa: E402
from gffs_backends.s3_buckets import score as _score  # noqa: E402


def key_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make(endpoint: str, buckets, **opts) -> S3Backend:
    return S3Backend.from_config("s3", {"buckets": buckets, "endpoint_url": endpoint,
                                        "region": TEST_REGION, "timeout": 10, **opts})


def bucket_keys(admin, bucket: str) -> set[str]:
    resp = admin.list_objects_v2(Bucket=bucket)
    return {o["Key"] for o in resp.get("Contents", [])}


async def put_all(backend, blobs) -> dict[str, str]:
    locs: dict[str, str] = {}
    limiter = trio.CapacityLimiter(16)

    async def one(b: bytes) -> None:
        async with limiter:
            locs[key_of(b)] = await backend.put(key_of(b), b)
    async with trio.open_nursery() as nursery:
        for b in blobs:
            nursery.start_soon(one, b)
    return locs


def test_entry_point_finds_s3_backend():
    assert load_backend_class("s3") is S3Backend


def test_a_get_is_one_worker_thread_hop_and_checks_the_length(moto_server, s3_buckets,
                                                              monkeypatch):
    """Read-ahead starts 8 GETs at once; each one a single trio round trip (GetObject
    and its body together), and a body shorter than its Content-Length is no copy."""
    (a,) = s3_buckets(1)
    backend = make(moto_server, [a])
    data = os.urandom(300_000)
    loc = trio.run(backend.put, key_of(data), data)
    hops = []
    real = trio.to_thread.run_sync

    async def counting(fn, *args, **kw):
        hops.append(fn)
        return await real(fn, *args, **kw)
    monkeypatch.setattr(trio.to_thread, "run_sync", counting)
    assert trio.run(backend.get, key_of(data), loc) == data
    assert len(hops) == 1
    monkeypatch.setattr(backend, "_client", _ShortBodies(backend._client))
    with pytest.raises(BackendUnavailable, match="short read"):
        trio.run(backend.get, key_of(data), loc)
    trio.run(backend.close)


def test_get_then_opens_in_the_gets_worker_thread(moto_server, s3_buckets, monkeypatch):
    """An encrypted read (GET, then open the seal) is one trio round trip, not two, and
    what the opening step raises (a bad tag) comes out as itself, not as a failed request."""
    import threading
    (a,) = s3_buckets(1)
    backend = make(moto_server, [a])
    data = os.urandom(300_000)
    loc = trio.run(backend.put, key_of(data), data)
    hops, opened_in = [], []
    real = trio.to_thread.run_sync

    async def counting(fn, *args, **kw):
        hops.append(fn)
        return await real(fn, *args, **kw)
    monkeypatch.setattr(trio.to_thread, "run_sync", counting)

    def opener(raw: bytes) -> bytes:
        opened_in.append(threading.get_ident())
        return raw[::-1]
    trio_thread = threading.get_ident()
    assert trio.run(backend.get_then, key_of(data), loc, opener) == data[::-1]
    assert len(hops) == 1 and opened_in and opened_in[0] != trio_thread

    class BadTag(Exception):
        pass

    def failing(raw: bytes) -> bytes:
        raise BadTag("tag mismatch")
    with pytest.raises(BadTag):
        trio.run(backend.get_then, key_of(data), loc, failing)
    trio.run(backend.close)


def test_no_crc32_of_bodies_on_top_of_gffs_own_checks(moto_server, s3_buckets):
    """botocore >= 1.36 adds a CRC32 to every PutObject and checks one on every GET by
    default; gffs verifies every chunk itself, so the backend turns both off."""
    from botocore.config import Config
    (a,) = s3_buckets(1)
    backend = make(moto_server, [a])
    sent: list[dict] = []
    backend._client.meta.events.register(
        "before-send.s3.PutObject", lambda request, **kw: sent.append(dict(request.headers)))
    data = os.urandom(100_000)
    trio.run(backend.put, key_of(data), data)
    if "request_checksum_calculation" in Config.OPTION_DEFAULTS:
        assert sent and not any(k.lower().startswith("x-amz-checksum") for k in sent[0])
        assert backend._client.meta.config.response_checksum_validation == "when_required"
    trio.run(backend.close)


class _ShortBodies:
    """A client whose GetObject bodies lose their last byte (a cut connection)."""

    def __init__(self, client) -> None:
        self._client = client

    def get_object(self, **kw):
        resp = self._client.get_object(**kw)
        body = resp["Body"].read()
        resp["Body"] = type("Body", (), {"read": lambda self: body[:-1]})()
        return resp

    def __getattr__(self, name):
        return getattr(self._client, name)


# placement over buckets -------------------------------------------------------------------

def test_objects_spread_by_weight(moto_server, s3_buckets, s3_admin):
    a, b, c = s3_buckets(3)
    backend = make(moto_server, {a: 2, b: 1, c: 1})
    blobs = [b"object %d" % i for i in range(300)]
    locs = trio.run(put_all, backend, blobs)
    counts = Counter(locs.values())
    assert set(counts) == {a, b, c}
    assert 120 <= counts[a] <= 180 and 50 <= counts[b] <= 100 and 50 <= counts[c] <= 100, counts
    # the locator is the bucket that really holds the object, under <prefix><key>
    for bucket in (a, b, c):
        assert bucket_keys(s3_admin, bucket) == {"chunks/" + k for k, loc in locs.items()
                                                 if loc == bucket}
    # deterministic: another backend with the same weights picks the same buckets
    again = make(moto_server, {c: 1, a: 2, b: 1})
    assert all(again.choose_bucket(k) == loc for k, loc in locs.items())
    trio.run(backend.close)
    trio.run(again.close)


def test_rendezvous_moves_only_what_must_move(s3_env):
    keys = [key_of(b"%d" % i) for i in range(3000)]
    old = S3Backend("s3", {"b-one": 1, "b-two": 1, "b-three": 1})
    new = S3Backend("s3", {"b-one": 1, "b-two": 1, "b-three": 1, "b-four": 1})
    moved = [k for k in keys if old.choose_bucket(k) != new.choose_bucket(k)]
    assert all(new.choose_bucket(k) == "b-four" for k in moved)
    assert 600 <= len(moved) <= 900           # about a quarter
    drained = S3Backend("s3", {"b-one": 0, "b-two": 1, "b-three": 1})
    assert all(drained.choose_bucket(k) != "b-one" for k in keys)
    assert _score("x", 0, keys[0]) == 0.0


def test_weight_change_keeps_old_objects_reachable(moto_server, s3_buckets, s3_admin):
    a, b, c = s3_buckets(3)
    before = make(moto_server, {a: 1, b: 1, c: 1})
    blobs = [b"old object %d" % i for i in range(30)]
    locs = trio.run(put_all, before, blobs)
    assert set(locs.values()) == {a, b, c}
    after = make(moto_server, {a: 0, b: 1, c: 5})   # a drained, c preferred

    async def main():
        for blob in blobs:
            k = key_of(blob)
            assert await after.get(k, locs[k]) == blob          # old locator
            assert await after.get(k, "") == blob               # no locator: search
            wrong = next(x for x in (a, b, c) if x != locs[k])
            assert await after.get(k, wrong) == blob            # stale locator: search
            info = await after.stat(k, "")
            assert info is not None and info.size == len(blob)
        new_locs = await put_all(after, [b"new object %d" % i for i in range(30)])
        assert a not in new_locs.values()
        assert sorted([i.key async for i in after.list()]) == sorted(
            [key_of(x) for x in blobs] + list(new_locs))
        # deleting with an empty locator finds the object wherever it is
        k0 = key_of(blobs[0])
        await after.delete(k0, "")
        assert await after.stat(k0) is None
        with pytest.raises(ObjectMissing):
            await after.get(k0, locs[k0])
    trio.run(main)


def test_delete_removes_copies_in_every_bucket(moto_server, s3_buckets, s3_admin):
    a, b, c = s3_buckets(3)
    only_a = make(moto_server, {a: 1, b: 0, c: 0})
    only_b = make(moto_server, {a: 0, b: 1, c: 0})
    data = b"put twice under different weights"
    k = key_of(data)

    async def main():
        assert await only_a.put(k, data) == a
        assert await only_b.put(k, data) == b
        await only_a.delete(k, a)        # the locator names a; the stray copy in b goes too
        assert await only_a.stat(k) is None
    trio.run(main)
    assert not bucket_keys(s3_admin, a) and not bucket_keys(s3_admin, b)


def test_delete_many_batches_per_bucket(moto_server, s3_buckets, monkeypatch):
    buckets = s3_buckets(3)
    backend = make(moto_server, buckets)
    calls = []
    real = backend._delete_batch

    def spy(bucket, okeys):
        calls.append((bucket, len(okeys)))
        return real(bucket, okeys)
    monkeypatch.setattr(backend, "_delete_batch", spy)
    keep = b"kept"
    gone = [b"gone %d" % i for i in range(5)]

    async def main():
        for x in gone + [keep]:
            await backend.put(key_of(x), x)
        absent = [(key_of(b"absent %d" % i), "") for i in range(2500)]
        await backend.delete_many([(key_of(x), "") for x in gone] + absent)
        assert [i.key async for i in backend.list()] == [key_of(keep)]
    trio.run(main)
    assert sorted(n for _, n in calls) == sorted([1000, 1000, 505] * 3)
    assert {bk for bk, _ in calls} == set(buckets)


def test_prefix_layout_and_foreign_objects(moto_server, s3_buckets, s3_admin):
    (a,) = s3_buckets(1)
    backend = make(moto_server, [a], prefix="gffs/")
    data = b"prefixed"
    s3_admin.put_object(Bucket=a, Key="gffs/README", Body=b"not a chunk")
    s3_admin.put_object(Bucket=a, Key="other/" + key_of(data), Body=b"not ours")

    async def main():
        assert await backend.put(key_of(data), data) == a
        assert [i.key async for i in backend.list()] == [key_of(data)]
    trio.run(main)
    assert "gffs/" + key_of(data) in bucket_keys(s3_admin, a)


# multipart ----------------------------------------------------------------------------

def test_multipart_upload_round_trips(moto_server, s3_buckets, s3_admin):
    (a,) = s3_buckets(1)
    backend = make(moto_server, [a], multipart_threshold=1 << 20)
    big = os.urandom((6 << 20) + 123)      # above the threshold: parts of 5 MiB + rest
    small = os.urandom(1000)

    async def main():
        loc = await backend.put(key_of(big), big)
        await backend.put(key_of(small), small)
        assert await backend.get(key_of(big), loc) == big
        assert (await backend.stat(key_of(big), loc)).size == len(big)
    trio.run(main)
    assert s3_admin.head_object(Bucket=a, Key="chunks/" + key_of(big))["ETag"].endswith('-2"')
    assert "-" not in s3_admin.head_object(Bucket=a, Key="chunks/" + key_of(small))["ETag"]


# configuration -------------------------------------------------------------------------

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
OK = {"buckets": ["gf-a", "gf-b"]}


@pytest.mark.parametrize("options, option", [
    ({}, "buckets"),
    ({"buckets": []}, "buckets"),
    ({"buckets": "gf-a"}, "buckets"),
    ({"buckets": ["gf-a", "gf-a"]}, "buckets"),
    ({"buckets": ["Upper_Case"]}, "buckets"),
    ({"buckets": ["ab"]}, "buckets"),
    ({"buckets": [1, 2]}, "buckets"),
    ({"buckets": {"gf-a": -1}}, "buckets"),
    ({"buckets": {"gf-a": "2"}}, "buckets"),
    ({"buckets": {"gf-a": 0, "gf-b": 0}}, "buckets"),
    ({**OK, "aws_secret_access_key": SECRET}, "aws_secret_access_key"),
    ({**OK, "credentials": {"secret": SECRET}}, "credentials"),
    ({**OK, "bucket": "gf-a"}, "bucket"),
    ({**OK, "endpoint_url": f"http://AKIAEXAMPLE:{SECRET}@127.0.0.1:9000"}, "endpoint_url"),
    ({**OK, "endpoint_url": "ftp://127.0.0.1"}, "endpoint_url"),
    ({**OK, "endpoint_url": 9000}, "endpoint_url"),
    ({**OK, "endpoint_url": "http://127.0.0.1:notaport"}, "endpoint_url"),
    ({**OK, "region": "EU West"}, "region"),
    ({**OK, "region": 1}, "region"),
    ({**OK, "prefix": 3}, "prefix"),
    ({**OK, "prefix": "/abs/"}, "prefix"),
    ({**OK, "timeout": 0}, "timeout"),
    ({**OK, "timeout": "30"}, "timeout"),
    ({**OK, "timeout": True}, "timeout"),
    ({**OK, "create_buckets": "yes"}, "create_buckets"),
    ({**OK, "profile": ""}, "profile"),
    ({**OK, "profile": "no-such-profile"}, "profile"),
    ({**OK, "multipart_threshold": 100}, "multipart_threshold"),
    ({**OK, "addressing_style": "sideways"}, "addressing_style"),
])
def test_from_config_errors_are_one_line_without_secrets(s3_env, options, option):
    with pytest.raises(ValueError) as ei:
        S3Backend.from_config("s3-eu", options)
    msg = str(ei.value)
    assert "\n" not in msg
    assert "'s3-eu'" in msg and option in msg
    assert SECRET not in msg and TEST_SECRET_KEY not in msg
    assert SECRET not in repr(ei.value.__cause__) and SECRET not in repr(ei.value.__context__)


def test_from_config_accepts_both_bucket_forms(s3_env):
    b = S3Backend.from_config("s3", {"buckets": ["gf-eu-1", "gf-eu-2", "gf-eu-3"]})
    assert b.weights == {"gf-eu-1": 1, "gf-eu-2": 1, "gf-eu-3": 1}
    assert b.prefix == "chunks/" and b.timeout == 30
    w = S3Backend.from_config("s3", {"buckets": {"gf-eu-1": 2, "gf-eu-2": 1}, "prefix": "gffs/",
                                     "endpoint_url": "http://127.0.0.1:9000",
                                     "region": "eu-west-1", "timeout": 5,
                                     "create_buckets": False})
    assert w.weights == {"gf-eu-1": 2.0, "gf-eu-2": 1.0} and w.region == "eu-west-1"
    for backend in (b, w):
        text = repr(backend) + str(vars(backend))
        assert TEST_SECRET_KEY not in text and TEST_ACCESS_KEY not in text


def test_debug_logging_never_shows_credentials(moto_server, s3_buckets, monkeypatch, caplog):
    token = "FwoGZXIvYXdzSESSIONTOKENsecret0123456789"
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    buckets = s3_buckets(3)
    caplog.set_level(logging.DEBUG)                 # what `gffs mount --debug` does
    backend = make(moto_server, buckets)

    async def main():
        loc = await backend.put(key_of(b"logged"), b"logged")
        assert await backend.get(key_of(b"logged"), loc) == b"logged"
        with pytest.raises(ObjectMissing):
            await backend.get(key_of(b"absent"))
    trio.run(main)
    text = caplog.text + repr(backend)
    for secret in (token, TEST_SECRET_KEY, TEST_ACCESS_KEY):
        assert secret not in text


def test_create_buckets(moto_server, s3_env, s3_admin):
    names = [f"gf-create-{os.urandom(4).hex()}-{i}" for i in range(2)]
    backend = make(moto_server, names, create_buckets=True)
    for n in names:
        s3_admin.head_bucket(Bucket=n)
    make(moto_server, names, create_buckets=True)        # existing buckets: fine
    assert trio.run(backend.put, key_of(b"x"), b"x") in names


def test_missing_bucket_is_a_permanent_error(moto_server, s3_env):
    backend = make(moto_server, [f"gf-absent-{os.urandom(4).hex()}"])

    async def main():
        with pytest.raises(BackendError) as ei:
            await backend.put(key_of(b"x"), b"x")
        assert not ei.value.temporary and not isinstance(ei.value, ObjectMissing)
        assert "NoSuchBucket" in str(ei.value) and TEST_SECRET_KEY not in str(ei.value)
    trio.run(main)


# errors -------------------------------------------------------------------------------

def _client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"msg {SECRET}"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


@pytest.mark.parametrize("exc, expected", [
    (_client_error("NoSuchKey", 404), ObjectMissing),
    (_client_error("404", 404), ObjectMissing),
    (_client_error("SlowDown", 503), BackendUnavailable),
    (_client_error("TooManyRequests", 429), BackendUnavailable),
    (_client_error("InternalError", 500), BackendUnavailable),
    (_client_error("Whatever", 502), BackendUnavailable),
    (_client_error("EntityTooLarge", 400), BackendFull),
    (_client_error("QuotaExceeded", 403), BackendFull),
    (_client_error("AccessDenied", 403), BackendError),
    (_client_error("NoSuchBucket", 404), BackendError),
    (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), BackendUnavailable),
    (ConnectTimeoutError(endpoint_url="http://127.0.0.1:1"), BackendUnavailable),
    (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), BackendUnavailable),
])
def test_error_mapping(s3_env, exc, expected):
    err = S3Backend("s3", ["gf-a"])._error(exc, "put gf-a/chunks/x")
    assert type(err) is expected or (expected is BackendUnavailable
                                     and isinstance(err, BackendUnavailable))
    assert SECRET not in str(err) and "\n" not in str(err)


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


OPS = ["put", "get", "stat", "delete", "list"]


async def _run_op(backend, op):
    k = key_of(b"down")
    if op == "put":
        await backend.put(k, b"down")
    elif op == "get":
        await backend.get(k, "")
    elif op == "stat":
        await backend.stat(k, "")
    elif op == "delete":
        await backend.delete(k, "")
    else:
        [i async for i in backend.list()]


def test_down_endpoint_fails_fast(s3_env):
    backend = S3Backend.from_config("s3", {"buckets": ["gf-1", "gf-2", "gf-3"], "timeout": 3,
                                           "endpoint_url": f"http://127.0.0.1:{_closed_port()}"})

    elapsed = {}

    async def one(op):
        t0 = time.monotonic()
        with pytest.raises(BackendUnavailable) as ei:
            await _run_op(backend, op)
        elapsed[op] = time.monotonic() - t0
        text = str(ei.value) + repr(ei.value.__cause__)
        assert TEST_SECRET_KEY not in text and TEST_ACCESS_KEY not in text

    async def main():
        async with trio.open_nursery() as nursery:   # concurrently: keeps the test short
            for op in OPS:
                nursery.start_soon(one, op)
    trio.run(main)
    assert set(elapsed) == set(OPS) and max(elapsed.values()) < 10, elapsed


def test_unresponsive_endpoint_times_out(s3_env):
    """An endpoint that accepts connections but never answers: the deadline ends it."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        port = silent.getsockname()[1]
        backend = S3Backend.from_config("s3", {"buckets": ["gf-1", "gf-2"], "timeout": 1,
                                               "endpoint_url": f"http://127.0.0.1:{port}"})

        elapsed = {}

        async def one(op):
            t0 = time.monotonic()
            with pytest.raises(BackendUnavailable):
                await _run_op(backend, op)
            elapsed[op] = time.monotonic() - t0

        async def main():
            async with trio.open_nursery() as nursery:
                for op in ["put", "get", "stat"]:
                    nursery.start_soon(one, op)
            t0 = time.monotonic()
            with trio.move_on_after(0.2) as scope:   # cancellation never waits for boto3
                await backend.get(key_of(b"x"))
            assert scope.cancelled_caught and time.monotonic() - t0 < 4   # the deadline is 1 s per try
        trio.run(main)
        assert len(elapsed) == 3 and max(elapsed.values()) < 30, elapsed


# end to end: the chunk store's hash check catches a damaged S3 copy -----------------------

DATA = b"".join(b"row %d of some image metadata\n" % i for i in range(20000))


@pytest.mark.parametrize("damage", ["garbage", "flipped", "truncated", "deleted"])
def test_corrupt_s3_copy_is_caught_by_hash(moto_server, s3_buckets, s3_admin, tmp_path, damage):
    s3 = make(moto_server, s3_buckets(3))
    local = LocalBackend("local", tmp_path / "local")
    index = Index(tmp_path / "index")
    store = ChunkStore(index, {"s3": s3, "local": local}, Placement([s3, local], copies=2))
    cm = ChunkMap(index)

    async def main():
        sc = await store.store(DATA, True)
        with index.write() as txn:
            cm.set_block(txn, 1, 0, sc.digest, sc.record)
        store.unpin([sc.digest])
        store.cache.discard(sc.digest)
        locs = {loc.backend: loc.locator for loc in sc.record.locations}
        assert set(locs) == {"s3", "local"} and locs["s3"] in s3.buckets
        okey = "chunks/" + sc.digest.hex()
        good = s3_admin.get_object(Bucket=locs["s3"], Key=okey)["Body"].read()
        if damage == "deleted":
            s3_admin.delete_object(Bucket=locs["s3"], Key=okey)
        else:
            bad = {"garbage": b"\x01garbage, not the chunk",
                   "flipped": good[:100] + bytes([good[100] ^ 0xFF]) + good[101:],
                   "truncated": good[: len(good) // 2]}[damage]
            s3_admin.put_object(Bucket=locs["s3"], Key=okey, Body=bad)
            assert await s3.get(sc.digest.hex(), locs["s3"]) == bad
        with trio.fail_after(10):
            assert await store.load(sc.digest) == DATA
    try:
        trio.run(main)
    finally:
        index.close()
