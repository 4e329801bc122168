"""Real mounts over several backends: S3 (3 buckets on a moto server) + local disk.

What a user relies on: the filesystem looks the same whatever stores the bytes,
a backend that goes down mid-ingest loses nothing and is caught up once it is
back, and a damaged copy is served around and repaired.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures_s3 import TEST_REGION
from gffs.index import ChunkMap, Index
from gffs_backends.local import chunk_path

pytestmark = pytest.mark.usefixtures("s3_env")


def write_config(path: Path, local_dir: Path, endpoint: str, buckets: list[str],
                 copies: int = 2, extra: str = "") -> Path:
    path.write_text(f"""
[store]
backend_timeout = 5
backend_retry_max = 2

[backends.local]
type = "local"
path = "{local_dir}"

[backends.s3]
type = "s3"
buckets = {json.dumps(buckets)}
endpoint_url = "{endpoint}"
region = "{TEST_REGION}"
timeout = 3

[placement]
copies = {copies}
backends = ["local", "s3"]
{extra}
""")
    return path


def admin_status(data_dir: Path) -> dict:
    res = subprocess.run([sys.executable, "-m", "gffs.cli.admin", "--data-dir", str(data_dir),
                          "status", "--json"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def chunk_locations(data_dir: Path) -> dict[bytes, list[str]]:
    index = Index(data_dir / "index", readonly=True)
    try:
        with index.read() as txn:
            return {d: sorted(loc.backend for loc in rec.locations)
                    for d, rec in ChunkMap(index).all_chunks(txn)}
    finally:
        index.close()


def sample_files(testdata_dir: Path | None, n: int = 24) -> dict[str, bytes]:
    """Real camera images when the team's testdata is there, else generated ones."""
    if testdata_dir is not None and testdata_dir.is_dir():
        files = sorted(p for p in testdata_dir.rglob("*") if p.is_file())
        return {f"{i:03d}-{p.name}": p.read_bytes() for i, p in enumerate(files)}
    rnd = __import__("random").Random(7)
    return {f"gen{i}.jpg": b"\xff\xd8\xff\xe0" + rnd.randbytes(rnd.randint(1000, 2_500_000))
            for i in range(n)}


@pytest.fixture
def s3_mount(tmp_path, mount_factory, moto_server, s3_buckets):
    buckets = s3_buckets(3)
    cfg = write_config(tmp_path / "gffs.toml", tmp_path / "local", moto_server, buckets)
    return mount_factory(config=cfg), buckets


def _testdata_or_none():
    from conftest import TESTDATA
    return TESTDATA if TESTDATA.is_dir() else None


def test_copy_real_images_to_s3_and_local_remount_read_back(s3_mount, s3_admin):
    m, buckets = s3_mount
    files = sample_files(_testdata_or_none())
    flow = m.path / "landscapes"
    flow.mkdir()
    for name, data in files.items():
        (flow / name).write_bytes(data)
    m.remount()
    for name, data in files.items():
        assert (flow / name).read_bytes() == data, name
    m.unmount()
    locs = chunk_locations(m.data_dir)
    assert locs and all(v == ["local", "s3"] for v in locs.values())
    used = [b for b in buckets if s3_admin.list_objects_v2(Bucket=b).get("KeyCount", 0)]
    assert len(used) == 3  # chunks spread over all three buckets


def test_backend_down_mid_ingest_loses_nothing_and_repair_drains(tmp_path, mount_factory, s3_env):
    """A dedicated moto server is stopped halfway through a copy, then started again."""
    moto_server = pytest.importorskip("moto.server")
    import boto3
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    admin = boto3.client("s3", endpoint_url=endpoint, region_name=TEST_REGION)
    buckets = [f"gf-down-{port}-{i}" for i in range(3)]
    for b in buckets:
        admin.create_bucket(Bucket=b)
    cfg = write_config(tmp_path / "gffs.toml", tmp_path / "local", endpoint, buckets)
    try:
        m = mount_factory(config=cfg)
        flow = m.path / "ingest"
        flow.mkdir()
        rnd = __import__("random").Random(3)
        files = {f"f{i}.jpg": rnd.randbytes(rnd.randint(10_000, 1_500_000)) for i in range(30)}
        for i, (name, data) in enumerate(files.items()):
            if i == 10:
                server.stop()  # S3 goes away in the middle of the copy
            t = time.monotonic()
            (flow / name).write_bytes(data)
            assert time.monotonic() - t < 15, "a write waited too long on a dead backend"
        for name, data in files.items():
            assert (flow / name).read_bytes() == data
        assert admin_status(m.data_dir)["repair_pending"] > 0
        server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        deadline = time.monotonic() + 60
        while admin_status(m.data_dir)["repair_pending"] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert admin_status(m.data_dir)["repair_pending"] == 0
        m.remount()
        for name, data in files.items():
            assert (flow / name).read_bytes() == data
        m.unmount()
        assert all(v == ["local", "s3"] for v in chunk_locations(m.data_dir).values())
    finally:
        server.stop()


def test_corrupt_local_copy_is_served_from_s3_and_repaired(s3_mount):
    m, _ = s3_mount
    flow = m.path / "f"
    flow.mkdir()
    data = os.urandom(700_000)
    (flow / "a.jpg").write_bytes(data)
    m.unmount()
    (digest, _), = chunk_locations(m.data_dir).items()
    local_copy = chunk_path(m.root.parent / "local" / "chunks", digest.hex())
    good = local_copy.read_bytes()
    local_copy.write_bytes(good[:100] + b"rot" + good[103:])
    m.mount()
    assert (flow / "a.jpg").read_bytes() == data        # served from S3, verified
    deadline = time.monotonic() + 30
    while local_copy.read_bytes() != good and time.monotonic() < deadline:
        time.sleep(0.3)
    assert local_copy.read_bytes() == good               # the bad copy was rewritten
    assert "is bad" in m.log_text()


def test_all_backends_together_s3_ipfs_drive_local(tmp_path, mount_factory, moto_server,
                                                   s3_buckets, kubo, drive):
    """Default flows on local + S3 (3 buckets); the "nfts" flow on IPFS + Google Drive."""
    from fixtures_gdrive import token_file
    cred = token_file(drive, tmp_path / "drive-token.json")
    cfg = write_config(tmp_path / "gffs.toml", tmp_path / "local", moto_server, s3_buckets(3),
                       extra=f"""
[placement.flows.nfts]
copies = 2
backends = ["ipfs", "drive"]

[backends.ipfs]
type = "ipfs"
api = "{kubo.url}"
timeout = 10

[backends.drive]
type = "gdrive"
folder = "gloflow-{tmp_path.name}"
credentials = "{cred}"
api_endpoint = "{drive.url}"
pack_wait = 0.05
max_creates_per_s = 0
""")
    m = mount_factory(config=cfg)
    files = sample_files(_testdata_or_none())
    names = sorted(files)
    half = {"landscapes": names[::2], "nfts": names[1::2]}
    for flow, subset in half.items():
        (m.path / flow).mkdir()
        for name in subset:
            (m.path / flow / name).write_bytes(files[name])
    m.remount()
    for flow, subset in half.items():
        for name in subset:
            assert (m.path / flow / name).read_bytes() == files[name], (flow, name)
    m.unmount()
    seen = {tuple(v) for v in chunk_locations(m.data_dir).values()}
    assert ("local", "s3") in seen and ("drive", "ipfs") in seen
    assert seen <= {("local", "s3"), ("drive", "ipfs")}
    assert "Traceback" not in m.log_text()
