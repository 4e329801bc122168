"""The Drive backend against real Drive's habits, as tests/drive_server.py models them:
the newer error body without ``errors[]``, listings that lag behind creates and come
unsorted, and the create rate limit (403 userRateLimitExceeded / 429)."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import trio

from fixtures_gdrive import make_backend
from gffs_backends.base import ObjectMissing
from gffs_backends.gdrive import error_reason

NEVER = 10 ** 9     # list calls before a new file shows up: not within a test


def key_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_error_reason_reads_both_body_forms():
    classic = {"error": {"code": 403, "message": "User Rate Limit Exceeded",
                         "errors": [{"domain": "usageLimits", "reason": "userRateLimitExceeded"}]}}
    newer = {"error": {"code": 403, "message": "Quota exceeded", "status": "PERMISSION_DENIED",
                       "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                    "reason": "USER_RATE_LIMIT_EXCEEDED"}]}}
    bare = {"error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}}
    full = {"error": {"code": 403, "status": "PERMISSION_DENIED", "message": "full",
                      "details": [{"reason": "STORAGE_QUOTA_EXCEEDED"}]}}
    assert [error_reason(json.dumps(b).encode()) for b in (classic, newer, bare, full)] == [
        "userRateLimitExceeded", "userRateLimitExceeded", "rateLimitExceeded",
        "storageQuotaExceeded"]
    assert error_reason(b"<html>not json") == ""


@pytest.mark.parametrize("kind", ["user_rate", "rate"])
def test_rate_limit_in_the_newer_error_body_is_retried(drive, tmp_path, kind):
    b = make_backend(drive, tmp_path)
    drive.error_form = "aip193"
    drive.inject(kind, count=2, ops={"create", "upload"})
    small, large = os.urandom(3000), os.urandom(6 << 20)

    async def main():
        for d in (small, large):
            loc = await b.put(key_of(d), d)
            assert await b.get(key_of(d), loc) == d
    trio.run(main)
    assert drive.fault_answers[kind] == 2 and b.stats["retries"] >= 2


def test_lagging_unsorted_listings_still_show_this_process_writes(drive, tmp_path):
    b = make_backend(drive, tmp_path, pack_size_mb=1)    # >= 512 KiB: a file of its own
    drive.list_lag, drive.unsorted = NEVER, True
    packed = [os.urandom(2000) for _ in range(5)]
    alone = [os.urandom(600_000) for _ in range(2)]

    async def main():
        async with trio.open_nursery() as n:
            for d in packed + alone:
                n.start_soon(b.put, key_of(d), d)
        assert {i.key: i.size async for i in b.list()} == {key_of(d): len(d)
                                                            for d in packed + alone}
        await b.put_meta("index/versions/v1", b"first")
        await b.put_meta("index/versions/v1", b"second")
        await b.put_meta("index/pieces/p1", b"piece")
        assert await b.get_meta("index/versions/v1") == b"second"
        assert await b.list_meta("index/") == ["index/pieces/p1", "index/versions/v1"]
        assert len([f for f in drive.children(b._folder_id)
                    if f["name"] == "index/versions/v1"]) == 1      # the older one is gone
        await b.delete_meta("index/pieces/p1")
        assert await b.list_meta("index/") == ["index/versions/v1"]
        with pytest.raises(ObjectMissing):
            await b.get_meta("index/pieces/p1")
        await b.delete_many([(key_of(d), "") for d in packed[:2] + alone[:1]])
        assert {i.key async for i in b.list()} == {key_of(d) for d in packed[2:] + alone[1:]}
    trio.run(main)
    assert drive.counts["unlisted"] > 0


@pytest.mark.parametrize("answer", ["user_rate", "429"])
def test_the_create_rate_limit_is_survived_paced_or_not(drive, tmp_path, answer):
    """Drive allows a few creates per second: a backend without pacing is told to slow
    down (403 userRateLimitExceeded or 429, newer body) and still stores everything; the
    backend's own pacing stays under the limit and needs (almost) no retries."""
    drive.error_form = "aip193"
    datas = [os.urandom(600_000) for _ in range(8)]

    async def put_all(backend):
        async with trio.open_nursery() as n:
            for d in datas:
                n.start_soon(backend.put, key_of(d), d)
        for d in datas:
            assert await backend.get(key_of(d)) == d

    unpaced = make_backend(drive, tmp_path, pack_size_mb=1, retry_time=60)
    drive.pace(4.0, burst=5, answer=answer)
    trio.run(put_all, unpaced)
    assert drive.fault_answers["paced"] > 0 and unpaced.stats["retries"] > 0
    assert unpaced.stats["creates"] == len(datas)
    paced = make_backend(drive, tmp_path, pack_size_mb=1, max_creates_per_s=3, retry_time=60)
    trio.run(paced._folder)
    drive.pace(4.0, burst=5, answer=answer)
    trio.run(put_all, paced)
    assert paced.stats["creates"] == len(datas)
    assert paced.stats["retries"] < unpaced.stats["retries"]
