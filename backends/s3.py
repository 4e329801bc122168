"""S3 backend: chunks spread over several buckets by weighted rendezvous hashing.

One backend spans several buckets (of one endpoint and one set of credentials).
A put picks the bucket deterministically from the key: every bucket scores
``-weight / ln(h(bucket, key))`` with ``h`` uniform in (0, 1), the highest score
wins. That spreads keys in proportion to the weights, sends a key to the same
bucket while the weights stay unchanged, and moves only the keys that must move
when a weight changes. The put returns the bucket as the locator, which the index
stores, so old objects stay where they are after a weight change: get/stat try
the locator's bucket first and then search every bucket (rendezvous order).

Credentials come from the standard boto3 chain (environment, ~/.aws, instance
role) or a named ``profile``; gffs config never holds them, and no message,
log line or repr built here contains them.

Metadata objects (index backups) are stored under a sibling of the chunk prefix
(``chunks/`` -> ``chunks-meta/``; an empty prefix -> ``gffs-meta/``) in the bucket
rendezvous hashing picks for their name; list() filters on chunk keys, so it
never returns them.

Option checking lives in s3_config, bucket choice in s3_buckets, the meaning of
botocore's exceptions in s3_errors; this module is the Backend itself.

Every boto3 call blocks, so it runs in a worker thread that is abandoned on
cancellation, under ``trio.fail_after`` (the operation's deadline). Inside it,
botocore's *standard* retry mode retries throttling (503 SlowDown), 5xx answers,
resets and timeouts with jittered exponential backoff, as S3's guidance asks, and
each attempt has its own connect/read timeout, a fraction of the deadline, so one
hung attempt leaves time for the next instead of eating the whole deadline.
"""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import trio

from gffs_backends.base import (Backend, BackendError, BackendUnavailable, ObjectInfo,
                                ObjectMissing, answers_checked_class, check_meta_name,
                                check_meta_prefix, in_thread, retry_at_check, with_retry)
from gffs_backends.s3_buckets import choose_bucket, meta_prefix, search_order
from gffs_backends.s3_config import (ATTEMPTS, DEFAULT_MULTIPART_THRESHOLD, DEFAULT_PREFIX,
                                     DEFAULT_TIMEOUT, DELETE_BATCH, MAX_CONNECT_TIMEOUT,
                                     MAX_CHUNK_BYTES, MIN_PART_SIZE, MIN_RATE, POOL_CONNECTIONS,
                                     attempt_timeout, checksum_options, opt_error,
                                     parse_buckets, parse_options, quiet_aws_loggers)
from gffs_backends.s3_errors import UNAVAILABLE_CODES, S3Refused, S3Unreachable, classify

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["S3Backend", "S3Refused", "S3Unreachable", "attempt_timeout", "meta_prefix"]


@answers_checked_class
class S3Backend(Backend):
    def __init__(self, name: str, buckets: list[str] | dict[str, float], *,
                 endpoint_url: str | None = None, region: str | None = None,
                 prefix: str = DEFAULT_PREFIX, timeout: float = DEFAULT_TIMEOUT,
                 create_buckets: bool = False, profile: str | None = None,
                 multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
                 addressing_style: str | None = None) -> None:
        super().__init__(name)
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        quiet_aws_loggers()
        self.weights = parse_buckets(name, buckets)
        self.buckets = list(self.weights)
        self.endpoint_url = endpoint_url
        self.prefix = prefix
        self.meta_prefix = meta_prefix(prefix)
        self.timeout = float(timeout)
        self.multipart_threshold = int(multipart_threshold)
        if addressing_style is None:
            # S3-compatible stores (MinIO, Ceph, moto) rarely have wildcard DNS
            addressing_style = "path" if endpoint_url else "auto"
        attempt = attempt_timeout(self.timeout)
        config = Config(
            connect_timeout=min(attempt, MAX_CONNECT_TIMEOUT),
            read_timeout=attempt,
            retries={"total_max_attempts": ATTEMPTS, "mode": "standard"},
            max_pool_connections=POOL_CONNECTIONS,
            s3={"addressing_style": addressing_style},
            **checksum_options(Config.OPTION_DEFAULTS),
        )
        try:
            session = boto3.session.Session(profile_name=profile)
        except Exception as exc:  # noqa: BLE001 (ProfileNotFound and friends)
            raise opt_error(name, f"'profile': {type(exc).__name__}: AWS profile "
                                  f"{profile!r} cannot be used") from None
        self._client = session.client("s3", endpoint_url=endpoint_url, region_name=region,
                                      config=config)
        # check() makes one attempt per call and retries itself (base.with_retry), so a
        # refused endpoint is "unreachable" at once while a 503 or a reset is retried
        self._probe_client = lambda: session.client(
            "s3", endpoint_url=endpoint_url, region_name=region,
            config=config.merge(Config(retries={"total_max_attempts": 1, "mode": "standard"})))
        self.region = self._client.meta.region_name
        self._transfer = TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=max(self.multipart_threshold, MIN_PART_SIZE),
            max_concurrency=4, use_threads=True, preferred_transfer_client="classic")
        if create_buckets:
            self._create_missing_buckets()

    def __repr__(self) -> str:
        where = f", endpoint_url={self.endpoint_url!r}" if self.endpoint_url else ""
        return (f"S3Backend(name={self.name!r}, buckets={self.weights!r}, "
                f"prefix={self.prefix!r}{where})")

    @classmethod
    @classmethod
    def from_config(cls, name: str, options: dict) -> S3Backend:
        kw = parse_options(name, options)               # one-line errors before boto3 runs
        return cls(name, options["buckets"], **kw)

    # helpers --------------------------------------------------------------------------
    def _object_key(self, key: str) -> str:
        if len(key) < 8 or not all(c in "0123456789abcdef" for c in key):
            raise BackendError(f"{self.name}: invalid object key {key!r}")
        return self.prefix + key

    def choose_bucket(self, key: str) -> str:
        """The bucket a new object with *key* goes to under the current weights."""
        return choose_bucket(self.weights, key)

    def _search_order(self, key: str, locator: str) -> list[str]:
        return search_order(self.weights, key, locator)

    def _error(self, exc: BaseException, what: str) -> BackendError:
        return classify(self.name, exc, what)

    async def _call(self, deadline: float, what: str, fn: Callable, *args, **kw):
        """Run a blocking boto3 call in a worker thread, bounded by *deadline* seconds
        (botocore retries within it: one attempt here)."""
        return await with_retry(lambda: in_thread(fn, *args, **kw), timeout=deadline,
                                classify=self._classifier(what, deadline))

    def _classifier(self, what: str, deadline: float) -> Callable[[BaseException], BackendError]:
        """with_retry's classify: an attempt's timeout or botocore error as a BackendError."""
        def classify(exc: BaseException) -> BackendError:
            if isinstance(exc, trio.TooSlowError):
                return S3Unreachable(f"{self.name}: {what}: no answer within {deadline:g} s")
            return self._error(exc, what)
        return classify

    async def _search(self, key: str, locator: str, op):
        """``op(bucket)`` on the locator's bucket, then every other bucket, until one
        does not raise ObjectMissing. Connection failures end the search at once."""
        failure: BackendError | None = None
        for bucket in self._search_order(key, locator):
            try:
                return await op(bucket)
            except ObjectMissing:
                continue
            except S3Unreachable:
                raise
            except BackendError as exc:
                failure = failure or exc    # one bucket failing: the object may be elsewhere
        if failure is not None:
            raise failure
        raise ObjectMissing(f"{self.name}: chunk {key} is missing")

    def _create_missing_buckets(self) -> None:
        from botocore.exceptions import ClientError
        for bucket in self.buckets:
            what = f"create_buckets: bucket {bucket!r}"
            try:
                self._client.head_bucket(Bucket=bucket)
                continue
            except ClientError as exc:
                err = self._error(exc, what)
                if type(err) is not ObjectMissing:          # 404: absent, create it below
                    raise OSError(f"backend {self.name!r}: {err}") from None
            except Exception as exc:  # noqa: BLE001
                raise OSError(f"backend {self.name!r}: {self._error(exc, what)}") from None
            kw: dict = {"Bucket": bucket}
            if self.region and self.region not in ("us-east-1", "aws-global"):
                kw["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
            try:
                self._client.create_bucket(**kw)
                log.info("backend %s: created bucket %s", self.name, bucket)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code not in ("BucketAlreadyOwnedByYou",):
                    raise OSError(f"backend {self.name!r}: {self._error(exc, what)}") from None
            except Exception as exc:  # noqa: BLE001
                raise OSError(f"backend {self.name!r}: {self._error(exc, what)}") from None

    # blocking pieces, run in worker threads ------------------------------------------------
    def _put_blocking(self, bucket: str, okey: str, data: bytes) -> None:
        if len(data) >= self.multipart_threshold:
            self._client.upload_fileobj(io.BytesIO(data), bucket, okey, Config=self._transfer)
        else:
            resp = self._client.put_object(Bucket=bucket, Key=okey, Body=data)
            if not isinstance(resp.get("ETag"), str) or not resp["ETag"].strip('"'):
                raise KeyError("PutObject answered without an ETag")   # S3 always sends one

    def _get_blocking(self, bucket: str, okey: str,
                      then: Callable[[bytes], object] | None = None) -> object:
        """GetObject, its body and *then* on it in one worker-thread hop (a read-ahead
        of 8 blocks starts 8 of these at once; each extra hop is a round trip through
        the trio thread, which also serves FUSE). What *then* raises is handed back
        as _ThenFailed, so it is not taken for a failed request."""
        resp = self._client.get_object(Bucket=bucket, Key=okey)
        size = resp.get("ContentLength")
        data = resp["Body"].read()
        if size is not None and len(data) != size:
            raise BackendUnavailable(f"{self.name}: get {bucket}/{okey}: short read "
                                     f"({len(data)} of {size} bytes)")
        if then is None:
            return data
        try:
            return then(data)
        except Exception as exc:  # noqa: BLE001 (re-raised by _get_object)
            return _ThenFailed(exc)

    async def _get_object(self, bucket: str, okey: str,
                          then: Callable[[bytes], object] | None = None) -> object:
        """A chunk's bytes (or *then* of them). Its size is known only from the answer,
        so the deadline allows the largest chunk gffs writes (a 16 MiB block) at MIN_RATE."""
        result = await self._call(self.timeout + MAX_CHUNK_BYTES / MIN_RATE,
                                  f"get {bucket}/{okey}", self._get_blocking, bucket, okey, then)
        if isinstance(result, _ThenFailed):
            raise result.exc
        return result

    def _delete_batch(self, bucket: str, okeys: list[str]) -> list[dict]:
        resp = self._client.delete_objects(
            Bucket=bucket, Delete={"Objects": [{"Key": k} for k in okeys], "Quiet": True})
        return [e for e in resp.get("Errors", []) if e.get("Code") != "NoSuchKey"]

    # async interface ----------------------------------------------------------------------
    async def put(self, key: str, data: bytes) -> str:
        okey = self._object_key(key)
        bucket = self.choose_bucket(key)
        await self._call(self.timeout + len(data) / MIN_RATE, f"put {bucket}/{okey}",
                         self._put_blocking, bucket, okey, bytes(data))
        return bucket

    async def get(self, key: str, locator: str = "") -> bytes:
        okey = self._object_key(key)
        return await self._search(key, locator, lambda bucket: self._get_object(bucket, okey))

    async def get_then(self, key: str, locator: str, then: Callable[[bytes], T]) -> T:
        """*then* (opening a sealed chunk) runs in the worker thread that read the object."""
        okey = self._object_key(key)
        return await self._search(key, locator,
                                  lambda bucket: self._get_object(bucket, okey, then))

    async def stat(self, key: str, locator: str = "") -> ObjectInfo | None:
        okey = self._object_key(key)

        async def one(bucket: str) -> ObjectInfo:
            resp = await self._call(self.timeout, f"stat {bucket}/{okey}",
                                    self._client.head_object, Bucket=bucket, Key=okey)
            return ObjectInfo(key, int(resp["ContentLength"]), resp["LastModified"].timestamp())

        try:
            return await self._search(key, locator, one)
        except ObjectMissing:
            return None

    async def delete(self, key: str, locator: str = "") -> None:
        await self.delete_many([(key, locator)])

    async def delete_many(self, items: list[tuple[str, str]]) -> None:
        """Delete from every bucket (locator's first): a key whose object moved or was
        put again under other weights leaves no copy behind. DeleteObjects takes
        1000 keys, so this costs one request per bucket per 1000 keys."""
        okeys = list(dict.fromkeys(self._object_key(k) for k, _ in items))
        if not okeys:
            return
        first = [loc for _, loc in items if loc in self.weights]
        order = list(dict.fromkeys(first + self.buckets))
        failure: BackendError | None = None
        for bucket in order:
            for i in range(0, len(okeys), DELETE_BATCH):
                batch = okeys[i:i + DELETE_BATCH]
                what = f"delete {len(batch)} objects in {bucket}"
                try:
                    errors = await self._call(self.timeout, what, self._delete_batch,
                                              bucket, batch)
                except S3Unreachable:
                    raise
                except BackendError as exc:
                    failure = failure or exc
                    break
                if errors:
                    codes = sorted({str(e.get("Code")) for e in errors})
                    cls = (BackendUnavailable if all(c in UNAVAILABLE_CODES for c in codes)
                           else BackendError)
                    failure = failure or cls(f"{self.name}: {what}: {len(errors)} failed "
                                             f"({', '.join(codes)})")
        if failure is not None:
            raise failure

    async def _list_objects(self, bucket: str, prefix: str) -> AsyncIterator[dict]:
        """Every object of *bucket* under *prefix* (ListObjectsV2 pages)."""
        token = None
        while True:
            kw = {"Bucket": bucket, "Prefix": prefix}
            if token:
                kw["ContinuationToken"] = token
            resp = await self._call(self.timeout, f"list {bucket}",
                                    self._client.list_objects_v2, **kw)
            for obj in resp.get("Contents", []):
                yield obj
            token = resp.get("NextContinuationToken")
            if not resp.get("IsTruncated") or not token:
                return

    async def list(self) -> AsyncIterator[ObjectInfo]:  # type: ignore[override]
        plen = len(self.prefix)
        for bucket in self.buckets:
            async for obj in self._list_objects(bucket, self.prefix):
                key = obj["Key"][plen:]
                if len(key) >= 8 and all(c in "0123456789abcdef" for c in key):
                    yield ObjectInfo(key, int(obj["Size"]), obj["LastModified"].timestamp())

    # metadata objects ------------------------------------------------------------------------
    async def put_meta(self, name: str, data: bytes) -> None:
        okey = self.meta_prefix + check_meta_name(self.name, name)
        bucket = self.choose_bucket(name)
        await self._call(self.timeout + len(data) / MIN_RATE, f"put {bucket}/{okey}",
                         self._put_blocking, bucket, okey, bytes(data))
        # an older copy in another bucket (weights changed since) must not shadow this one
        stale = [b for b in self.buckets if b != bucket]
        await self._delete_meta_in(name, stale)

    async def get_meta(self, name: str) -> bytes:
        okey = self.meta_prefix + check_meta_name(self.name, name)

        async def one(bucket: str) -> bytes:
            what = f"get {bucket}/{okey}"
            resp = await self._call(self.timeout, what, self._client.get_object,
                                    Bucket=bucket, Key=okey)
            size = resp.get("ContentLength")
            data = await self._call(self.timeout + (size or 0) / MIN_RATE, what,
                                    resp["Body"].read)
            if size is not None and len(data) != size:
                raise BackendUnavailable(f"{self.name}: {what}: short read")
            return data

        try:
            return await self._search(name, "", one)
        except ObjectMissing:
            raise ObjectMissing(f"{self.name}: metadata object {name} is missing") from None

    async def list_meta(self, prefix: str = "") -> list[str]:
        full = self.meta_prefix + check_meta_prefix(self.name, prefix)
        plen = len(self.meta_prefix)
        names: set[str] = set()
        for bucket in self.buckets:
            async for obj in self._list_objects(bucket, full):
                names.add(obj["Key"][plen:])
        return sorted(names)

    async def delete_meta(self, name: str) -> None:
        check_meta_name(self.name, name)
        await self._delete_meta_in(name, self.buckets)

    async def _delete_meta_in(self, name: str, buckets: list[str]) -> None:
        okey = self.meta_prefix + name
        for bucket in buckets:
            errors = await self._call(self.timeout, f"delete {bucket}/{okey}",
                                      self._delete_batch, bucket, [okey])
            if errors:
                raise BackendError(f"{self.name}: delete {bucket}/{okey}: "
                                   f"{errors[0].get('Code')}")

    async def check(self) -> None:
        """head_bucket on every bucket: each must exist and answer to our credentials.

        A temporary answer (503 SlowDown, a reset, one attempt timing out) is retried
        with jittered backoff for up to half the backend timeout, like a data request;
        a missing bucket, rejected credentials or a refused endpoint fail at once."""
        probe = await trio.to_thread.run_sync(self._probe_client)
        try:
            for bucket in self.buckets:
                what = f"bucket {bucket!r}"
                try:
                    await self._probe(probe, what, bucket)
                except ObjectMissing:
                    raise BackendError(f"{self.name}: {what} does not exist (create it, or "
                                       f"set create_buckets = true)") from None
        finally:
            probe.close()

    async def _probe(self, probe, what: str, bucket: str) -> None:
        """One head_bucket through the single-attempt *probe* client, retried here."""
        await with_retry(lambda: in_thread(probe.head_bucket, Bucket=bucket),
                         timeout=self.timeout, classify=self._classifier(what, self.timeout),
                         retry_time=self.timeout / 2,
                         retry_if=retry_at_check)

    async def capacity(self) -> None:
        return None     # S3 does not know (quotas are not visible through the API)

    async def sync(self) -> None:
        """Nothing to do: a PUT that returned is durable."""

    async def close(self) -> None:
        await trio.to_thread.run_sync(self._client.close)


class _ThenFailed:
    """What get_then's *then* raised in the worker thread, carried out of it as a value."""

    __slots__ = ("exc",)

    def __init__(self, exc: Exception) -> None:
        self.exc = exc
