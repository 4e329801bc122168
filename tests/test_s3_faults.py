"""S3 under faults: a loopback proxy (tests/s3_fault_proxy.py) in front of the moto server
answers some requests with 503 SlowDown, resets some connections and delays some.

What a user relies on: no write or read fails because the endpoint throttles or drops
a connection now and then (the retries follow S3's guidance), and the bytes read back
are the bytes written. Timing is printed, never asserted (benchmarks/bench_s3.py
--faults measures it).
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import time
from pathlib import Path

import pytest
import trio

from fixtures_s3 import TEST_REGION

pytest.importorskip("boto3")
from gffs_backends.s3 import S3Backend  # noqa: E402

pytestmark = pytest.mark.usefixtures("s3_env")


def test_proxy_injects_each_fault_and_forwards_the_rest(fault_proxy, s3_buckets):
    """The fixture itself: each fault kind reaches a client as S3 would send it."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError
    bucket, = s3_buckets(1)
    raw = Config(retries={"total_max_attempts": 1}, read_timeout=1, connect_timeout=1)
    for fate, rates, expect in [
            ("slowdown", {"slowdown": 1.0, "reset": 0, "delay": 0}, ClientError),
            ("reset", {"slowdown": 0, "reset": 1.0, "delay": 0},
             (ConnectionClosedError, EndpointConnectionError, ConnectionError)),
            ("forward", {"slowdown": 0, "reset": 0, "delay": 0}, None)]:
        proxy = fault_proxy(**rates)
        client = boto3.client("s3", endpoint_url=proxy.url, region_name=TEST_REGION,
                              config=raw)
        if expect is None:
            client.put_object(Bucket=bucket, Key="k", Body=b"hello")
            assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"hello"
        else:
            with pytest.raises(expect) as ei:
                client.put_object(Bucket=bucket, Key="k", Body=b"x")
            if fate == "slowdown":
                assert ei.value.response["Error"]["Code"] == "SlowDown"
                assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert proxy.injected[fate] >= 1
        client.close()


def test_backend_puts_and_gets_survive_heavy_faults(fault_proxy, s3_buckets):
    """A quarter of all requests fail (20 % SlowDown, 5 % resets): 150 puts and gets,
    16 at a time, all succeed and read back intact. With botocore's 3 attempts about
    1.6 % of requests failed, so this run would lose several."""
    proxy = fault_proxy(slowdown=0.20, reset=0.05, delay=0.0, seed=11)
    backend = S3Backend.from_config("s3", {"buckets": s3_buckets(2), "endpoint_url": proxy.url,
                                           "region": TEST_REGION, "timeout": 30})
    rnd = random.Random(5)
    blobs = [rnd.randbytes(rnd.randint(100, 40_000)) for _ in range(150)]
    failures: list[str] = []

    async def main() -> None:
        limiter = trio.CapacityLimiter(16)

        async def one(blob: bytes) -> None:
            key = hashlib.sha256(blob).hexdigest()
            async with limiter:
                try:
                    loc = await backend.put(key, blob)
                    if await backend.get(key, loc) != blob:
                        failures.append(f"{key[:12]}: wrong bytes")
                except Exception as exc:  # noqa: BLE001 (collected, asserted below)
                    failures.append(f"{key[:12]}: {exc}")
        async with trio.open_nursery() as nursery:
            for b in blobs:
                nursery.start_soon(one, b)
        await backend.close()
    trio.run(main)
    assert proxy.injected["slowdown"] > 30 and proxy.injected["reset"] > 5, proxy.injected
    assert not failures, failures[:5]


def _config(path: Path, endpoint: str, buckets: list[str], local: Path | None) -> Path:
    local_table = f'[backends.local]\ntype = "local"\npath = "{local}"\n' if local else ""
    names = ["local", "s3"] if local else ["s3"]
    path.write_text(f"""
[store]
analyze_images = false

{local_table}
[backends.s3]
type = "s3"
buckets = {json.dumps(buckets)}
endpoint_url = "{endpoint}"
region = "{TEST_REGION}"
timeout = 30

[placement]
copies = {len(names)}
backends = {json.dumps(names)}
""")
    return path


def _source(root: Path, n: int, seed: int) -> dict[str, bytes]:
    rnd = random.Random(seed)
    root.mkdir(parents=True)
    files = {f"img{i:04d}.jpg": b"\xff\xd8\xff\xe0" + rnd.randbytes(rnd.randint(2_000, 600_000))
             for i in range(n)}
    for name, data in files.items():
        (root / name).write_bytes(data)
    return files


def _ingest(mount_factory, tmp_path: Path, name: str, proxy, buckets: list[str],
            src: Path, local: bool) -> tuple[object, float]:
    """Mount with the proxy's faults off (the mount's bucket check is not under test
    here), then copy *src* in with them on."""
    cfg = _config(tmp_path / f"{name}.toml", proxy.url, buckets,
                  tmp_path / f"{name}-local" if local else None)
    proxy.enabled = False
    m = mount_factory(config=cfg, name=name)
    proxy.enabled = True
    t0 = time.monotonic()
    res = subprocess.run(["cp", "-r", str(src), str(m.path / "flow")], capture_output=True,
                         text=True, timeout=600)
    seconds = time.monotonic() - t0
    assert res.returncode == 0 and not res.stderr, f"cp failed: {res.stderr}\n{m.log_tail()}"
    return m, seconds


@pytest.mark.parametrize("local", [False, True], ids=["s3-only", "local+s3"])
def test_ingest_through_faulty_s3_fails_nothing(tmp_path, fault_proxy, mount_factory,
                                                s3_buckets, local):
    """The hardening issue's mix: 10 % SlowDown, 2 % resets, 3 % delayed by 2 s.

    Every cp and close succeeds, the files read back byte for byte after a remount
    (reads go through the faults too), and the proxy really injected faults.
    """
    files = _source(tmp_path / "src", 120, seed=1)
    clean = fault_proxy(slowdown=0, reset=0, delay=0)
    _, t_clean = _ingest(mount_factory, tmp_path, "clean", clean, s3_buckets(2),
                         tmp_path / "src", local)
    proxy = fault_proxy(slowdown=0.10, reset=0.02, delay=0.03, delay_s=2.0, seed=4)
    m, t_faults = _ingest(mount_factory, tmp_path, "faulty", proxy, s3_buckets(2),
                          tmp_path / "src", local)
    m.remount()
    for name, data in files.items():
        assert (m.path / "flow" / name).read_bytes() == data, name
    print(f"\n{'local+s3' if local else 's3-only'}: clean {t_clean:.1f} s, faults "
          f"{t_faults:.1f} s, ratio {t_faults / max(t_clean, 1e-9):.2f}; injected "
          f"{dict(proxy.injected)}")
    assert proxy.injected["slowdown"] > 0 and proxy.injected["reset"] > 0
    assert proxy.injected["delay"] > 0
    assert "Traceback" not in m.log_text(), m.log_tail(60)
