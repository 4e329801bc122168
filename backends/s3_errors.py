"""S3 backend: botocore/s3transfer exceptions mapped to the backend error hierarchy.

The retries themselves are botocore's (standard mode) inside one deadline, see
gffs_backends.base.with_retry; this only says what a failure means.
"""

from __future__ import annotations

from gffs_backends.base import (PARSE_ERRORS, BackendError, BackendFull, BackendUnavailable,
                                EndpointRefused, MalformedAnswer, ObjectMissing)

_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
_FULL_CODES = {"EntityTooLarge", "QuotaExceeded", "StorageFull", "InsufficientStorage",
               "XMinioStorageFull", "XMinioAdminBucketQuotaExceeded", "ServiceQuotaExceeded"}
UNAVAILABLE_CODES = {
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


class S3Unreachable(BackendUnavailable):
    """The endpoint itself cannot be reached (every bucket is affected, stop searching)."""


class S3Refused(S3Unreachable, EndpointRefused):
    """Nothing listens at the endpoint_url (refused, or its name does not resolve)."""


def classify(name: str, exc: BaseException, what: str) -> BackendError:
    """Map a botocore/s3transfer exception to the backend error hierarchy.

    Messages carry the error code and HTTP status, never the server's free text
    or anything from the request (no credential can leak through here).
    """
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionError,
        ConnectTimeoutError,
        EndpointConnectionError,
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
            return ObjectMissing(f"{name}: {what}: no such object")
        if code in _FULL_CODES or status == 507:
            return BackendFull(f"{name}: {desc}: storage full or quota exceeded")
        if code in UNAVAILABLE_CODES or status >= 500 or status == 429:
            return BackendUnavailable(f"{name}: {desc}")
        return BackendError(f"{name}: {desc}{_HINTS.get(code, '')}")
    if isinstance(cause, (NoCredentialsError, PartialCredentialsError)):
        return BackendError(f"{name}: {what}: no usable AWS credentials (set them in "
                            f"the environment, ~/.aws/credentials or 'profile')")
    if isinstance(cause, EndpointConnectionError) and not isinstance(cause, ConnectTimeoutError):
        return S3Refused(f"{name}: {what}: endpoint unreachable (connection refused or "
                         f"unknown host)")
    if isinstance(cause, (ConnectionError, HTTPClientError)):
        # connection refused/reset, DNS, TLS, connect/read timeouts, short reads
        return S3Unreachable(f"{name}: {what}: endpoint unreachable "
                             f"({type(cause).__name__})")
    from botocore.exceptions import FlexibleChecksumError
    from botocore.parsers import ResponseParserError
    if isinstance(cause, FlexibleChecksumError) or isinstance(exc, (ResponseParserError,
                                                                    *PARSE_ERRORS)):
        # an answer that does not parse, lacks what S3 promises or fails its checksum
        return MalformedAnswer(f"{name}: {what}: malformed answer "
                               f"({type(exc).__name__})")
    if isinstance(cause, BotoCoreError):
        return BackendError(f"{name}: {what}: {type(cause).__name__}")
    return BackendError(f"{name}: {what}: {type(exc).__name__}")
