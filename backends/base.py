"""The one async interface every storage backend implements.

Objects are immutable and named by the chunk's hex SHA-256 (the *key*). A put
returns a *locator*: whatever the backend needs besides the key to find the
object again (a bucket, a CID, a pack offset); the index stores it.
"""

from __future__ import annotations

import functools
import inspect
import random
import re
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, TypeVar

import trio

T = TypeVar("T")
INLINE_WORK = 16 * 1024     # get_then: smaller objects are worked on without a thread hop

# trio >= 0.23 renamed cancellable= to abandon_on_cancel=
_ABANDON_KW = ("abandon_on_cancel"
               if "abandon_on_cancel" in inspect.signature(trio.to_thread.run_sync).parameters
               else "cancellable")


async def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a blocking client call (boto3, requests, googleapiclient) in a worker thread.

    The thread is abandoned if the caller is cancelled (a timeout around a
    network call must not wait for a socket that never answers).
    """
    return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs),
                                         **{_ABANDON_KW: True})


class BackendError(Exception):
    """A backend failed; ``temporary`` says whether retrying later may succeed."""

    temporary = False


class BackendUnavailable(BackendError):
    """The backend cannot be reached now (down, timeout, throttled)."""

    temporary = True


class BackendFull(BackendError):
    """The backend has no space for the object."""


class ObjectMissing(BackendError):
    """The backend does not hold the requested object."""


class EndpointRefused(BackendUnavailable):
    """Nothing listens at the backend's address (connection refused, or the host does not
    resolve). Temporary for data requests (a server restarting comes back), but a mount's
    check reports it at once: retrying a wrong endpoint only delays the one line."""


def is_temporary(err: BackendError) -> bool:
    """The one notion of a temporary failure: retrying later may succeed."""
    return err.temporary


def retry_at_check(err: BackendError) -> bool:
    """What a mount's Backend.check() retries: temporary failures, but not a refusal."""
    return err.temporary and not isinstance(err, EndpointRefused)


async def with_retry(attempt: Callable[[], Awaitable[T]], *, timeout: float,
                     classify: Callable[[BaseException], BackendError], retry_time: float | None = None,
                     backoff: float = 0.5, backoff_max: float = 16.0,
                     retry_if: Callable[[BackendError], bool] = is_temporary,
                     on_retry: Callable[[BackendError, int, float], None] | None = None,
                     retry_raised: bool = False) -> T:
    """One backend request: each attempt bounded by *timeout*, failures classified,
    temporary ones retried (the shape of S3QL's ``@retry``).

    *classify* turns what an attempt raised (trio.TooSlowError for a timeout, a client
    library's exception) into a BackendError, or re-raises what is a bug. A BackendError
    the attempt raised itself is final, unless *retry_raised* (an attempt that classifies
    its own failures, as the Kubo RPC session does). A classified error that *retry_if* accepts is
    retried with jittered exponential backoff (*backoff* doubling up to *backoff_max*)
    while the next try still starts within *retry_time* seconds (None: one attempt only,
    for a client that retries itself); then BackendUnavailable says how many attempts were made. *on_retry(error, attempt, delay)* sees each retry.

    This is the backend's own deadline and retry; ChunkStore.call bounds the whole
    operation (retries included) by the caller's deadline and records health.
    """
    start = trio.current_time()
    tries = 0
    while True:
        try:
            with trio.fail_after(timeout):
                return await attempt()
        except BackendError as exc:
            if not retry_raised:
                raise
            err, cause = exc, exc.__cause__
        except Exception as exc:   # noqa: BLE001 - classified (or re-raised) below
            err, cause = classify(exc), exc
        if retry_time is None or not retry_if(err):
            raise err from cause
        cap = min(backoff_max, backoff * 2 ** tries)
        delay = random.uniform(cap / 2, cap)
        spent = trio.current_time() - start
        if spent + delay > retry_time:
            raise BackendUnavailable(f"{err} (gave up after {tries + 1} attempts, "
                                     f"{spent:.1f}s)") from cause
        if on_retry is not None:
            on_retry(err, tries + 1, delay)
        await trio.sleep(delay)
        tries += 1


# Names of metadata objects (index backups): short path-like names that can never
# be mistaken for a chunk key (those are bare lowercase hex).
META_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}(?:/[A-Za-z0-9][A-Za-z0-9._-]{0,127}){0,7}")
META_NAME_MAX = 512


def check_meta_name(backend: str, name: str) -> str:
    """*name* if it is a valid metadata-object name, else BackendError."""
    if (not isinstance(name, str) or len(name) > META_NAME_MAX or "/" not in name
            or not META_NAME_RE.fullmatch(name)):
        raise BackendError(f"{backend}: invalid metadata object name {name!r} "
                           f"(want DIR/NAME of letters, digits, '.', '_', '-')")
    return name


def check_meta_prefix(backend: str, prefix: str) -> str:
    """*prefix* if list_meta may take it: empty, or the start of a valid name."""
    if prefix and (not isinstance(prefix, str) or len(prefix) > META_NAME_MAX
                   or not META_NAME_RE.fullmatch(prefix.rstrip("/"))):
        raise BackendError(f"{backend}: invalid metadata prefix {prefix!r}")
    return prefix


@dataclass(frozen=True, slots=True)
class Capacity:
    total: int
    free: int


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    mtime: float


class Backend(ABC):
    """A store of immutable, content-addressed objects.

    Besides chunks, a backend keeps a few *metadata objects* (index backups):
    named by a path-like name (``index/versions/...``), replaceable, kept apart
    from chunks so that ``list()`` (and therefore gc) never sees them.

    The class attributes below are what placement and gc ask of every backend,
    declared here so that nobody recognises a backend by its class.
    """

    #: a disk of this machine: read first, preferred as a fallback, never staged for
    is_local: bool = False
    #: a copy here counts toward a policy's copy count (IPFS: only on a node you run)
    trusted: bool = True
    #: copies here are made in the background, not before close() returns (from the config)
    deferred: bool = False
    #: a source to read from, never a place for copies (a flow shared by another store)
    read_only: bool = False
    #: prepare_put does work (sealing): worth calling in the chunk store's hashing thread
    prepares_puts: bool = False

    def __init__(self, name: str) -> None:
        self.name = name

    def attach_index(self, index: object) -> None:
        """The store's index is open: a backend keeping state there (a share source's keys)
        reads it now. Most need nothing."""

    @classmethod
    def from_config(cls, name: str, options: dict) -> "Backend":
        """Build the backend from its config table (without 'type').

        Raise ValueError with a one-line message naming the bad option; never
        put a credential into the message.
        """
        raise NotImplementedError(f"{cls.__name__} cannot be configured from a file")

    @abstractmethod
    async def put(self, key: str, data: bytes) -> str:
        """Store *data* under *key*; return the locator. Overwriting is harmless."""

    def prepare_put(self, key: str, data: bytes) -> object | None:
        """The CPU work a put of *data* does on its bytes (sealing), done ahead by a
        caller already in a worker thread, so the put needs no thread hop of its own.
        Blocking and thread-safe; the result goes to :meth:`put_prepared` of this or
        any backend (each uses it only if it is its own kind). None: nothing ahead."""
        return None

    async def put_prepared(self, key: str, data: bytes, prepared: object) -> str:
        """:meth:`put` with what a prepare_put made of *data*; the default ignores it."""
        return await self.put(key, data)

    @abstractmethod
    async def get(self, key: str, locator: str = "") -> bytes:
        """Return the object's bytes or raise ObjectMissing."""

    async def get_then(self, key: str, locator: str, then: Callable[[bytes], T]) -> T:
        """``then(get(key, locator))``: *then* is blocking CPU work on the bytes (opening a
        sealed object). A backend that reads in a worker thread runs *then* in that same
        thread (one hop per read, not two); this default hops again for large objects."""
        data = await self.get(key, locator)
        if len(data) <= INLINE_WORK:
            return then(data)
        return await trio.to_thread.run_sync(then, data)

    @abstractmethod
    async def delete(self, key: str, locator: str = "") -> None:
        """Delete the object; deleting a missing object is not an error."""

    async def delete_many(self, items: list[tuple[str, str]]) -> None:
        for key, locator in items:
            await self.delete(key, locator)

    async def exists(self, key: str, locator: str = "") -> bool:
        return await self.stat(key, locator) is not None

    @abstractmethod
    async def stat(self, key: str, locator: str = "") -> ObjectInfo | None:
        """Size and time of the object, or None when it is absent."""

    @abstractmethod
    def list(self) -> AsyncIterator[ObjectInfo]:
        """Every object the backend holds (admin use: gc, fsck)."""

    @abstractmethod
    async def put_meta(self, name: str, data: bytes) -> None:
        """Store a metadata object under *name*, replacing any object of that name.

        Returns once the object is durable; a reader sees the old or the new bytes,
        never a mix.
        """

    @abstractmethod
    async def get_meta(self, name: str) -> bytes:
        """The metadata object's bytes, or ObjectMissing."""

    @abstractmethod
    async def list_meta(self, prefix: str = "") -> list[str]:
        """Names of the metadata objects starting with *prefix*, sorted."""

    @abstractmethod
    async def delete_meta(self, name: str) -> None:
        """Delete a metadata object; deleting a missing one is not an error."""

    @abstractmethod
    async def check(self) -> None:
        """Raise BackendError (one line, no credentials) unless the backend is usable now.

        Called when a store is mounted (and by `gffs-admin status`) so that a missing
        bucket or folder, or an endpoint where nothing listens, is reported at once
        instead of as EIO on the first write. Cheap: one or two requests, no listing.
        """

    async def capacity(self) -> Capacity | None:
        """Total and free bytes where the store knows them."""
        return None

    async def sync(self) -> None:
        """Make every completed put durable (survive power loss)."""

    async def close(self) -> None:
        """Release connections and files."""

    def remove_stale_temps(self, older_than: float) -> int:
        """Delete temp files a crash mid-put left behind (blocking; admin gc); how many.

        Only a local disk has such files; elsewhere a put that died leaves nothing."""
        return 0


# gffs's own backend types. Found without importlib.metadata: importing it and scanning
# every installed distribution's entry points cost gffs-admin 0.1-0.4 s at startup.
BUILTIN_BACKENDS = {
    "local": "gffs_backends.local:LocalBackend",
    "s3": "gffs_backends.s3:S3Backend",
    "ipfs": "gffs_backends.ipfs:IpfsBackend",
    "gdrive": "gffs_backends.gdrive:DriveBackend",
}


def load_backend_class(type_name: str) -> type[Backend]:
    """A backend class by type name: gffs's own, else a third-party package's entry
    point in the ``gffs.backends`` group."""
    builtin = BUILTIN_BACKENDS.get(type_name)
    if builtin is not None:
        import importlib
        module, _, attr = builtin.partition(":")
        return getattr(importlib.import_module(module), attr)
    from importlib.metadata import entry_points
    for ep in entry_points(group="gffs.backends"):
        if ep.name == type_name:
            return ep.load()
    raise LookupError(f"no storage backend of type {type_name!r} is installed")


# Malformed answers -----------------------------------------------------------------------
# A backend that answers what its protocol does not promise (a JSON without `id`, a
# non-numeric quota, an XML that does not parse) is misbehaving: a proxy, a broken
# gateway, a server bug. That is a BackendError like any other, and a temporary one
# (health skips the backend for a while, writes go elsewhere, reads try other copies).

class MalformedAnswer(BackendUnavailable):
    """The backend answered something its protocol does not promise."""


# what parsing an unexpected answer raises: a missing key, a wrong type, not a number
PARSE_ERRORS = (KeyError, IndexError, TypeError, ValueError, AttributeError)


@contextmanager
def answers_checked(backend: str, what: str) -> Iterator[None]:
    """Turn the exception of parsing a malformed answer into MalformedAnswer.

    Wrap the code that reads a backend's answer (not the code that validates the
    caller's arguments: those errors are the caller's, raised as BackendError)."""
    try:
        yield
    except BackendError:
        raise
    except PARSE_ERRORS as exc:
        raise MalformedAnswer(f"{backend}: {what}: malformed answer "
                              f"({type(exc).__name__}: {str(exc)[:120]})") from exc


INTERFACE_METHODS = ("put", "get", "delete", "delete_many", "exists", "stat", "list", "put_meta",
                     "get_meta", "list_meta", "delete_meta", "capacity")


def answers_checked_class(cls: type) -> type:
    """Class decorator: every interface method of *cls* reads its answers under
    :func:`answers_checked`, so no KeyError/ValueError of a malformed answer leaves
    the backend (it would reach the chunk store as an EIO that health never sees)."""
    for name in INTERFACE_METHODS:
        fn = cls.__dict__.get(name)
        if fn is not None:
            setattr(cls, name, _checked(fn))
    return cls


def _checked(fn: Callable) -> Callable:
    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def listing(self, *args: Any, **kw: Any) -> AsyncIterator:
            with answers_checked(self.name, fn.__name__):
                async for item in fn(self, *args, **kw):
                    yield item
        return listing

    @functools.wraps(fn)
    async def call(self, *args: Any, **kw: Any) -> Any:
        with answers_checked(self.name, fn.__name__):
            return await fn(self, *args, **kw)
    return call
