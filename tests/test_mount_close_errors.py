"""A close() that reports an error must leave the previous content (a real mount, S3 only)."""

from __future__ import annotations

import errno
import json
import time
from pathlib import Path

import pytest

from fixtures_s3 import TEST_REGION
from s3_fault_proxy import S3FaultProxy

pytestmark = pytest.mark.usefixtures("s3_env")


def _s3_only_config(path: Path, endpoint: str, buckets: list[str]) -> Path:
    path.write_text(f"""
[store]
backend_timeout = 10

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


@pytest.fixture
def proxy(moto_server):
    p = S3FaultProxy(moto_server)
    yield p
    p.close()


def test_failed_close_keeps_the_previous_content(tmp_path, mount_factory, proxy, s3_buckets):
    """Issue: close() said EIO, then the release stored the data anyway. Now the reported
    and the stored result agree: the old bytes stay, also after a remount."""
    cfg = _s3_only_config(tmp_path / "gffs.toml", proxy.url, s3_buckets(3))
    m = mount_factory(config=cfg)
    flow = m.path / "f"
    flow.mkdir()
    target = flow / "x.bin"
    old = b"O" * 200_000
    target.write_bytes(old)

    proxy.fail_next = 3               # the next three S3 requests answer 503 SlowDown
    f = open(target, "r+b")
    f.write(b"N" * 200_000)
    with pytest.raises(OSError) as info:
        f.close()
    assert info.value.errno == errno.EIO
    assert proxy.failed == 3
    time.sleep(2)                     # the release (after the failed flush) has run by now
    assert target.read_bytes() == old
    m.remount()
    assert (m.path / "f" / "x.bin").read_bytes() == old
