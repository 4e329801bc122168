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

Every boto3 call blocks, so it runs in a worker thread that is abandoned on
cancellation, under ``trio.fail_after`` (the operation's deadline). Inside it,
botocore's *standard* retry mode retries throttling (503 SlowDown), 5xx answers,
resets and timeouts with jittered exponential backoff, as S3's guidance asks, and
each attempt has its own connect/read timeout, a fraction of the deadline, so one
hung attempt leaves time for the next instead of eating the whole deadline.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import re
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import trio

from gffs_backends.base import (PARSE_ERRORS, Backend, BackendError, BackendFull,
                                BackendUnavailable, MalformedAnswer, ObjectInfo, ObjectMissing,
                                answers_checked_class, check_meta_name, check_meta_prefix,
                                in_thread, with_retry)

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "chunks/"
DEFAULT_TIMEOUT = 30.0
DEFAULT_MULTIPART_THRESHOLD = 8 << 20
MIN_PART_SIZE = 5 << 20          # S3's smallest part (but the last)
MIN_RATE = 1 << 20               # bytes/s an upload or download may not go below
DELETE_BATCH = 1000              # DeleteObjects limit
MAX_CONNECT_TIMEOUT = 5.0
ATTEMPTS = 10                    # per request, first one included (botocore standard mode)
ATTEMPTS_PER_DEADLINE = 3        # an attempt may take a third of the operation's deadline
MIN_ATTEMPT_TIMEOUT = 2.0
POOL_CONNECTIONS = 50            # above trio's default of 40 worker threads

OPTIONS = {"buckets", "endpoint_url", "region", "prefix", "timeout", "create_buckets",
           "profile", "multipart_threshold", "addressing_style"}
_CREDENTIAL_WORDS = ("key", "secret", "token", "password", "credential")


_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_REGION_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")

_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
_FULL_CODES = {"EntityTooLarge", "QuotaExceeded", "StorageFull", "InsufficientStorage",
               "XMinioStorageFull", "XMinioAdminBucketQuotaExceeded", "ServiceQuotaExceeded"}
_UNAVAILABLE_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestThrottledException", "TooManyRequests", "TooManyRequestsException",
    "RequestLimitExceeded", "BandwidthLimitExceeded", "ProvisionedThroughputExceededException",
    "RequestTimeout", "RequestTimeoutException", "ServiceUnavailable", "InternalError",
    "OperationAborted", "PriorRequestNotComplete", "XMinioServerNotInitialized",
}
_HINTS = {
    "AccessDenied": " (check the credentials' permissions; without s3:ListBucket a missing "
                    "object also reads as AccessDenied)",
    "InvalidAccessKeyId": " (the access key is not known to the endpoint)",
    "SignatureDoesNotMatch": " (wrong secret key or clock skew)",
    "NoSuchBucket": " (create it, or set create_buckets = true)",
}


# botocore's DEBUG records carry request headers (X-Amz-Security-Token of temporary
# credentials, the access key id in Authorization); gffs --debug sets the root logger
# to DEBUG, so these loggers are held at INFO unless someone configured them explicitly.
_QUIET_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")


def _quiet_aws_loggers() -> None:
    for logger_name in _QUIET_LOGGERS:
        logger = logging.getLogger(logger_name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)


class S3Unreachable(BackendUnavailable):
    """The endpoint itself cannot be reached (every bucket is affected, stop searching)."""


def _opt_error(name: str, msg: str) -> ValueError:
    return ValueError(f"backend {name!r}: {msg}")


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _parse_buckets(name: str, value: object) -> dict[str, float]:
    if isinstance(value, (list, tuple)):
        if not all(isinstance(b, str) for b in value):
            raise _opt_error(name, "'buckets' must be a list of bucket names or a table "
                                   "{bucket = weight}")
        weights = {b: 1.0 for b in value}
        if len(weights) != len(value):
            raise _opt_error(name, "'buckets' lists a bucket twice")
    elif isinstance(value, dict):
        weights = {}
        for b, w in value.items():
            if not isinstance(b, str):
                raise _opt_error(name, "'buckets' table keys must be bucket names")
            if not _is_number(w) or w < 0:
                raise _opt_error(name, f"'buckets': weight of bucket {b[:63]!r} must be a "
                                       f"number >= 0")
            weights[b] = float(w)
    else:
        raise _opt_error(name, "'buckets' must be a list of bucket names or a table "
                               "{bucket = weight}")
    if not weights:
        raise _opt_error(name, "'buckets' must name at least one bucket")
    for b in weights:
        if not _BUCKET_RE.match(b) or ".." in b:
            raise _opt_error(name, f"'buckets': {b[:63]!r} is not a valid S3 bucket name "
                                   f"(3-63 characters: a-z 0-9 . -)")
    if not any(w > 0 for w in weights.values()):
        raise _opt_error(name, "'buckets': at least one bucket needs a weight > 0")
    return weights


def meta_prefix(prefix: str) -> str:
    """Where metadata objects go for a chunk *prefix*: beside it, never under a chunk key."""
    if not prefix:
        return "gffs-meta/"
    return (prefix[:-1] if prefix.endswith("/") else prefix) + "-meta/"


def attempt_timeout(deadline: float) -> float:
    """Connect/read timeout of one attempt: a third of the operation's *deadline* (at
    least 2 s, at most the deadline), so a hung attempt is retried in time."""
    return min(deadline, max(MIN_ATTEMPT_TIMEOUT, deadline / ATTEMPTS_PER_DEADLINE))


def _score(bucket: str, weight: float, key: str) -> float:
    """Weighted rendezvous score of *bucket* for *key* (higher wins)."""
    if weight <= 0:
        return 0.0
    h = int.from_bytes(hashlib.sha256(f"{bucket}\0{key}".encode()).digest()[:8], "big")
    u = (h + 0.5) / 2.0 ** 64              # uniform in (0, 1), never 0 or 1
    return -weight / math.log(u)


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

        _quiet_aws_loggers()
        self.weights = _parse_buckets(name, buckets)
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
        )
        try:
            session = boto3.session.Session(profile_name=profile)
        except Exception as exc:  # noqa: BLE001 (ProfileNotFound and friends)
            raise _opt_error(name, f"'profile': {type(exc).__name__}: AWS profile "
                                   f"{profile!r} cannot be used") from None
        self._client = session.client("s3", endpoint_url=endpoint_url, region_name=region,
                                      config=config)
        # check() asks once (and once more): a refused endpoint is "unreachable" at once,
        # not after the ten jittered attempts that data requests get
        self._probe_client = lambda: session.client(
            "s3", endpoint_url=endpoint_url, region_name=region,
            config=config.merge(Config(retries={"total_max_attempts": 2, "mode": "standard"})))
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
    def from_config(cls, name: str, options: dict) -> S3Backend:
        for opt in options:
            if opt not in OPTIONS:
                shown = str(opt)[:40]
                hint = ""
                if any(w in shown.lower() for w in _CREDENTIAL_WORDS):
                    hint = (" (credentials never go into gffs config: use the AWS credential "
                            "chain or 'profile')")
                raise _opt_error(name, f"unknown option {shown!r}{hint}")
        if "buckets" not in options:
            raise _opt_error(name, "'buckets' is required (a list of bucket names or a table "
                                   "{bucket = weight})")
        kw: dict = {}
        url = options.get("endpoint_url")
        if url is not None:
            # never echo the URL: a careless one may carry user:password@
            if not isinstance(url, str):
                raise _opt_error(name, "'endpoint_url' must be a string")
            try:
                parts = urlsplit(url)
                parts.port  # noqa: B018  (raises ValueError on a bad port)
            except ValueError:
                raise _opt_error(name, "'endpoint_url' is not a valid URL") from None
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise _opt_error(name, "'endpoint_url' must be an http:// or https:// URL "
                                       "with a host")
            if parts.username is not None or parts.password is not None or "@" in parts.netloc:
                raise _opt_error(name, "'endpoint_url' must not contain credentials "
                                       "(use the AWS credential chain or 'profile')")
            kw["endpoint_url"] = url
        region = options.get("region")
        if region is not None:
            if not isinstance(region, str) or not _REGION_RE.match(region):
                raise _opt_error(name, "'region' must be a region name like 'eu-west-1'")
            kw["region"] = region
        prefix = options.get("prefix", DEFAULT_PREFIX)
        if (not isinstance(prefix, str) or len(prefix) > 512 or prefix.startswith("/")
                or any(ord(c) < 32 or ord(c) == 127 for c in prefix)):
            raise _opt_error(name, "'prefix' must be a string of at most 512 printable "
                                   "characters, not starting with '/'")
        kw["prefix"] = prefix
        timeout = options.get("timeout", DEFAULT_TIMEOUT)
        if not _is_number(timeout) or not 0 < timeout <= 3600:
            raise _opt_error(name, "'timeout' must be a number of seconds between 0 and 3600")
        kw["timeout"] = timeout
        create = options.get("create_buckets", False)
        if not isinstance(create, bool):
            raise _opt_error(name, "'create_buckets' must be true or false")
        kw["create_buckets"] = create
        profile = options.get("profile")
        if profile is not None:
            if not isinstance(profile, str) or not profile or len(profile) > 128:
                raise _opt_error(name, "'profile' must be the name of an AWS profile")
            kw["profile"] = profile
        threshold = options.get("multipart_threshold", DEFAULT_MULTIPART_THRESHOLD)
        if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 1 << 20:
            raise _opt_error(name, "'multipart_threshold' must be a byte count >= 1048576")
        kw["multipart_threshold"] = threshold
        style = options.get("addressing_style")
        if style is not None:
            if style not in ("auto", "path", "virtual"):
                raise _opt_error(name, "'addressing_style' must be 'auto', 'path' or 'virtual'")
            kw["addressing_style"] = style
        _parse_buckets(name, options["buckets"])        # one-line errors before boto3 runs
        return cls(name, options["buckets"], **kw)

    # helpers --------------------------------------------------------------------------
    def _object_key(self, key: str) -> str:
        if len(key) < 8 or not all(c in "0123456789abcdef" for c in key):
            raise BackendError(f"{self.name}: invalid object key {key!r}")
        return self.prefix + key

    def choose_bucket(self, key: str) -> str:
        """The bucket a new object with *key* goes to under the current weights."""
        return max(self.buckets, key=lambda b: (_score(b, self.weights[b], key), b))

    def _search_order(self, key: str, locator: str) -> list[str]:
        order = sorted(self.buckets, key=lambda b: (_score(b, self.weights[b], key), b),
                       reverse=True)
        if locator in self.weights:
            order.remove(locator)
            order.insert(0, locator)
        return order

    def _error(self, exc: BaseException, what: str) -> BackendError:
        """Map a botocore/s3transfer exception to the backend error hierarchy.

        Messages carry the error code and HTTP status, never the server's free text
        or anything from the request (no credential can leak through here).
        """
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionError,
            HTTPClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, (ClientError, BotoCoreError)):
            cause = cause.__cause__ or cause.__context__    # s3transfer wrappers
        if isinstance(cause, ClientError):
            err = cause.response.get("Error", {}) or {}
            code = str(err.get("Code", "") or "")
            status = int((cause.response.get("ResponseMetadata") or {})
                         .get("HTTPStatusCode") or 0)
            desc = f"{what}: {code or 'error'} (HTTP {status or '?'})"
            if code in _MISSING_CODES or (status == 404 and code not in ("NoSuchBucket",)):
                return ObjectMissing(f"{self.name}: {what}: no such object")
            if code in _FULL_CODES or status == 507:
                return BackendFull(f"{self.name}: {desc}: storage full or quota exceeded")
            if code in _UNAVAILABLE_CODES or status >= 500 or status == 429:
                return BackendUnavailable(f"{self.name}: {desc}")
            return BackendError(f"{self.name}: {desc}{_HINTS.get(code, '')}")
        if isinstance(cause, (NoCredentialsError, PartialCredentialsError)):
            return BackendError(f"{self.name}: {what}: no usable AWS credentials (set them in "
                                f"the environment, ~/.aws/credentials or 'profile')")
        if isinstance(cause, (ConnectionError, HTTPClientError)):
            # connection refused/reset, DNS, TLS, connect/read timeouts, short reads
            return S3Unreachable(f"{self.name}: {what}: endpoint unreachable "
                                 f"({type(cause).__name__})")
        from botocore.exceptions import FlexibleChecksumError
        from botocore.parsers import ResponseParserError
        if isinstance(cause, FlexibleChecksumError) or isinstance(exc, (ResponseParserError,
                                                                        *PARSE_ERRORS)):
            # an answer that does not parse, lacks what S3 promises or fails its checksum
            return MalformedAnswer(f"{self.name}: {what}: malformed answer "
                                   f"({type(exc).__name__})")
        if isinstance(cause, BotoCoreError):
            return BackendError(f"{self.name}: {what}: {type(cause).__name__}")
        return BackendError(f"{self.name}: {what}: {type(exc).__name__}")

    async def _call(self, deadline: float, what: str, fn: Callable, *args, **kw):
        """Run a blocking boto3 call in a worker thread, bounded by *deadline* seconds
        (botocore retries within it: one attempt here)."""
        def classify(exc: BaseException) -> BackendError:
            if isinstance(exc, trio.TooSlowError):
                return S3Unreachable(f"{self.name}: {what}: no answer within {deadline:g} s")
            return self._error(exc, what)
        return await with_retry(lambda: in_thread(fn, *args, **kw), timeout=deadline,
                                classify=classify)

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

        async def one(bucket: str) -> bytes:
            what = f"get {bucket}/{okey}"
            resp = await self._call(self.timeout, what, self._client.get_object,
                                    Bucket=bucket, Key=okey)
            body = resp["Body"]
            size = resp.get("ContentLength")
            data = await self._call(self.timeout + (size or 0) / MIN_RATE, what, body.read)
            if size is not None and len(data) != size:
                raise BackendUnavailable(f"{self.name}: {what}: short read "
                                         f"({len(data)} of {size} bytes)")
            return data

        return await self._search(key, locator, one)

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
                    cls = (BackendUnavailable if all(c in _UNAVAILABLE_CODES for c in codes)
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
        """head_bucket on every bucket: each must exist and answer to our credentials."""
        probe = await trio.to_thread.run_sync(self._probe_client)
        try:
            for bucket in self.buckets:
                what = f"bucket {bucket!r}"
                try:
                    await self._call(self.timeout, what, probe.head_bucket, Bucket=bucket)
                except ObjectMissing:
                    raise BackendError(f"{self.name}: {what} does not exist (create it, or "
                                       f"set create_buckets = true)") from None
        finally:
            probe.close()

    async def capacity(self) -> None:
        return None     # S3 does not know (quotas are not visible through the API)

    async def sync(self) -> None:
        """Nothing to do: a PUT that returned is durable."""

    async def close(self) -> None:
        await trio.to_thread.run_sync(self._client.close)
