"""fsck --verify-data on S3 (a moto server on loopback) beside a local disk: a corrupt S3
copy is repaired from the local one; with no good copy left the files are named."""

from __future__ import annotations

import os
import socket

import pytest

from fsck_util import Damage, fsck, kinds, make_config, object_path, populate, read_back
from gffs.chunks import codec
from fixtures_s3 import TEST_REGION

PHOTO = os.urandom(700_000)


def s3_table(endpoint: str, buckets: list[str]) -> str:
    names = ", ".join(f'"{b}"' for b in buckets)
    return (f'type = "s3"\nbuckets = [{names}]\nendpoint_url = "{endpoint}"\n'
            f'region = "{TEST_REGION}"\ntimeout = 5\n'
            'encrypt = false')   # the tests damage objects by their plain chunk key


@pytest.fixture
def s3_store(tmp_path, moto_server, s3_buckets):
    buckets = s3_buckets(2)
    cfg = make_config(tmp_path, {"disk": f'type = "local"\npath = "{tmp_path / "disk"}"',
                                 "s3": s3_table(moto_server, buckets)}, copies=2)
    inos = populate(cfg, {"trip/photo.jpg": PHOTO}, links={"best/photo.jpg": "trip/photo.jpg"})
    with Damage(cfg) as d:
        digest = d.digests_of(inos["trip/photo.jpg"])[0]
        with d.index.read() as txn:
            bucket = next(loc.locator for loc in d.cm.chunk(txn, digest).locations
                          if loc.backend == "s3")
    return cfg, digest, bucket


def corrupt_s3(s3_admin, bucket: str, digest: bytes) -> None:
    key = "chunks/" + digest.hex()
    body = bytearray(s3_admin.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[-1] ^= 0x55
    s3_admin.put_object(Bucket=bucket, Key=key, Body=bytes(body))


def test_corrupt_s3_copy_is_repaired_from_local(s3_store, s3_admin):
    cfg, digest, bucket = s3_store
    corrupt_s3(s3_admin, bucket, digest)
    assert fsck(cfg)["clean"]  # the object is there: only its bytes are wrong
    found = fsck(cfg, verify_data=True)
    assert kinds(found) == {"copy_corrupt": (1, 0)} and found["exit_code"] == 1
    assert found["findings"][0]["detail"] == "on s3: hash mismatch"
    fixed = fsck(cfg, repair=True, verify_data=True)
    assert kinds(fixed) == {"copy_corrupt": (1, 1)} and fixed["exit_code"] == 0
    assert fsck(cfg, verify_data=True)["clean"]
    body = s3_admin.get_object(Bucket=bucket, Key="chunks/" + digest.hex())["Body"].read()
    assert bytes(codec.decode(body, digest)) == PHOTO


def test_no_good_copy_left_names_every_file(s3_store, s3_admin, tmp_path):
    cfg, digest, bucket = s3_store
    corrupt_s3(s3_admin, bucket, digest)
    object_path(tmp_path / "disk", digest).unlink()
    result = fsck(cfg, repair=True, verify_data=True)
    assert kinds(result) == {"copy_missing": (1, 0), "copy_corrupt": (1, 0), "chunk_lost": (1, 0)}
    assert result["exit_code"] == 1 and result["unfixed"] == 3
    assert result["lost"] == [{"chunk": digest.hex(),
                               "files": ["best/photo.jpg", "trip/photo.jpg"]}]
    # nothing was dropped: the record still names both copies for a later look
    with Damage(cfg) as d, d.index.read() as txn:
        assert {loc.backend for loc in d.cm.chunk(txn, digest).locations} == {"disk", "s3"}


def test_missing_local_copy_is_restored_from_s3(s3_store, tmp_path):
    cfg, digest, _bucket = s3_store
    object_path(tmp_path / "disk", digest).unlink()
    fixed = fsck(cfg, repair=True)
    assert kinds(fixed) == {"copy_missing": (1, 1)}
    assert fsck(cfg, verify_data=True)["clean"]
    assert read_back(cfg, ["best/photo.jpg"]) == {"best/photo.jpg": PHOTO}


def test_unreachable_backend_is_reported_not_blamed(tmp_path, s3_env):
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    cfg = make_config(tmp_path, {"disk": f'type = "local"\npath = "{tmp_path / "disk"}"',
                                 "s3": s3_table(dead, ["gf-dead-1"])}, copies=1,
                      extra='backends = ["disk"]')
    populate(cfg, {"f/x.bin": os.urandom(50_000)})
    result = fsck(cfg, repair=True, verify_data=True)
    assert kinds(result) == {"backend_unreachable": (1, 0)}
    assert result["exit_code"] == 1 and "s3" in result["findings"][0]["object"]
