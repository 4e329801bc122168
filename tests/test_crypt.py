"""The encryption layer without FUSE: construction, the wrapper's failure modes, key files.

Real components: CryptBackend over a real LocalBackend, the chunk store over two
copies, key files on disk. Mount-level tests are in test_mount_crypt.py.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat

import pytest
import trio

from gffs.chunks import codec
from gffs.chunks.store import ChunkStore
from gffs.config import load_config
from gffs.crypto import keyfile
from gffs.crypto.backend import CryptBackend, KeyMismatch, ObjectCorrupt, marker_name
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gffs.crypto.seal import (AES_GCM, CHACHA, FORMAT_ENV, OVERHEAD, SealError, StoreKey,
                              default_format, padded_size, sealed_size)
from gffs.crypto.setup import store_key
from gffs.errors import ConfigError, FsError
from gffs.index import ChunkMap, Index
from gffs.placement import Placement
from gffs_backends.base import ObjectMissing
from gffs_backends.local import LocalBackend

KEY = StoreKey(bytes(range(32)))
OTHER = StoreKey(bytes(range(1, 33)))
KEYS = {fmt: StoreKey(bytes(range(32)), write_format=fmt) for fmt in (CHACHA, AES_GCM)}


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


# sealed-object formats -------------------------------------------------------------------
KAT_ID = hashlib.sha256(b"gffs kat").hexdigest()
KAT_META = "index/versions/kat.json"
# SHA-256 of the sealed objects of KEY (bytes 0..31): raw chunk b"\0gffs kat", zstd-tagged
# chunk b"\1" + bytes(range(200)), metadata object {"kat": 1}, raw chunk of 70,000 zeros.
# Format 1 was taken from the code before format 2 existed: it must never change (every
# store written until then is in it); format 2 likewise from its first version.
KAT = {CHACHA: ["fda09dc48cc67fb31eb85b403af39819e00d6555f550b56505383109aed6df51",
                "542c9ee2571c4888f4fa832f1027f1aa15a71de655ae6dc054a82580a913dd14",
                "a1a318980abe56c761f38dd3669a731feebd42eba48fdab036e64194b5c5d816",
                "b13ec8c5a848e0a462a18739065ec6718185c26b6fc9f0a927754db445d8fa56"],
       AES_GCM: ["75719d365ef40be18050fff0085ea45d257b1bd35323b057a2c97ccaae2fc382",
                 "1d45cedc46ba4f28688e2813a19b98c26b83e34fdb42fa3635da12f6791515b1",
                 "7daa3621efc9b73e2063a9f1b9281e9348fdb3d69049c726b7969c4f80e3beb4",
                 "ab595d638d29421634c13cb383882081c8e65ad738dd2038ebd4c5fc9daa2bd0"]}


def kat_objects(k: StoreKey) -> list[bytes]:
    zeros = bytes(70000)
    return [k.seal_chunk(KAT_ID, b"\0gffs kat"), k.seal_chunk(KAT_ID, b"\1" + bytes(range(200))),
            k.seal_meta(KAT_META, b'{"kat": 1}'), k.seal_chunk(key_of(zeros), b"\0" + zeros)]


@pytest.mark.parametrize("fmt", [CHACHA, AES_GCM])
def test_known_answers_of_each_format_and_names_that_do_not_depend_on_it(fmt):
    k = KEYS[fmt]
    objects = kat_objects(k)
    assert [hashlib.sha256(o).hexdigest() for o in objects] == KAT[fmt]
    assert {o[0] for o in objects} == {fmt}
    assert [len(o) for o in objects] == [285, 285, 285, 71773]
    # names, key id and nonces are the same in both formats (puts stay idempotent)
    assert k.chunk_name(KAT_ID) == "b8567e6072a494aab5ffa2ec6739f9d663de6cb8151cc4f131ab7121" \
                                   "3ed859c4"
    assert k.meta_name(KAT_META) == "index/versions/ij2uxg37orxndj5wxi4fohcythjnnhwuuhqt3dy"
    assert k.key_id == "9e4f1708ac830f836237f70a859fa13f"
    assert [bytes(o[1:13]).hex() for o in objects] == [bytes(o[1:13]).hex()
                                                       for o in kat_objects(KEYS[CHACHA])]
    # any key opens both formats
    for reader in KEYS.values():
        assert bytes(reader.open_chunk(KAT_ID, objects[0])) == b"\0gffs kat"
        assert reader.open_meta(KAT_META, objects[2]) == b'{"kat": 1}'


def test_format_2_is_aes_gcm_under_its_own_subkey_as_documented():
    """Rebuilt from docs/ENCRYPTION.md with the primitives alone, not with seal.py."""
    master = bytes(range(32))

    def sub(label: str) -> bytes:
        return HKDF(hashes.SHA256(), 32, salt=None,
                    info=b"gffs store key v1: " + label.encode()).derive(master)
    ad = b"gffs chunk v1\0" + KAT_ID.encode()
    payload = b"\0gffs kat"
    nonce = hmac.digest(sub("chunk nonces"), ad + b"\0", "sha256")[:12]
    framed = len(payload).to_bytes(4, "big") + payload
    framed += bytes(padded_size(len(framed)) - len(framed))
    expect = b"\2" + nonce + AESGCM(sub("chunk data aes-gcm")).encrypt(nonce, framed, ad)
    assert KEYS[AES_GCM].seal_chunk(KAT_ID, payload) == expect
    assert sub("chunk data aes-gcm") != sub("chunk data")    # never one key for two ciphers


@pytest.mark.parametrize("fmt", [CHACHA, AES_GCM])
def test_each_format_refuses_tampering_truncation_swaps_and_unknown_formats(fmt):
    k = KEYS[fmt]
    a, b = b"\0" + os.urandom(3000), b"\0" + os.urandom(3000)
    sa, sb = k.seal_chunk(key_of(a[1:]), a), k.seal_chunk(key_of(b[1:]), b)
    assert bytes(k.open_chunk(key_of(a[1:]), sa)) == a
    bad = [sb, sa[:-1], sa[:OVERHEAD - 1], sa + b"\0"]          # swapped, truncated, extended
    for pos in (1, 13, 40, len(sa) - 1):                       # nonce, length, payload, tag
        flipped = bytearray(sa)
        flipped[pos] ^= 1
        bad.append(flipped)
    bad.append(bytes([CHACHA + AES_GCM - fmt]) + sa[1:])       # the other format's byte
    for other in (0, 3, 255):
        bad.append(bytes([other]) + sa[1:])                    # no such format
    for sealed in bad:
        with pytest.raises(SealError):
            k.open_chunk(key_of(a[1:]), sealed)
    with pytest.raises(SealError, match="known format"):
        k.open_chunk(key_of(a[1:]), bytes([3]) + sa[1:])
    sm = k.seal_meta("index/versions/a.json", b"{}")
    with pytest.raises(SealError):                             # bound to its name
        k.open_meta("index/versions/b.json", sm)


def test_write_format_follows_the_environment_then_the_cpu(monkeypatch):
    monkeypatch.setenv(FORMAT_ENV, "1")
    assert default_format() == CHACHA and StoreKey(bytes(32)).write_format == CHACHA
    monkeypatch.setenv(FORMAT_ENV, "2")
    assert StoreKey(bytes(32)).seal_chunk(KAT_ID, b"\0x")[0] == AES_GCM
    monkeypatch.setenv(FORMAT_ENV, "7")
    with pytest.raises(ConfigError, match=FORMAT_ENV):
        StoreKey(bytes(32))
    monkeypatch.delenv(FORMAT_ENV)
    flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "")
    assert default_format() == (AES_GCM if "aes" in flags.partition(":")[2].split() else CHACHA)


def test_a_chunk_re_put_in_the_other_format_is_the_same_object_and_still_reads(tmp_path):
    data = os.urandom(200_000)
    stored = b"\0" + data
    cid = key_of(data)

    async def main():
        old = crypt(tmp_path, key=KEYS[CHACHA])
        await old.put(cid, stored)
        path = old.inner._path(KEY.chunk_name(cid))
        assert path.read_bytes()[0] == CHACHA
        marker = old.inner.meta / marker_name("store-a")
        assert json.loads(marker.read_bytes())["formats"] == [CHACHA]
        new = crypt(tmp_path, key=KEYS[AES_GCM])
        assert bytes(await new.get(cid)) == stored                # format 1 read by a format-2 writer
        assert json.loads(marker.read_bytes())["formats"] == [CHACHA, AES_GCM]
        await new.put(cid, stored)                                # same name, other bytes
        assert [p.name for p in path.parent.iterdir()] == [path.name]
        assert path.read_bytes()[0] == AES_GCM
        assert bytes(await old.get(cid)) == stored                # and back
        assert (await new.stat(cid)).size == sealed_size(len(stored))
    trio.run(main)


def test_a_marker_from_before_formats_reads_and_gains_the_list(tmp_path):
    async def main():
        inner = LocalBackend("b", tmp_path / "b")
        await inner.put_meta(marker_name("store-a"), json.dumps(
            {"store_id": "store-a", "key_id": KEY.key_id, "cipher": "ChaCha20-Poly1305",
             "names": "HMAC-SHA256"}).encode())
        b = CryptBackend(inner, "store-a", KEYS[AES_GCM])
        await b.put(key_of(b"x"), b"\0x")
        doc = json.loads(await inner.get_meta(marker_name("store-a")))
        assert doc["formats"] == [CHACHA, AES_GCM] and doc["key_id"] == KEY.key_id
        assert doc["cipher"] == "AES-256-GCM"
        with pytest.raises(KeyMismatch, match="wrong key"):       # the key check is unchanged
            await CryptBackend(inner, "store-a", OTHER).get(key_of(b"x"))
    trio.run(main)


def test_a_staged_chunk_is_sealed_in_the_hop_that_verifies_it_on_upload(tmp_path, monkeypatch):
    """An upload to an encrypted remote: read the staged copy, verify and seal in one
    worker-thread hop, put; no hop of its own to seal (one per chunk on S3 before)."""
    from faults import FaultyBackend
    from gffs.chunks.staging import Staging
    data = os.urandom(300_000)
    seals, hops = [], []
    real_seal, real_hop = StoreKey.seal_chunk, trio.to_thread.run_sync

    def counting_seal(self, key, stored):
        seals.append(key)
        return real_seal(self, key, stored)

    async def counting_hop(fn, *args, **kw):
        hops.append(getattr(getattr(fn, "func", fn), "__name__", repr(fn)))
        return await real_hop(fn, *args, **kw)
    monkeypatch.setattr(StoreKey, "seal_chunk", counting_seal)

    async def main():
        index = Index(tmp_path / "index")
        remote = CryptBackend(FaultyBackend(LocalBackend("s3", tmp_path / "s3")), "store-a", KEY)
        store = ChunkStore(index, {"s3": remote}, Placement([remote]),
                           staging=Staging(tmp_path / "staging", 1 << 20))
        await remote.stat("00" * 32)                 # the marker check out of the way
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run_uploads)
            sc = await store.store(data, try_compress=False)
            assert sc.staged and seals == []         # staged in the clear, sealed on upload
            monkeypatch.setattr(trio.to_thread, "run_sync", counting_hop)
            with index.write() as txn:
                ChunkMap(index).set_block(txn, 1, 0, sc.digest, sc.record)
                ChunkMap(index).queue_repair(txn, sc.digest, None)
            store.release([sc])
            with trio.fail_after(60):
                while not seals or store.staging.used:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        assert seals == [sc.digest.hex()]
        assert "_verified" in hops and "seal_chunk" not in hops, hops
        got = await remote.get(sc.digest.hex(), "")
        assert bytes(codec.decode(got, sc.digest)) == data
        index.close()
    trio.run(main)
