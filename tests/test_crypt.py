"""The encryption layer without FUSE: construction, the wrapper's failure modes, key files.

Real components: CryptBackend over a real LocalBackend, the chunk store over two
copies, key files on disk. Mount-level tests are in test_mount_crypt.py.
"""

from __future__ import annotations

import hashlib
import os
import stat

import pytest
import trio

from gffs.chunks import codec
from gffs.chunks.store import ChunkStore
from gffs.config import load_config
from gffs.crypto import keyfile
from gffs.crypto.backend import CryptBackend, KeyMismatch, ObjectCorrupt, marker_name
from gffs.crypto.seal import OVERHEAD, StoreKey, padded_size, sealed_size
from gffs.crypto.setup import store_key
from gffs.errors import ConfigError, FsError
from gffs.index import ChunkMap, Index
from gffs.placement import Placement
from gffs_backends.base import ObjectMissing
from gffs_backends.local import LocalBackend

KEY = StoreKey(bytes(range(32)))
OTHER = StoreKey(bytes(range(1, 33)))


def key_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def crypt(tmp_path, name: str = "b", key: StoreKey = KEY, sid: str = "store-a") -> CryptBackend:
    return CryptBackend(LocalBackend(name, tmp_path / name), sid, key)


def raw_objects(root) -> dict[str, bytes]:
    """Every file under a local backend's directory (chunks and metadata), by path."""
    out = {}
    for dirpath, _d, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


def test_names_and_bytes_reveal_neither_hash_nor_plaintext(tmp_path):
    data = b"MARKER-7f3a " * 500
    key = key_of(data)

    async def main():
        b = crypt(tmp_path)
        await b.put(key, data)
        await b.put_meta(f"index/pieces/{key}", data)
        assert await b.get(key) == data
        assert await b.get_meta(f"index/pieces/{key}") == data
        assert await b.list_meta("index/") == [f"index/pieces/{key}"]
    trio.run(main)
    objects = raw_objects(tmp_path / "b")
    assert len(objects) == 4    # chunk, piece, crypt marker, layout marker
    for path, raw in objects.items():
        assert key not in path and b"MARKER" not in raw and key.encode() not in raw


def test_same_chunk_seals_identically_and_sizes_fall_into_buckets():
    data = os.urandom(5000)
    assert KEY.seal_chunk(key_of(data), data) == KEY.seal_chunk(key_of(data), data)
    assert KEY.chunk_name(key_of(data)) != OTHER.chunk_name(key_of(data))
    # a full block (1 MiB + codec byte) pays only the slack, never a 3 % step
    assert sealed_size((1 << 20) + 1) - ((1 << 20) + 1) <= 64 + OVERHEAD
    # nearby sizes share a bucket; the overhead stays under 13 %
    assert len({padded_size(n) for n in range(300_000, 310_000)}) <= 3
    assert all(padded_size(n) <= max(256, n * 1.13) for n in range(1, 3_000_000, 997))


def test_tampering_swapping_and_wrong_key_fail_as_corrupt(tmp_path):
    a, b_ = os.urandom(3000), os.urandom(3000)
    ka, kb = key_of(a), key_of(b_)

    async def main():
        b = crypt(tmp_path)
        await b.put(ka, a)
        await b.put(kb, b_)
        path_a, path_b = b.inner._path(KEY.chunk_name(ka)), b.inner._path(KEY.chunk_name(kb))
        good_a, good_b = path_a.read_bytes(), path_b.read_bytes()
        path_b.write_bytes(good_a)                      # A's bytes under B's name
        with pytest.raises(ObjectCorrupt):
            await b.get(kb)
        path_b.write_bytes(good_b[:-1])                 # truncated
        with pytest.raises(ObjectCorrupt):
            await b.get(kb)
        flipped = bytearray(good_b)
        flipped[40] ^= 1
        path_b.write_bytes(bytes(flipped))              # altered
        with pytest.raises(ObjectCorrupt):
            await b.get(kb)
        # the same objects read with another key (its marker check bypassed)
        wrong = CryptBackend(LocalBackend("b", tmp_path / "b"), "store-a", OTHER)
        wrong._checked = True
        with pytest.raises(ObjectMissing):              # its names differ: nothing there
            await wrong.get(ka)
        other_path = wrong.inner._path(OTHER.chunk_name(ka))
        other_path.parent.mkdir(parents=True, exist_ok=True)
        other_path.write_bytes(good_a)
        with pytest.raises(ObjectCorrupt):
            await wrong.get(ka)
        assert issubclass(ObjectCorrupt, ObjectMissing)  # the chunk store reads another copy
    trio.run(main)


def test_wrong_key_is_refused_by_the_backend_marker(tmp_path):
    async def main():
        await crypt(tmp_path).put(key_of(b"x"), b"x")
        with pytest.raises(KeyMismatch, match="wrong key"):
            await crypt(tmp_path, key=OTHER).get(key_of(b"x"))
    trio.run(main)


def test_fresh_machine_learns_the_store_from_the_marker(tmp_path):
    async def main():
        await crypt(tmp_path, sid="s1").put_meta("index/versions/v1.json", b"manifest")
        found = CryptBackend(LocalBackend("b", tmp_path / "b"), None, None,
                             find_key=lambda sid: KEY if sid == "s1" else None)
        assert await found.get_meta("index/versions/v1.json") == b"manifest"
        keyless = CryptBackend(LocalBackend("b", tmp_path / "b"), None, None,
                               find_key=lambda sid: None)
        with pytest.raises(KeyMismatch, match="no key for it"):
            await keyless.list_meta("index/versions/")
    trio.run(main)


def test_list_maps_names_to_chunk_ids_and_strays_can_be_deleted(tmp_path):
    live, stray = os.urandom(100), os.urandom(100)

    async def main():
        b = crypt(tmp_path)
        await b.put(key_of(live), live)
        await b.put(key_of(stray), stray)
        # a new process: only the index's ids are known (the stray is a crash leftover)
        fresh = CryptBackend(LocalBackend("b", tmp_path / "b"), "store-a", KEY,
                             known_ids=lambda: [bytes.fromhex(key_of(live))])
        keys = sorted([i.key async for i in fresh.list()])
        stray_name = KEY.chunk_name(key_of(stray))
        assert keys == sorted([key_of(live), stray_name])
        await fresh.delete_many([(stray_name, "")])     # what gc does with unrecorded objects
        assert [i.key async for i in fresh.list()] == [key_of(live)]
        assert await fresh.get(key_of(live)) == live
    trio.run(main)


def test_chunk_store_reads_around_a_corrupt_encrypted_copy_and_queues_repair(tmp_path):
    data = os.urandom(200_000)

    async def main():
        index = Index(tmp_path / "index")
        b0, b1 = crypt(tmp_path, "b0"), crypt(tmp_path, "b1")
        store = ChunkStore(index, {"b0": b0, "b1": b1}, Placement([b0, b1], 2))
        sc = await store.store(data, try_compress=False)
        with index.write() as txn:
            ChunkMap(index).ref(txn, sc.digest, sc.record)
        store.release([sc])
        first, second = store.placement.read_order([loc.backend for loc in sc.record.locations])
        for path in (tmp_path / first / "chunks").rglob("*"):
            if path.is_file():
                path.write_bytes(path.read_bytes()[:-5])
        store.cache.discard(sc.digest)
        assert bytes(await store.load(sc.digest)) == data
        with index.read() as txn:
            assert ChunkMap(index).repair_count(txn) == 1
        for path in (tmp_path / second / "chunks").rglob("*"):
            if path.is_file():
                path.write_bytes(b"\x01" + os.urandom(len(path.read_bytes()) - 1))
        store.cache.discard(sc.digest)
        with pytest.raises(FsError):                    # EIO, never wrong bytes
            await store.load(sc.digest)
        index.close()
    trio.run(main)


def test_key_file_mode_passphrase_and_store_binding(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    path = keyfile.key_path("s1")
    keyfile.write_key_file(path, keyfile.encode_key("s1", KEY, "correct horse"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert KEY.master.hex() not in path.read_text()
    monkeypatch.setenv(keyfile.PASSPHRASE_ENV, "correct horse")
    assert keyfile.read_key("s1").master == KEY.master
    monkeypatch.setenv(keyfile.PASSPHRASE_ENV, "wrong")
    with pytest.raises(ConfigError, match="wrong passphrase"):
        keyfile.read_key("s1")
    monkeypatch.delenv(keyfile.PASSPHRASE_ENV)
    with pytest.raises(ConfigError, match="protected by a passphrase"):
        keyfile.read_key("s1")     # stdin is not a terminal under pytest
    os.rename(path, keyfile.key_path("s2"))     # another store's name: refused
    with pytest.raises(ConfigError, match="not s2"):
        keyfile.read_key("s2")


def test_store_key_made_once_then_required_and_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    from gffs.crypto import setup
    monkeypatch.setattr(setup, "_LOADED", {})
    index = Index(tmp_path / "index")
    key = store_key(index)
    path = keyfile.key_path(index.store_id)
    assert path.exists() and store_key(index).key_id == key.key_id
    setup._LOADED.clear()
    path.rename(tmp_path / "away.key")
    with pytest.raises(ConfigError, match="gffs-admin key import"):
        store_key(index)                        # recorded in the index: never silently remade
    keyfile.write_key_file(path, keyfile.encode_key(index.store_id, OTHER))
    with pytest.raises(ConfigError, match="wrong key file"):
        store_key(index)
    index.close()


def test_encrypt_defaults_on_except_local(tmp_path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text("""
[backends.disk]
type = "local"
path = "/tmp/x"
[backends.disk2]
type = "local"
path = "/tmp/y"
encrypt = true
[backends.s3]
type = "s3"
buckets = ["abc"]
[backends.ipfs]
type = "ipfs"
encrypt = false
""")
    cfg = load_config(cfg_file)
    assert {b.name: b.encrypt for b in cfg.backends} == {"disk": False, "disk2": True,
                                                          "s3": True, "ipfs": False}
    cfg_file.write_text('[backends.s3]\ntype = "s3"\nbuckets = ["abc"]\nencrypt = "yes"\n')
    with pytest.raises(ConfigError, match="encrypt must be true or false"):
        load_config(cfg_file)


def test_sealed_object_of_codec_payload_round_trips():
    for data in (b"", b"x", os.urandom(1 << 20)):
        codec_id, stored = codec.encode(data, try_compress=True)
        sealed = KEY.seal_chunk(key_of(data), stored)
        assert len(sealed) == sealed_size(len(stored))
        assert KEY.open_chunk(key_of(data), sealed) == stored


def test_an_opened_raw_chunk_is_not_hashed_again_but_a_compressed_one_is(monkeypatch):
    """The AEAD tag already bound a raw chunk to its id: decode skips the 1 MiB hash.
    Plaintext copies (not authenticated) and zstd output are still hashed."""
    hashed: list[int] = []
    real = codec.digest
    monkeypatch.setattr(codec, "digest", lambda d: hashed.append(len(d)) or real(d))
    raw = os.urandom(1 << 20)
    _, stored = codec.encode(raw, try_compress=False)
    opened = KEY.open_chunk(key_of(raw), KEY.seal_chunk(key_of(raw), stored))
    assert codec.decode(opened, bytes.fromhex(key_of(raw))) == raw
    assert hashed == []
    assert codec.decode(stored, bytes.fromhex(key_of(raw))) == raw      # plaintext copy
    text = b"compressible " * 5000
    codec_id, packed = codec.encode(text, try_compress=True)
    assert codec_id == codec.CODEC_ZSTD
    opened = KEY.open_chunk(key_of(text), KEY.seal_chunk(key_of(text), packed))
    assert codec.decode(opened, bytes.fromhex(key_of(text))) == text
    assert hashed == [len(raw), len(text)]


def test_encrypt_off_on_a_backend_holding_chunks_is_refused_and_on_starts_a_migration(tmp_path):
    """An upgrade that turns the default on must not make a plaintext S3 look empty (gc
    would then delete it): it becomes a migration, whose wrapper reads both forms; turning
    encryption off must not hide sealed objects."""
    from gffs.crypto.setup import check_modes, migrating_backends
    from gffs.index.records import ChunkRecord, Location

    def cfg(s3_encrypt: str):
        f = tmp_path / "c.toml"
        f.write_text(f'[backends.disk]\ntype = "local"\npath = "{tmp_path / "d"}"\n'
                     f'[backends.s3]\ntype = "s3"\nbuckets = ["abc"]\n{s3_encrypt}\n')
        return load_config(f)

    index = Index(tmp_path / "index")
    check_modes(cfg(""), index)                       # nothing stored yet: s3 becomes sealed
    check_modes(cfg("encrypt = false"), index)        # and may still change while empty
    with index.write() as txn:
        ChunkMap(index).ref(txn, b"\x01" * 32, ChunkRecord(0, 10, 11, 0, [Location("s3", "abc")]))
    assert check_modes(cfg(""), index) == {"s3"} == migrating_backends(index)
    assert check_modes(cfg(""), index) == {"s3"}      # still migrating at the next open
    with pytest.raises(ConfigError, match="holds encrypted chunks.*set encrypt = true"):
        check_modes(cfg("encrypt = false"), index)
    index.close()
    index = Index(tmp_path / "index2")
    check_modes(cfg(""), index)
    with index.write() as txn:
        ChunkMap(index).ref(txn, b"\x02" * 32, ChunkRecord(0, 10, 11, 0, [Location("s3", "abc")]))
    with pytest.raises(ConfigError, match="holds encrypted chunks.*set encrypt = true"):
        check_modes(cfg("encrypt = false"), index)
    index.close()


def test_key_file_keeps_the_previous_key_of_a_rotation_under_the_passphrase(tmp_path):
    """During a rotation both keys must open objects: the file holds both, sealed together."""
    from gffs.crypto import keyfile
    old, new = keyfile.new_key(), keyfile.new_key()
    new.previous = [old]
    for phrase in (None, "correct horse"):
        raw = keyfile.encode_key("s1", new, phrase)
        assert (old.master.hex() in raw.decode()) == (phrase is None)   # sealed with the new
        doc = keyfile.parse_key_file(raw, "f")
        assert doc["key_id"] == new.key_id and doc["previous_key_ids"] == [old.key_id]
        back = keyfile.unseal(doc, "f", phrase)
        assert [k.key_id for k in back.ring()] == [new.key_id, old.key_id]
        doc["previous_key_ids"] = []          # a file whose ids do not match its keys
        with pytest.raises(ConfigError, match="damaged"):
            keyfile.unseal(doc, "f", phrase)
    retired = keyfile.unseal(keyfile.parse_key_file(keyfile.encode_key("s1", StoreKey(new.master)),
                                                    "f"), "f")
    assert retired.key_id == new.key_id and not retired.previous


def test_a_chunk_is_sealed_once_in_the_hashing_hop_and_read_in_one_hop(tmp_path, monkeypatch):
    """Two encrypted copies of a new 1 MiB block: one seal, inside the chunk store's
    hashing thread, two thread hops in all (hash + seal, then each local put); the
    duplicate is not sealed again. A cold read: one hop (read + open together)."""
    data = os.urandom(1 << 20)
    seals = []
    real_seal = StoreKey.seal_chunk

    def counting_seal(self, key, stored):
        seals.append(key)
        return real_seal(self, key, stored)
    monkeypatch.setattr(StoreKey, "seal_chunk", counting_seal)

    async def main():
        index = Index(tmp_path / "index")
        b0, b1 = crypt(tmp_path, "b0"), crypt(tmp_path, "b1")
        store = ChunkStore(index, {"b0": b0, "b1": b1}, Placement([b0, b1], 2))
        await b0.stat("00" * 32)     # marker checks (metadata I/O) out of the way
        await b1.stat("00" * 32)
        hops = []
        real = trio.to_thread.run_sync

        async def counting(fn, *args, **kw):
            hops.append(getattr(fn, "__name__", repr(fn)))
            return await real(fn, *args, **kw)
        monkeypatch.setattr(trio.to_thread, "run_sync", counting)
        sc = await store.store(data, try_compress=False)
        assert seals == [sc.digest.hex()]
        assert hops[0] == "_encode" and len(hops) == 3, hops      # no hop of its own to seal
        with index.write() as txn:
            ChunkMap(index).ref(txn, sc.digest, sc.record)
        store.release([sc])
        again = await store.store(data, try_compress=False)      # known: nothing sealed
        store.release([again])
        assert len(seals) == 1
        for b in (b0, b1):
            assert bytes(codec.decode(await b.get(sc.digest.hex(), ""), sc.digest)) == data
        store.cache.discard(sc.digest)
        hops.clear()
        assert bytes(await store.load(sc.digest)) == data
        assert len(hops) == 1, hops                            # read + open, no decode hop
        index.close()
    trio.run(main)
