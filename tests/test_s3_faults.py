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
import os
import random
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import trio

from fixtures_s3 import TEST_REGION

pytest.importorskip("boto3")
from gffs_backends.base import BackendError  # noqa: E402
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


def _config(path: Path, endpoint: str, buckets: list[str], local: Path | None,
            staged: bool = False) -> Path:
    local_table = f'[backends.local]\ntype = "local"\npath = "{local}"\n' if local else ""
    names = ["local", "s3"] if local else ["s3"]
    # staging off: close() waits for S3, so the cp's time is the time to store on S3;
    # staged (the default configuration): close() waits for local disk, uploads follow
    staging = "" if staged else "staging_mb = 0"
    path.write_text(f"""
[store]
analyze_images = false
{staging}

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
            src: Path, local: bool, staged: bool = False) -> tuple[object, float, list[str]]:
    """Mount through the proxy (its bucket check meets the faults too), then copy *src*
    in: (mount, seconds until the data is on S3, cp's error lines, one per failed file).
    Staged, that is the cp and then the upload queue draining."""
    cfg = _config(tmp_path / f"{name}.toml", proxy.url, buckets,
                  tmp_path / f"{name}-local" if local else None, staged)
    m = mount_factory(config=cfg, name=name)
    t0 = time.monotonic()
    res = subprocess.run(["cp", "-r", str(src), str(m.path / "flow")], capture_output=True,
                         text=True, timeout=600)
    if staged:
        _wait_uploaded(m, deadline=time.monotonic() + 600)
    seconds = time.monotonic() - t0
    return m, seconds, res.stderr.splitlines()


def _wait_uploaded(m, deadline: float) -> None:
    """Until no chunk waits for its S3 copy: asked of the live index (LMDB readers in
    another process), after an fsync, which commits the daemon's open group."""
    from gffs.index import ChunkMap, Index
    probe = next((m.path / "flow").iterdir())
    while True:
        fd = os.open(probe, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        index = Index(m.data_dir / "index", readonly=True)
        try:
            with index.read() as txn:
                pending = ChunkMap(index).repair_count(txn)
        finally:
            index.close()
        if not pending:
            return
        assert time.monotonic() < deadline, f"{pending} chunks never reached S3"
        time.sleep(0.1)


@pytest.mark.parametrize("local,staged", [(False, False), (True, False), (False, True)],
                         ids=["s3-only", "local+s3", "s3-only-staged"])
def test_ingest_through_faulty_s3_fails_nothing(tmp_path, fault_proxy, mount_factory,
                                                s3_buckets, local, staged):
    """The hardening issue's mix: 10 % SlowDown, 2 % resets, 3 % delayed by 2 s, from the
    mount's backend check on (the mount is not let in with the faults off).

    Every cp and close succeeds, the files read back byte for byte after a remount
    (reads go through the faults too), and the proxy really injected faults. The
    figures (clean and faulty cp time, their ratio, failed operations) are printed:
    the issue's target is 0 failed and at most 2x the clean time (not asserted).
    """
    files = _source(tmp_path / "src", 120, seed=1)
    clean = fault_proxy(slowdown=0, reset=0, delay=0)
    _, t_clean, clean_errors = _ingest(mount_factory, tmp_path, "clean", clean, s3_buckets(2),
                                       tmp_path / "src", local, staged)
    assert not clean_errors, clean_errors[:5]
    proxy = fault_proxy(slowdown=0.10, reset=0.02, delay=0.03, delay_s=2.0, seed=4)
    m, t_faults, errors = _ingest(mount_factory, tmp_path, "faulty", proxy, s3_buckets(2),
                                  tmp_path / "src", local, staged)
    at_ingest = dict(proxy.injected)
    m.remount()
    bad_reads: list[str] = []
    for name, data in files.items():
        try:
            if (m.path / "flow" / name).read_bytes() != data:
                bad_reads.append(f"{name}: other bytes")
        except OSError as exc:
            bad_reads.append(f"{name}: {exc}")
    print(f"\n{'local+s3' if local else 's3-only'}, {len(files)} files, "
          f"{'staged: cp and uploads' if staged else 'staging off'}: "
          f"clean {t_clean:.1f} s, faults {t_faults:.1f} s, ratio "
          f"{t_faults / max(t_clean, 1e-9):.2f}; failed: {len(errors)} of {len(files)} cp, "
          f"{len(bad_reads)} reads; injected during mount+cp {at_ingest}, "
          f"in all {dict(proxy.injected)}")
    assert not errors, f"cp failed: {errors[:5]}\n{m.log_tail()}"
    assert not bad_reads, bad_reads[:5]
    assert at_ingest["slowdown"] > 0 and at_ingest["reset"] > 0 and at_ingest["delay"] > 0
    assert "Traceback" not in m.log_text(), m.log_tail(60)


def test_check_retries_temporary_answers_and_fails_fast_on_permanent_ones(
        fault_proxy, s3_buckets):
    """The mount's check (head_bucket per bucket) is a request like any other: 503s and
    resets are retried within the backend timeout (it refused a mount after one 503 and
    one more fault: the probe made 2 attempts). A missing bucket or an endpoint where
    nothing listens is still one line, after one request."""
    buckets = s3_buckets(2)
    proxy = fault_proxy(slowdown=0, reset=0, delay=0)

    def check(bucket_names: list[str], endpoint: str) -> str | None:
        backend = S3Backend.from_config("s3", {"buckets": bucket_names, "endpoint_url": endpoint,
                                               "region": TEST_REGION, "timeout": 30})

        async def main() -> str | None:
            try:
                with trio.fail_after(60):
                    await backend.check()
                return None
            except BackendError as exc:
                return str(exc)
            finally:
                await backend.close()
        return trio.run(main)

    proxy.fail_next = 4                     # four 503 SlowDown answers in a row
    assert check(buckets, proxy.url) is None
    assert proxy.injected["slowdown"] == 4 and proxy.injected["forward"] == 2

    proxy.rates = {"slowdown": 0, "reset": 1.0, "delay": 0}
    proxy.injected.clear()
    with_resets = threading.Timer(1.0, lambda: setattr(proxy, "enabled", False))
    with_resets.start()                     # connections reset for the first second
    try:
        assert check(buckets, proxy.url) is None
    finally:
        with_resets.cancel()
    assert proxy.injected["reset"] >= 2, proxy.injected
    proxy.enabled = True
    proxy.rates = {"slowdown": 0, "reset": 0, "delay": 0}

    proxy.injected.clear()
    missing = check(["gf-never-made-here"], proxy.url)
    assert missing == ("s3: bucket 'gf-never-made-here' does not exist (create it, or set "
                       "create_buckets = true)")
    assert proxy.injected == {"forward": 1}          # asked once: a 404 is an answer

    with socket.socket() as sock:           # a port where nothing listens
        sock.bind(("127.0.0.1", 0))
        refused = check(buckets, f"http://127.0.0.1:{sock.getsockname()[1]}")
    assert refused is not None and "unreachable" in refused and "gave up" not in refused
