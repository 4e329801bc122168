"""Google Drive backend specifics, against the loopback Drive server (tests/drive_server.py).

The generic behaviour (put/get/list/delete/invalid keys...) is covered by the
conformance suite, which runs on Drive through tests/fixtures_gdrive.py.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import socket
import time

import pytest
import trio

from fixtures_gdrive import make_backend, service_account_file, token_file, write_secret
from gffs.chunks.store import ChunkStore
from gffs.errors import FsError
from gffs.index import ChunkMap, Index
from gffs.placement import Placement
from gffs_backends.base import (BackendError, BackendFull, BackendUnavailable, ObjectMissing)
from gffs_backends.gdrive import DriveBackend
from gffs_backends.gdrive_pack import (MAX_MEMBERS, build_pack, decode_dead, encode_dead,
                                       pack_props, parse_index, parse_locator,
                                       parse_pack_props)


def key_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blobs(n: int, size: int) -> list[bytes]:
    return [os.urandom(size) for _ in range(n)]


async def put_all(backend, datas: list[bytes]) -> dict[str, str]:
    """Concurrent puts (as the filesystem's flushes issue them): key -> locator."""
    locs: dict[str, str] = {}

    async def one(d: bytes) -> None:
        locs[key_of(d)] = await backend.put(key_of(d), d)
    async with trio.open_nursery() as nursery:
        for d in datas:
            nursery.start_soon(one, d)
    return locs


def folder_files(drive, backend) -> list[dict]:
    return drive.children(backend._folder_id)


@pytest.fixture
def backend_factory(drive, tmp_path):
    made: list[DriveBackend] = []

    def make(**opts) -> DriveBackend:
        b = make_backend(drive, tmp_path, **opts)
        made.append(b)
        return b
    yield make
    for b in made:
        trio.run(b.close)


# packing -----------------------------------------------------------------------------------

def test_many_small_puts_become_few_drive_files(drive, backend_factory):
    b = backend_factory(pack_wait=0.5)
    datas = blobs(200, 30 * 1024)

    async def main():
        before = drive.counts["create"]
        t0 = trio.current_time()
        locs = await put_all(b, datas)
        elapsed = trio.current_time() - t0
        creates = drive.counts["create"] - before
        assert creates <= 5, creates
        assert elapsed < 5
        assert all(loc.startswith("pack:") for loc in locs.values())
        assert len(folder_files(drive, b)) == creates
        for d in datas[:: 17]:
            assert await b.get(key_of(d), locs[key_of(d)]) == d
    trio.run(main)


def test_pack_respects_pack_size(drive, backend_factory):
    b = backend_factory(pack_size_mb=1, pack_wait=0.3)
    datas = blobs(40, 100 * 1024)          # 4 MB, 100 KiB each: 10 per 1 MiB pack

    async def main():
        locs = await put_all(b, datas)
        packs = {parse_locator(loc).file_id for loc in locs.values()}
        assert 4 <= len(packs) <= 6
        for f in folder_files(drive, b):
            assert int(f["size"]) <= (1 << 20) + 4096      # data + index
    trio.run(main)


def test_ranged_get_fetches_exactly_the_chunk(drive, backend_factory):
    b = backend_factory(pack_wait=0.2)
    datas = [os.urandom(1000 + 37 * i) for i in range(30)]

    async def main():
        locs = await put_all(b, datas)
        assert len({parse_locator(loc).file_id for loc in locs.values()}) == 1
        await b.get(key_of(datas[0]), locs[key_of(datas[0])])     # pack metadata now cached
        for d in datas[5:10]:
            loc = parse_locator(locs[key_of(d)])
            served = drive.media_bytes
            assert await b.get(key_of(d), str(loc)) == d
            assert drive.media_bytes - served == len(d)
            assert drive.ranges[-1] == f"bytes={loc.offset}-{loc.offset + loc.length - 1}"
    trio.run(main)


def test_large_chunks_are_stored_alone_with_resumable_upload(drive, backend_factory):
    b = backend_factory(pack_size_mb=1)
    big = os.urandom(6 << 20)       # > 5 MiB: resumable session
    mid = os.urandom(600 * 1024)    # >= half a pack: alone, multipart

    async def main():
        uploads = drive.counts["req:upload"]
        loc_big = await b.put(key_of(big), big)
        assert drive.counts["req:upload"] > uploads
        loc_mid = await b.put(key_of(mid), mid)
        assert loc_big.startswith("file:") and loc_mid.startswith("file:")
        names = {f["name"] for f in folder_files(drive, b)}
        assert names == {key_of(big), key_of(mid)}
        assert await b.get(key_of(big), loc_big) == big
        assert await b.get(key_of(mid)) == mid
        info = await b.stat(key_of(big), loc_big)
        assert info.size == len(big) and info.mtime > 0
    trio.run(main)


@pytest.mark.parametrize("ending", [b"\r", b"\n", b"\r\n", b"\n\n"])
def test_payload_line_endings_survive_multipart(drive, backend_factory, ending):
    b = backend_factory(pack_size_mb=1)
    data = os.urandom(600 * 1024) + ending        # stored alone, multipart upload

    async def main():
        loc = await b.put(key_of(data), data)
        assert loc.startswith("file:")
        assert await b.get(key_of(data), loc) == data
    trio.run(main)


def test_packed_upload_over_5mib_uses_resumable(drive, backend_factory):
    b = backend_factory(pack_wait=0.3)
    datas = blobs(60, 100 * 1024)         # 6 MB pack

    async def main():
        uploads = drive.counts["req:upload"]
        locs = await put_all(b, datas)
        assert drive.counts["req:upload"] > uploads
        assert len({parse_locator(loc).file_id for loc in locs.values()}) == 1
    trio.run(main)


def test_concurrent_mixed_puts_and_gets_from_many_threads(drive, backend_factory):
    """httplib2 is not thread-safe: each worker thread must use its own connection."""
    b = backend_factory(pack_wait=0.05, pack_size_mb=2)
    sizes = [100, 5000, 40_000, 300_000, 1_200_000, 70_000, 2_000_000]
    datas = [os.urandom(sizes[i % len(sizes)] + i) for i in range(60)]

    async def main():
        locs = await put_all(b, datas)
        results = {}

        async def get(d):
            results[key_of(d)] = await b.get(key_of(d), locs[key_of(d)])
        async with trio.open_nursery() as nursery:
            for d in datas * 2:
                nursery.start_soon(get, d)
        assert all(results[key_of(d)] == d for d in datas)
    trio.run(main)
    assert len(b._https) > 1                # several threads, one Http each


def test_cancelled_put_is_left_out_of_the_pack(drive, backend_factory):
    b = backend_factory(pack_wait=0.3)
    keep, drop = blobs(3, 2000), os.urandom(2000)

    async def main():
        locs = {}

        async def one(d):
            locs[key_of(d)] = await b.put(key_of(d), d)
        async with trio.open_nursery() as nursery:
            for d in keep:
                nursery.start_soon(one, d)
            with trio.move_on_after(0.05):
                await b.put(key_of(drop), drop)
        assert set(locs) == {key_of(d) for d in keep}
        listed = sorted([i.key async for i in b.list()])
        assert listed == sorted(key_of(d) for d in keep)
    trio.run(main)


# retries, errors ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["rate", "user_rate", "429"])
def test_rate_limit_answers_are_retried_with_backoff(drive, backend_factory, kind):
    b = backend_factory()
    data = os.urandom(5000)

    async def main():
        await b.put(key_of(b"warm"), b"warm")      # folder resolved, ids fetched
        retries = b.stats["retries"]
        drive.inject(kind, 3, ops={"create", "upload"})
        loc = await b.put(key_of(data), data)
        assert drive.fault_answers[kind] == 3
        assert b.stats["retries"] - retries == 3
        for i, d in enumerate(b.delays[-3:]):            # exponential, with jitter
            assert b.backoff * 2 ** i / 2 <= d <= b.backoff * 2 ** i
        assert await b.get(key_of(data), loc) == data
    trio.run(main)


@pytest.mark.parametrize("kind", ["500", "503", "drop"])
def test_server_errors_and_dropped_connections_are_retried(drive, backend_factory, kind):
    b = backend_factory()
    data = os.urandom(2000)

    async def main():
        loc = await b.put(key_of(data), data)
        b._packs.clear()
        drive.inject(kind, 2, ops={"get", "media"})
        assert await b.get(key_of(data), loc) == data
        assert drive.fault_answers[kind] == 2
        assert b.stats["retries"] >= 1
    trio.run(main)


def test_file_creates_are_paced(drive, backend_factory):
    b = backend_factory(max_creates_per_s=20, pack_wait=0)
    datas = blobs(9, 100)

    async def main():
        await b.put(key_of(b"warm"), b"warm")
        t0 = time.monotonic()
        for d in datas:                     # 4 left in the burst, then 20 per second
            await b.put(key_of(d), d)
        assert time.monotonic() - t0 >= 0.2
    trio.run(main)


def test_persistent_500_is_unavailable_within_bounded_time(drive, backend_factory):
    b = backend_factory(retry_time=1.0)
    data = os.urandom(3000)

    async def main():
        loc = await b.put(key_of(data), data)
        b._packs.clear()
        drive.inject("500", 10_000, ops={"get", "media"})
        t0 = time.monotonic()
        with pytest.raises(BackendUnavailable) as ei:
            await b.get(key_of(data), loc)
        assert time.monotonic() - t0 < 30, "retried past its time budget"
        assert "gave up" in str(ei.value) and ei.value.temporary
        drive.clear_faults()
        assert await b.get(key_of(data), loc) == data
    trio.run(main)


def test_connection_refused_is_unavailable(tmp_path):
    import google.oauth2.credentials
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    b = DriveBackend("drive", folder="x", api_endpoint=f"http://127.0.0.1:{port}/",
                     credentials=google.oauth2.credentials.Credentials(token="test-token"),
                     timeout=2, retry_time=0.3, backoff=0.01)

    async def main():
        with pytest.raises(BackendUnavailable):
            await b.put(key_of(b"x"), b"x")
        with pytest.raises(BackendUnavailable):
            await b.get(key_of(b"x"), "file:abc")
    trio.run(main)


def test_hanging_request_times_out(drive, backend_factory):
    b = backend_factory(timeout=0.3, retry_time=0)
    data = os.urandom(100)

    async def main():
        loc = await b.put(key_of(data), data)
        b._packs.clear()
        drive.inject("hang", 1, ops={"get"}, seconds=30.0)
        t0 = time.monotonic()
        with pytest.raises(BackendUnavailable, match="timed out"):
            await b.get(key_of(data), loc)
        assert time.monotonic() - t0 < 20, "waited for the hanging answer"
    trio.run(main)


def test_lost_create_answer_is_retried_without_duplicate(drive, backend_factory):
    """The create lands but its answer is lost: the retry (same client-generated id) gets
    409, confirms the file, and no second pack appears."""
    b = backend_factory()
    data = os.urandom(4000)

    async def main():
        await b.put(key_of(b"warm"), b"warm")
        n = len(folder_files(drive, b))
        drive.inject("drop_after", 1, ops={"create"})
        loc = await b.put(key_of(data), data)
        assert drive.fault_answers["drop_after"] == 1
        assert len(folder_files(drive, b)) == n + 1
        assert await b.get(key_of(data), loc) == data
    trio.run(main)


def test_missing_drive_file_is_object_missing(drive, backend_factory):
    b = backend_factory(pack_size_mb=1)
    small, big = os.urandom(500), os.urandom(700 * 1024)

    async def main():
        loc_s = await b.put(key_of(small), small)
        loc_b = await b.put(key_of(big), big)
        drive.remove(parse_locator(loc_s).file_id)
        drive.remove(parse_locator(loc_b).file_id)
        for k, loc in ((key_of(small), loc_s), (key_of(big), loc_b)):
            with pytest.raises(ObjectMissing):
                await b.get(k, loc)
            assert await b.stat(k, loc) is None
            await b.delete(k, loc)                      # already gone: fine
    trio.run(main)


def test_storage_quota_exceeded_is_backend_full(drive, backend_factory):
    b = backend_factory()

    async def main():
        await b.put(key_of(b"warm"), b"warm")
        drive.inject("quota", 1, ops={"create"})
        with pytest.raises(BackendFull):
            await b.put(key_of(b"more"), b"more")
        assert b.stats["retries"] == 0
    trio.run(main)


def test_corrupted_bytes_are_caught_by_the_chunk_store(drive, backend_factory, tmp_path):
    from faults import FaultyBackend
    from gffs_backends.local import LocalBackend
    d = backend_factory()
    local = FaultyBackend(LocalBackend("local", tmp_path / "local"))
    index = Index(tmp_path / "index")
    store = ChunkStore(index, {"drive": d, "local": local}, Placement([d, local], copies=2))
    cm = ChunkMap(index)
    data = b"".join(b"row %d of image metadata\n" % i for i in range(3000))

    async def load(digest):
        store.cache.discard(digest)
        with trio.fail_after(10):
            return await store.load(digest)

    async def main():
        sc = await store.store(data, True)
        assert {loc.backend for loc in sc.record.locations} == {"drive", "local"}
        assert [loc.locator for loc in sc.record.locations if loc.backend == "drive"][0] \
            .startswith("pack:")
        with index.write() as txn:
            cm.set_block(txn, 1, 0, sc.digest, sc.record)
        store.unpin([sc.digest])
        local.down = True
        drive.corrupt_reads = 1             # Drive answers with one flipped byte: EIO, not wrong data
        with pytest.raises(FsError) as ei:
            await load(sc.digest)
        assert ei.value.errno == errno.EIO
        assert drive.corrupt_reads == 0
        assert await load(sc.digest) == data            # Drive alone, healthy again
        local.down = False
        drive.corrupt_reads = 1                         # the other copy covers for Drive
        assert await load(sc.digest) == data
    try:
        trio.run(main)
    finally:
        index.close()


# persistence, deletion --------------------------------------------------------------------------

def test_fresh_instance_lists_and_reads_everything(drive, backend_factory):
    a = backend_factory(pack_size_mb=1, pack_wait=0.1)
    small = blobs(60, 20_000)
    big = blobs(2, 800 * 1024)

    async def main():
        locs = await put_all(a, small + big)
        gone = small[:5]
        await a.delete_many([(key_of(d), locs[key_of(d)]) for d in gone])
        await a.close()
        b = backend_factory(folder=a.folder, pack_size_mb=1)   # a restart: nothing in memory
        live = {key_of(d): len(d) for d in small[5:] + big}
        infos = [i async for i in b.list()]
        assert {i.key: i.size for i in infos} == live
        assert all(i.mtime > 0 for i in infos)
        for d in small[5:8] + big:
            assert await b.get(key_of(d), locs[key_of(d)]) == d
            assert (await b.stat(key_of(d), locs[key_of(d)])).size == len(d)
        c = backend_factory(folder=a.folder)
        assert await c.get(key_of(small[9])) == small[9]            # no locator: scan
        assert await c.stat(key_of(gone[0]), locs[key_of(gone[0])]) is None
        with pytest.raises(ObjectMissing):
            await c.get(key_of(gone[1]), locs[key_of(gone[1])])     # tombstone persisted
    trio.run(main)


def test_pack_is_deleted_with_its_last_chunk(drive, backend_factory):
    a = backend_factory(pack_wait=0.2)
    datas = blobs(10, 3000)

    async def main():
        locs = await put_all(a, datas)
        (pid,) = {parse_locator(loc).file_id for loc in locs.values()}
        await a.delete_many([(key_of(d), locs[key_of(d)]) for d in datas[:6]])
        await a.delete(key_of(datas[6]), locs[key_of(datas[6])])
        meta = drive.get(pid).meta
        raw = drive.data_of(pid)
        n, ixo, ixl, _ = parse_pack_props(meta["appProperties"])
        members = [k for k, _o, _n in parse_index(raw[ixo:ixo + ixl], ixo)]
        dead = {members.index(key_of(d)) for d in datas[:7]}
        assert n == 10 and decode_dead(meta["appProperties"], 10) == dead
        b = backend_factory(folder=a.folder)
        assert sorted([i.key async for i in b.list()]) == sorted(key_of(d) for d in datas[7:])
        await b.delete_many([(key_of(d), locs[key_of(d)]) for d in datas[7:9]])
        assert drive.data_of(pid) is not None
        await b.delete(key_of(datas[9]))                    # the last one, without locator
        assert drive.data_of(pid) is None
        assert folder_files(drive, b) == []
        assert [i async for i in b.list()] == []
        await a.delete(key_of(datas[0]), locs[key_of(datas[0])])    # stale instance: fine
    trio.run(main)


def test_pack_helpers_fit_drive_limits():
    props = pack_props(MAX_MEMBERS, 8 << 20, 90_000)
    dead = set(range(0, MAX_MEMBERS, 3))
    props.update(encode_dead(dead, MAX_MEMBERS))
    assert len(props) <= 30
    assert all(len(k) + len(v) <= 124 for k, v in props.items())
    assert decode_dead(props, MAX_MEMBERS) == dead
    items = [(key_of(bytes([i])), bytes([i]) * i) for i in range(5)]
    body, entries, ixo, ixl = build_pack(items)
    assert parse_index(body[ixo:ixo + ixl], ixo) == entries
    for (k, d), (k2, off, n) in zip(items, entries):
        assert k == k2 and body[off:off + n] == d
    for bad in ["", "pack:x", "file:", "file:a b", "pack:id:1:x", "s3:abc"]:
        with pytest.raises(ValueError):
            parse_locator(bad)


# credentials, configuration --------------------------------------------------------------------

def test_service_account_credentials(drive, tmp_path):
    sa = service_account_file(drive, tmp_path / "sa.json")
    b = DriveBackend.from_config("drive", {"folder": "sa-folder", "credentials": str(sa),
                                           "api_endpoint": drive.url, "pack_wait": 0})
    data = os.urandom(1000)

    async def main():
        grants = drive.counts["token:jwt"]
        loc = await b.put(key_of(data), data)
        assert await b.get(key_of(data), loc) == data
        assert drive.counts["token:jwt"] == grants + 1       # one signed-JWT grant, verified
        await b.close()
    trio.run(main)


def test_installed_app_token_file(drive, tmp_path):
    tok = token_file(drive, tmp_path / "token.json")
    b = DriveBackend.from_config("drive", {"folder": "user-folder", "credentials": str(tok),
                                           "api_endpoint": drive.url, "pack_wait": 0})

    async def main():
        grants = drive.counts["token:refresh"]
        loc = await b.put(key_of(b"hello"), b"hello")
        assert await b.get(key_of(b"hello"), loc) == b"hello"
        assert drive.counts["token:refresh"] == grants + 1
        await b.close()
    trio.run(main)


def test_revoked_token_is_a_clean_permanent_error(drive, tmp_path, caplog):
    secret = "1//REVOKED-" + "r" * 30
    path = write_secret(tmp_path / "token.json", {
        "type": "authorized_user", "client_id": "cid", "client_secret": "GOCSPX-topsecret",
        "refresh_token": secret, "token_uri": drive.token_uri})
    b = DriveBackend.from_config("drive", {"folder": "f", "credentials": str(path),
                                           "api_endpoint": drive.url, "retry_time": 1})
    caplog.set_level(logging.DEBUG)

    async def main():
        with pytest.raises(BackendError) as ei:
            await b.put(key_of(b"x"), b"x")
        assert not ei.value.temporary
        msg = str(ei.value)
        assert "\n" not in msg and secret not in msg and "topsecret" not in msg
    trio.run(main)
    assert secret not in caplog.text and "topsecret" not in caplog.text


def test_logs_and_repr_hold_no_tokens(drive, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    tok = token_file(drive, tmp_path / "token.json")
    info = json.loads(tok.read_text())
    secrets = [info["client_secret"], info["refresh_token"]]
    b = DriveBackend.from_config("drive", {"folder": "logs", "credentials": str(tok),
                                           "api_endpoint": drive.url, "pack_wait": 0})
    b.backoff = 0.01

    async def main():
        drive.inject("429", 2)
        await b.put(key_of(b"y"), b"y")
        await b.close()
    trio.run(main)
    assert b.stats["retries"] == 2
    issued = [t for t in drive.tokens if t.startswith("ya29.")]
    text = caplog.text + repr(b) + str(b)
    assert issued
    assert not any(t in text for t in issued + secrets)


SECRET_KEY = "-----BEGIN PRIVATE KEY-----\nSUPERSECRETKEYMATERIAL\n-----END PRIVATE KEY-----\n"


@pytest.mark.parametrize("case", [
    "no-folder", "no-credentials", "missing-file", "mode-0644", "not-json", "client-secrets",
    "sa-missing-email", "sa-bad-key", "token-missing-refresh", "unknown-option",
    "bad-pack-size", "bad-endpoint", "bad-wait",
])
def test_from_config_errors_are_one_line_without_secrets(tmp_path, case):
    good = write_secret(tmp_path / "good.json", {"type": "authorized_user", "client_id": "c",
                                                 "client_secret": "SUPERSECRETCLIENT",
                                                 "refresh_token": "SUPERSECRETREFRESH"})
    opts = {"folder": "f", "credentials": str(good)}
    want = None
    if case == "no-folder":
        del opts["folder"]
        want = "'folder'"
    elif case == "no-credentials":
        del opts["credentials"]
        want = "'credentials'"
    elif case == "missing-file":
        opts["credentials"] = str(tmp_path / "nope.json")
        want = "does not exist"
    elif case == "mode-0644":
        os.chmod(good, 0o644)
        want = f"chmod 600 {good}"
    elif case == "not-json":
        p = tmp_path / "x.json"
        p.write_text("SUPERSECRET not json")
        os.chmod(p, 0o600)
        opts["credentials"] = str(p)
        want = "not valid JSON"
    elif case == "client-secrets":
        opts["credentials"] = str(write_secret(tmp_path / "cs.json", {"installed": {
            "client_id": "c", "client_secret": "SUPERSECRETCS"}}))
        want = "authorize"
    elif case == "sa-missing-email":
        opts["credentials"] = str(write_secret(tmp_path / "sa.json", {
            "type": "service_account", "private_key": SECRET_KEY, "token_uri": "https://x/"}))
        want = "client_email"
    elif case == "sa-bad-key":
        opts["credentials"] = str(write_secret(tmp_path / "sa.json", {
            "type": "service_account", "private_key": SECRET_KEY, "client_email": "a@b",
            "token_uri": "https://x/"}))
        want = "private_key"
    elif case == "token-missing-refresh":
        opts["credentials"] = str(write_secret(tmp_path / "t.json", {
            "type": "authorized_user", "client_id": "c", "client_secret": "SUPERSECRETCLIENT"}))
        want = "refresh_token"
    elif case == "unknown-option":
        opts["pack_size"] = 8
        want = "'pack_size'"
    elif case == "bad-pack-size":
        opts["pack_size_mb"] = 0
        want = "pack_size_mb"
    elif case == "bad-endpoint":
        opts["api_endpoint"] = "ftp://x"
        want = "api_endpoint"
    elif case == "bad-wait":
        opts["pack_wait"] = "soon"
        want = "pack_wait"
    with pytest.raises(ValueError) as ei:
        DriveBackend.from_config("drive", opts)
    msg = str(ei.value)
    assert want in msg
    assert "\n" not in msg and "SUPERSECRET" not in msg
    assert msg.startswith("backend 'drive':")


def test_from_config_accepts_0600_and_0400(drive, tmp_path):
    for mode in (0o600, 0o400):
        p = token_file(drive, tmp_path / f"t{mode:o}.json", mode=mode)
        b = DriveBackend.from_config("d", {"folder": "f", "credentials": str(p)})
        assert repr(b) == "<DriveBackend 'd' folder='f'>"


def test_folder_by_id_and_ambiguous_name(drive, backend_factory):
    a = backend_factory()

    async def main():
        loc = await a.put(key_of(b"by id"), b"by id")
        b = backend_factory(folder=a._folder_id)
        assert await b.get(key_of(b"by id"), loc) == b"by id"
        assert [i.key async for i in b.list()] == [key_of(b"by id")]
        assert b._folder_id == a._folder_id
        drive.create({"name": a.folder, "mimeType": "application/vnd.google-apps.folder"}, None)
        c = backend_factory(folder=a.folder)
        with pytest.raises(BackendError, match="folder"):
            [i async for i in c.list()]
    trio.run(main)


def test_capacity_reports_drive_quota(drive, backend_factory):
    b = backend_factory()

    async def main():
        cap = await b.capacity()
        assert cap.total == drive.quota_bytes and 0 <= cap.free <= cap.total
    trio.run(main)
