"""The one async interface every storage backend implements.

Objects are immutable and named by the chunk's hex SHA-256 (the *key*). A put
returns a *locator*: whatever the backend needs besides the key to find the
object again (a bucket, a CID, a pack offset); the index stores it.
"""

from __future__ import annotations

import functools
import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, AsyncIterator, Callable

import trio

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
    """A store of immutable, content-addressed objects."""

    def __init__(self, name: str) -> None:
        self.name = name

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

    @abstractmethod
    async def get(self, key: str, locator: str = "") -> bytes:
        """Return the object's bytes or raise ObjectMissing."""

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

    async def capacity(self) -> Capacity | None:
        """Total and free bytes where the store knows them."""
        return None

    async def sync(self) -> None:
        """Make every completed put durable (survive power loss)."""

    async def close(self) -> None:
        """Release connections and files."""


def load_backend_class(type_name: str) -> type[Backend]:
    """Find a backend class by its entry-point name in the ``gffs.backends`` group."""
    for ep in entry_points(group="gffs.backends"):
        if ep.name == type_name:
            return ep.load()
    if type_name == "local":  # running from a source tree without installed metadata
        from gffs_backends.local import LocalBackend
        return LocalBackend
    raise LookupError(f"no storage backend of type {type_name!r} is installed")
