"""S3 backend configuration: option checking and the per-request limits.

Every option error is one line naming the backend and the option, never the value
(an endpoint URL or a misplaced key could be a credential). The bucket weights are
parsed here too, before boto3 is imported, so a typo costs no import.
"""

from __future__ import annotations

import logging
import math
import re
from urllib.parse import urlsplit

DEFAULT_PREFIX = "chunks/"
DEFAULT_TIMEOUT = 30.0
DEFAULT_MULTIPART_THRESHOLD = 8 << 20
MIN_PART_SIZE = 5 << 20          # S3's smallest part (but the last)
MIN_RATE = 1 << 20               # bytes/s an upload or download may not go below
MAX_CHUNK_BYTES = 16 << 20       # the largest block ([store] block_size_kb <= 16384)
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

# botocore's DEBUG records carry request headers (X-Amz-Security-Token of temporary
# credentials, the access key id in Authorization); gffs --debug sets the root logger
# to DEBUG, so these loggers are held at INFO unless someone configured them explicitly.
_QUIET_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")


def quiet_aws_loggers() -> None:
    for logger_name in _QUIET_LOGGERS:
        logger = logging.getLogger(logger_name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)


def opt_error(name: str, msg: str) -> ValueError:
    return ValueError(f"backend {name!r}: {msg}")


def is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def parse_buckets(name: str, value: object) -> dict[str, float]:
    if isinstance(value, (list, tuple)):
        if not all(isinstance(b, str) for b in value):
            raise opt_error(name, "'buckets' must be a list of bucket names or a table "
                                  "{bucket = weight}")
        weights = {b: 1.0 for b in value}
        if len(weights) != len(value):
            raise opt_error(name, "'buckets' lists a bucket twice")
    elif isinstance(value, dict):
        weights = {}
        for b, w in value.items():
            if not isinstance(b, str):
                raise opt_error(name, "'buckets' table keys must be bucket names")
            if not is_number(w) or w < 0:
                raise opt_error(name, f"'buckets': weight of bucket {b[:63]!r} must be a "
                                      f"number >= 0")
            weights[b] = float(w)
    else:
        raise opt_error(name, "'buckets' must be a list of bucket names or a table "
                              "{bucket = weight}")
    if not weights:
        raise opt_error(name, "'buckets' must name at least one bucket")
    for b in weights:
        if not _BUCKET_RE.match(b) or ".." in b:
            raise opt_error(name, f"'buckets': {b[:63]!r} is not a valid S3 bucket name "
                                  f"(3-63 characters: a-z 0-9 . -)")
    if not any(w > 0 for w in weights.values()):
        raise opt_error(name, "'buckets': at least one bucket needs a weight > 0")
    return weights


def checksum_options(config_defaults: dict) -> dict:
    """botocore Config options that skip its own CRC32 of every PutObject body and
    GetObject answer (botocore >= 1.36 computes both by default; older ones neither).

    gffs checks every chunk it reads itself (the AEAD tag, or the SHA-256 name), and
    the bytes in flight are already covered: over https by TLS, over http by the
    SHA-256 of the payload that SigV4 signs and the server checks. The CRC32 was a
    third check costing the daemon's CPU (and GIL) on every request."""
    if "request_checksum_calculation" not in config_defaults:
        return {}
    return {"request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required"}


def attempt_timeout(deadline: float) -> float:
    """Connect/read timeout of one attempt: a third of the operation's *deadline* (at
    least 2 s, at most the deadline), so a hung attempt is retried in time."""
    return min(deadline, max(MIN_ATTEMPT_TIMEOUT, deadline / ATTEMPTS_PER_DEADLINE))


def parse_options(name: str, options: dict) -> dict:
    """The keyword arguments of S3Backend for the config table *options* (checked)."""
    for opt in options:
        if opt not in OPTIONS:
            shown = str(opt)[:40]
            hint = ""
            if any(w in shown.lower() for w in _CREDENTIAL_WORDS):
                hint = (" (credentials never go into gffs config: use the AWS credential "
                        "chain or 'profile')")
            raise opt_error(name, f"unknown option {shown!r}{hint}")
    if "buckets" not in options:
        raise opt_error(name, "'buckets' is required (a list of bucket names or a table "
                              "{bucket = weight})")
    kw: dict = {}
    url = options.get("endpoint_url")
    if url is not None:
        # never echo the URL: a careless one may carry user:password@
        if not isinstance(url, str):
            raise opt_error(name, "'endpoint_url' must be a string")
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018  (raises ValueError on a bad port)
        except ValueError:
            raise opt_error(name, "'endpoint_url' is not a valid URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise opt_error(name, "'endpoint_url' must be an http:// or https:// URL "
                                  "with a host")
        if parts.username is not None or parts.password is not None or "@" in parts.netloc:
            raise opt_error(name, "'endpoint_url' must not contain credentials "
                                  "(use the AWS credential chain or 'profile')")
        kw["endpoint_url"] = url
    region = options.get("region")
    if region is not None:
        if not isinstance(region, str) or not _REGION_RE.match(region):
            raise opt_error(name, "'region' must be a region name like 'eu-west-1'")
        kw["region"] = region
    prefix = options.get("prefix", DEFAULT_PREFIX)
    if (not isinstance(prefix, str) or len(prefix) > 512 or prefix.startswith("/")
            or any(ord(c) < 32 or ord(c) == 127 for c in prefix)):
        raise opt_error(name, "'prefix' must be a string of at most 512 printable "
                              "characters, not starting with '/'")
    kw["prefix"] = prefix
    timeout = options.get("timeout", DEFAULT_TIMEOUT)
    if not is_number(timeout) or not 0 < timeout <= 3600:
        raise opt_error(name, "'timeout' must be a number of seconds between 0 and 3600")
    kw["timeout"] = timeout
    create = options.get("create_buckets", False)
    if not isinstance(create, bool):
        raise opt_error(name, "'create_buckets' must be true or false")
    kw["create_buckets"] = create
    profile = options.get("profile")
    if profile is not None:
        if not isinstance(profile, str) or not profile or len(profile) > 128:
            raise opt_error(name, "'profile' must be the name of an AWS profile")
        kw["profile"] = profile
    threshold = options.get("multipart_threshold", DEFAULT_MULTIPART_THRESHOLD)
    if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 1 << 20:
        raise opt_error(name, "'multipart_threshold' must be a byte count >= 1048576")
    kw["multipart_threshold"] = threshold
    style = options.get("addressing_style")
    if style is not None:
        if style not in ("auto", "path", "virtual"):
            raise opt_error(name, "'addressing_style' must be 'auto', 'path' or 'virtual'")
        kw["addressing_style"] = style
    parse_buckets(name, options["buckets"])        # one-line errors before boto3 runs
    return kw
