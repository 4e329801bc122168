"""A close() that reports an error must leave the previous content (a real mount, S3 only)."""

from __future__ import annotations

import errno
import json
import time
from pathlib import Path

import pytest

from fixtures_s3 import TEST_REGION

pytestmark = pytest.mark.usefixtures("s3_env")


def _s3_only_config(path: Path, endpoint: str, buckets: list[str]) -> Path:
    path.write_text(f"""
[store]
backend_timeout = 10
staging_mb = 0          # no staging area: close() itself waits for S3

[backends.s3]
type = "s3"
buckets = {json.dumps(buckets)}
endpoint_url = "{endpoint}"
region = "{TEST_REGION}"
timeout = 5

[placement]
copies = 1
backends = ["s3"]
""")
    return path


def test_failed_close_keeps_the_previous_content(tmp_path, fault_proxy, mount_factory, s3_buckets):
    """Issue: close() said EIO, then the release stored the data anyway. Now the reported
    and the stored result agree: the old bytes stay, also after a remount."""
    proxy = fault_proxy(slowdown=0, reset=0, delay=0)
    cfg = _s3_only_config(tmp_path / "gffs.toml", proxy.url, s3_buckets(3))
    m = mount_factory(config=cfg)
    flow = m.path / "f"
    flow.mkdir()
    target = flow / "x.bin"
    old = b"O" * 200_000
    target.write_bytes(old)

    proxy.fail_next = 10_000          # S3 answers 503 SlowDown until the retries give up
    f = open(target, "r+b")
    f.write(b"N" * 200_000)
    with pytest.raises(OSError) as info:
        f.close()
    assert info.value.errno == errno.EIO
    assert proxy.injected["slowdown"] >= 3
    proxy.fail_next = 0
    time.sleep(2)                     # the release (after the failed flush) has run by now
    assert target.read_bytes() == old
    m.remount()
    assert (m.path / "f" / "x.bin").read_bytes() == old
