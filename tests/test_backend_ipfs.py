"""IPFS backend specifics, against a real in-process Kubo node (tests/fixtures_ipfs.py).

The conformance suite (test_backend_conformance.py) runs on this backend too.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import time

import pytest
import requests
import trio

from fixtures_ipfs import make_ipfs_backend
from gffs_backends.base import (BackendError, BackendUnavailable, ObjectMissing,
                                load_backend_class)
from gffs_backends.ipfs import IpfsBackend, IpfsCorrupt
from gffs_backends.kubo_rpc import api_url, multiaddr_to_url
from gffs_backends.unixfs import unixfs_cid


def key_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run(fn, *args):
    return trio.run(fn, *args)


def raw_cidv1(data: bytes) -> str:
    """CIDv1, raw codec, sha2-256, base32: written out here independently of the backend."""
    return "b" + base64.b32encode(b"\x01\x55\x12\x20" + hashlib.sha256(data).digest()) \
        .decode().lower().rstrip("=")


def rpc(server, cmd: str, **params):
    return requests.post(f"{server.url}/api/v0/{cmd}", params=params, timeout=10)


def pinned(server, cid: str) -> bool:
    resp = rpc(server, "pin/ls", arg=cid, type="recursive")
    if resp.status_code == 500 and "not pinned" in resp.json()["Message"]:
        return False
    resp.raise_for_status()
    return cid in resp.json()["Keys"]


@pytest.fixture(params=[0, 1], ids=["cidv0", "cidv1"])
def ipfs(request, kubo):
    b = make_ipfs_backend(kubo, cid_version=request.param)
    yield b
    run(b.close)


# CIDs ------------------------------------------------------------------------------------

def test_known_cid_vectors():
    # CIDs every Kubo gives these files with default settings (and raw-leaf CIDv1)
    assert unixfs_cid(b"", 0) == "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"
    assert unixfs_cid(b"hello world\n", 0) == "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
    assert unixfs_cid(b"", 1) == "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    for data in (b"", b"x", os.urandom(262144)):
        assert unixfs_cid(data, 1) == raw_cidv1(data)
    assert unixfs_cid(os.urandom(262145), 1).startswith("bafybei")   # dag-pb root


def test_dag_builder_matches_the_real_node(kubo):
    """The node is the oracle: CIDv0 of one leaf, one level, and a two-level tree."""
    for size in (0, 1, 262143, 262144, 262145, 174 * 262144, 174 * 262144 + 5):
        data = os.urandom(size)
        assert kubo.node.add(data) == unixfs_cid(data, 0), size


@pytest.mark.parametrize("size", [12, 262144, 262145, (1 << 20) + 1, 4 << 20])
def test_locator_is_the_nodes_cid(kubo, size):
    """CIDv0: the locator is the CID the real node computed; it equals our own DAG build."""
    b = make_ipfs_backend(kubo, cid_version=0)
    data = b"hello world\n" if size == 12 else os.urandom(size)
    key = key_of(data)

    async def main():
        loc = await b.put(key, data)
        assert loc == unixfs_cid(data, 0)
        assert loc in kubo.node.pins()             # pinned on the real node itself
        assert kubo.node.cat(loc) == data          # and the node returns the bytes
        if size == 12:
            assert loc == "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
        assert await b.get(key, loc) == data
    run(main)


def test_cidv1_locator_for_small_object_is_raw_sha256(kubo):
    b = make_ipfs_backend(kubo, cid_version=1)
    data = os.urandom(5000)

    async def main():
        loc = await b.put(key_of(data), data)
        assert loc == raw_cidv1(data)
        assert pinned(kubo, loc)
    run(main)


# pins and the MFS record -----------------------------------------------------------------

def test_put_pins_and_records_in_mfs(ipfs, kubo):
    data = os.urandom(3000)
    key = key_of(data)

    async def main():
        t0 = int(time.time())
        loc = await ipfs.put(key, data)
        assert pinned(kubo, loc)
        entries = rpc(kubo, "files/ls", arg=f"{ipfs.mfs_dir}/{key[:2]}", long="true").json()
        [entry] = entries["Entries"]
        name_key, put_time = entry["Name"].split(".")
        assert name_key == key and t0 <= int(put_time) <= time.time()
        assert entry["Hash"] == loc and entry["Size"] == len(data)
        info = await ipfs.stat(key)
        assert info.size == len(data) and t0 <= info.mtime <= time.time()
        assert [i.key async for i in ipfs.list()] == [key]
    run(main)


def test_delete_unpins(ipfs, kubo):
    data = os.urandom(2000)
    key = key_of(data)

    async def main():
        loc = await ipfs.put(key, data)
        assert pinned(kubo, loc)
        await ipfs.delete(key, loc)
        assert not pinned(kubo, loc)
        assert "not pinned" in rpc(kubo, "pin/ls", arg=loc).json()["Message"]
        assert kubo.node_cid(loc) not in kubo.node.pins()   # the real node unpinned it
        assert await ipfs.stat(key) is None
        with pytest.raises(ObjectMissing):
            await ipfs.get(key, loc)
    run(main)


def test_delete_by_key_alone_unpins(ipfs, kubo):
    """gc deletes with an empty locator: the CID comes from the MFS record."""
    data = os.urandom(100)
    key = key_of(data)

    async def main():
        loc = await ipfs.put(key, data)
        await ipfs.delete_many([(key, "")])
        assert not pinned(kubo, loc)
        assert [i async for i in ipfs.list()] == []
    run(main)


def test_get_without_locator_and_lost_pin_heals(ipfs, kubo):
    data = os.urandom(700)
    key = key_of(data)

    async def main():
        loc = await ipfs.put(key, data)
        assert await ipfs.get(key) == data                    # found by key through MFS
        assert rpc(kubo, "pin/rm", arg=loc).status_code == 200  # someone unpinned the CID
        assert await ipfs.get(key, loc) == data               # MFS still lists it: re-pinned
        assert pinned(kubo, loc)
    run(main)


def test_put_after_mfs_dir_removed_behind_our_back(ipfs, kubo):
    data = os.urandom(100)
    key = key_of(data)

    async def main():
        await ipfs.put(key, data)
        assert rpc(kubo, "files/rm", arg=ipfs.mfs_dir, recursive="true").status_code == 200
        assert [i async for i in ipfs.list()] == []
        loc = await ipfs.put(key, data)                 # the cached fan-out dir is gone: redone
        assert [i.key async for i in ipfs.list()] == [key]
        assert await ipfs.get(key, loc) == data
    run(main)


def test_two_mfs_dirs_are_separate(kubo):
    a, b = make_ipfs_backend(kubo), make_ipfs_backend(kubo)
    data = os.urandom(100)

    async def main():
        await a.put(key_of(data), data)
        assert [i.key async for i in a.list()] == [key_of(data)]
        assert [i async for i in b.list()] == []
        with pytest.raises(ObjectMissing):
            await b.get(key_of(data))
    run(main)


def test_capacity_from_repo_stat(ipfs):
    async def main():
        cap = await ipfs.capacity()
        assert cap.total == 10 * 10**9            # Datastore.StorageMax "10GB"
        assert 0 < cap.free < cap.total
    run(main)


# what comes back is verified -------------------------------------------------------------

@pytest.mark.parametrize("fault", ["corrupt_cat", "truncate_cat"])
@pytest.mark.parametrize("size", [1000, (1 << 20) + 1])
def test_garbage_answer_is_caught(ipfs, kubo, fault, size):
    data = os.urandom(size)
    key = key_of(data)

    async def main():
        loc = await ipfs.put(key, data)
        setattr(kubo, fault, True)
        with pytest.raises(IpfsCorrupt) as ei:
            await ipfs.get(key, loc)
        assert isinstance(ei.value, ObjectMissing)   # the chunk store drops and repairs the copy
        assert loc in str(ei.value)
        setattr(kubo, fault, False)
        assert await ipfs.get(key, loc) == data
    run(main)


def test_node_storing_other_bytes_fails_the_put(ipfs, kubo):
    data = os.urandom(1000)
    kubo.wrong_add_cid = True

    async def main():
        with pytest.raises(BackendError, match="expected"):
            await ipfs.put(key_of(data), data)
        assert [i async for i in ipfs.list()] == []
    run(main)


def test_invalid_locator_rejected(ipfs):
    key = key_of(b"x")

    async def main():
        for bad in ["../etc", "QmNotACid", "bafy?x", "zzzzzzzzzzzzzzzz"]:
            with pytest.raises(BackendError):
                await ipfs.get(key, bad)
    run(main)


# an API that is down or hangs ------------------------------------------------------------

def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_down_api_is_unavailable_fast():
    b = IpfsBackend("down", f"/ip4/127.0.0.1/tcp/{_closed_port()}", timeout=30)
    key = key_of(b"x")

    async def main():
        for call in (lambda: b.put(key, b"x"), lambda: b.get(key, unixfs_cid(b"x")),
                     lambda: b.stat(key), b.capacity, lambda: b.delete(key)):
            start = time.monotonic()
            with pytest.raises(BackendUnavailable) as ei:
                await call()
            assert time.monotonic() - start < 20     # refused at once, not the 30 s timeout
            assert ei.value.temporary
        with pytest.raises(BackendUnavailable):
            [i async for i in b.list()]
    run(main)


def test_hanging_api_times_out(kubo):
    b = make_ipfs_backend(kubo, timeout=1)
    kubo.hang = True

    async def main():
        start = time.monotonic()
        with pytest.raises(BackendUnavailable, match="within 1 s|timed out"):
            await b.get(key_of(b"x"), unixfs_cid(b"x"))
        assert time.monotonic() - start < 15     # the node hangs for good
    run(main)


def test_cancellation_does_not_wait_for_the_thread(kubo):
    b = make_ipfs_backend(kubo, timeout=30)
    kubo.hang = True

    async def main():
        start = time.monotonic()
        with trio.move_on_after(0.5):
            await b.get(key_of(b"x"), unixfs_cid(b"x"))
        assert time.monotonic() - start < 15     # not the 30 s timeout
    run(main)


# configuration ---------------------------------------------------------------------------

def test_entry_point_loads_the_class():
    assert load_backend_class("ipfs") is IpfsBackend


def test_from_config_defaults_and_trusted(kubo):
    b = IpfsBackend.from_config("ipfs1", {"api": kubo.url})
    assert b.base_url == kubo.url and b.timeout == 30 and b.cid_version == 1
    assert b.mfs_dir == "/gffs/ipfs1"
    assert IpfsBackend.trusted is True and b.trusted is True
    assert IpfsBackend.from_config("x", {"api": kubo.url, "trusted": False}).trusted is False


@pytest.mark.parametrize("options, words", [
    ({"api": "ftp://host:1", "username": "u", "password": "hunter2"}, ["'api'"]),
    ({"api": "http://u:hunter2@127.0.0.1:5001"}, ["credentials"]),
    ({"api": "/ip4/127.0.0.1/udp/5001", "auth_token": "hunter2"}, ["multiaddr"]),
    ({"api": "/ip4/1.2.3.4/tcp/99999"}, ["port"]),
    ({"timeout": 0}, ["'timeout'"]),
    ({"timeout": "30"}, ["'timeout'"]),
    ({"cid_version": 2}, ["'cid_version'"]),
    ({"trusted": "yes"}, ["'trusted'"]),
    ({"username": "u"}, ["'password'"]),
    ({"password": "hunter2"}, ["'username'"]),
    ({"auth_token": "hunter2", "username": "u", "password": "hunter2"}, ["either"]),
    ({"mfs_dir": "gffs/rel"}, ["'mfs_dir'"]),
    ({"mfs_dir": "/gffs/../x"}, ["'mfs_dir'"]),
    ({"pasword": "hunter2"}, ["unknown option 'pasword'"]),
    ({"api": 5001}, ["'api'"]),
])
def test_from_config_errors_are_one_line_without_secrets(options, words):
    with pytest.raises(ValueError) as ei:
        IpfsBackend.from_config("ipfs1", {"api": "http://127.0.0.1:5001", **options})
    msg = str(ei.value)
    assert "\n" not in msg and "hunter2" not in msg
    assert msg.startswith("backend 'ipfs1': ")
    for w in words:
        assert w in msg


def test_bad_backend_name_needs_mfs_dir():
    with pytest.raises(ValueError, match="mfs_dir"):
        IpfsBackend.from_config("a b/c", {"api": "http://127.0.0.1:5001"})
    assert IpfsBackend.from_config("a b/c", {"api": "http://127.0.0.1:5001",
                                             "mfs_dir": "/x"}).mfs_dir == "/x"


def test_multiaddr_and_url_forms():
    assert multiaddr_to_url("/ip4/127.0.0.1/tcp/5001") == "http://127.0.0.1:5001"
    assert multiaddr_to_url("/ip4/10.0.0.2/tcp/5001/http") == "http://10.0.0.2:5001"
    assert multiaddr_to_url("/ip6/::1/tcp/5001") == "http://[::1]:5001"
    assert multiaddr_to_url("/dns4/ipfs.lan/tcp/443/https") == "https://ipfs.lan:443"
    assert api_url("http://127.0.0.1:5001/") == "http://127.0.0.1:5001"
    for bad in ["/unix/run/ipfs.sock", "/ip4/127.0.0.1", "/ip4/127.0.0.1/tcp/5001/ws", "5001"]:
        with pytest.raises(ValueError):
            api_url(bad)


def test_api_default_from_ipfs_path(kubo, tmp_path, monkeypatch):
    repo = tmp_path / "ipfs-repo"
    repo.mkdir()
    (repo / "api").write_text(kubo.multiaddr + "\n")       # as a running daemon writes it
    monkeypatch.setenv("IPFS_PATH", str(repo))
    b = IpfsBackend.from_config("ipfsdefault", {"mfs_dir": f"/gffs/default-{os.getpid()}"})
    assert b.base_url == kubo.url

    async def main():
        data = os.urandom(64)
        loc = await b.put(key_of(data), data)
        assert await b.get(key_of(data), loc) == data
        await b.delete(key_of(data), loc)
    run(main)

    (repo / "api").unlink()                                 # no daemon: Kubo's default address
    assert IpfsBackend.from_config("x", {}).base_url == "http://127.0.0.1:5001"
    (repo / "api").write_text("garbage")
    with pytest.raises(ValueError) as ei:
        IpfsBackend.from_config("x", {})
    assert str(ei.value).startswith("backend 'x': ") and str(repo / "api") in str(ei.value)
    monkeypatch.delenv("IPFS_PATH")
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ipfs").mkdir()
    (tmp_path / ".ipfs" / "api").write_text("/ip4/127.0.0.1/tcp/4999")
    assert IpfsBackend.from_config("x", {}).base_url == "http://127.0.0.1:4999"


@pytest.mark.parametrize("options, header", [
    ({"auth_token": "hunter2"}, "Bearer hunter2"),
    ({"auth_token": "Basic aHVudGVyMg=="}, "Basic aHVudGVyMg=="),
    ({"username": "u", "password": "hunter2"}, "Basic " + base64.b64encode(b"u:hunter2").decode()),
])
def test_auth_header_sent_and_never_shown(kubo, options, header):
    b = IpfsBackend.from_config("authy", {"api": kubo.url, **options})
    assert "hunter2" not in repr(b)

    async def main():
        await b.capacity()
        assert kubo.last_authorization == header
        down = IpfsBackend.from_config("authy", {"api": f"http://127.0.0.1:{_closed_port()}",
                                                 **options})
        with pytest.raises(BackendUnavailable) as ei:
            await down.capacity()
        assert "hunter2" not in str(ei.value)
    run(main)


# under the chunk store ---------------------------------------------------------------------

def test_chunk_store_reads_ipfs_copy_and_rejects_a_corrupt_one(kubo, tmp_path):
    """Local + IPFS copies; the local one goes missing: the IPFS copy serves the read;
    when IPFS also answers garbage, the read is EIO, never wrong bytes."""
    import errno

    from gffs.chunks.store import ChunkStore
    from gffs.errors import FsError
    from gffs.index import ChunkMap, Index
    from gffs.placement import Placement
    from gffs_backends.local import LocalBackend

    index = Index(tmp_path / "index")
    local = LocalBackend("disk", tmp_path / "disk")
    ipfs = make_ipfs_backend(kubo)
    store = ChunkStore(index, {"disk": local, ipfs.name: ipfs}, Placement([local, ipfs], copies=2))
    cm = ChunkMap(index)
    data = b"".join(b"row %d of image metadata\n" % i for i in range(40000))   # ~1 MiB

    async def load(digest):
        store.cache.discard(digest)
        with trio.fail_after(10):
            return await store.load(digest)

    async def main():
        sc = await store.store(data, True)
        assert {loc.backend for loc in sc.record.locations} == {"disk", ipfs.name}
        with index.write() as txn:
            cm.set_block(txn, 1, 0, sc.digest, sc.record)
        store.unpin([sc.digest])
        await local.delete(sc.digest.hex())
        assert await load(sc.digest) == data                  # from the real node
        kubo.corrupt_cat = True                               # now the only copy is bad
        with pytest.raises(FsError) as ei:
            await load(sc.digest)
        assert ei.value.errno == errno.EIO
    try:
        run(main)
    finally:
        index.close()


def test_check_retries_a_throttling_proxy_and_fails_fast_when_refused(kubo):
    """The mount's check through a proxy that answers the first three requests with 503
    (a gateway in front of the node) succeeds; it made one attempt and refused the mount.
    A port where nothing listens is still one line at once."""
    from s3_fault_proxy import FaultProxy
    proxy = FaultProxy(kubo.url, slowdown=0, reset=0, delay=0).start()
    try:
        proxy.fail_next = 3
        backend = IpfsBackend("ipfs", proxy.url, timeout=10)
        run(backend.check)
        assert proxy.injected == {"slowdown": 3, "forward": 1}
        run(backend.close)
    finally:
        proxy.stop()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        backend = IpfsBackend("ipfs", f"http://127.0.0.1:{sock.getsockname()[1]}", timeout=10)
        with pytest.raises(BackendError) as err:
            run(backend.check)
    assert "connection refused" in str(err.value) and "gave up" not in str(err.value)
