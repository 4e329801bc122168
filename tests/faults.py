"""A fault-injecting backend wrapper for tests.

``FaultyBackend(inner)`` behaves like *inner* (same name by default, so chunk
locations recorded through it resolve to it) and can be told, at any time, to

* ``down = True``             every call raises BackendUnavailable;
* ``full = True``             put() raises BackendFull;
* ``fail_rate = 0.3``         that fraction of calls raise BackendUnavailable;
* ``corrupt = True``          get() returns damaged bytes (one flipped byte);
* ``truncate = True``         get() returns the object cut in half;
* ``delay = 0.05``            every call first sleeps that long (trio time);
* ``ops`` to restrict the faults to some operations, e.g. {"get"}.

``calls`` counts calls per operation.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import AsyncIterator

import trio

from gffs_backends.base import Backend, BackendFull, BackendUnavailable, Capacity, ObjectInfo

ALL_OPS = frozenset({"put", "get", "delete", "delete_many", "stat", "list", "capacity", "sync", "check",
                     "put_meta", "get_meta", "list_meta", "delete_meta"})


class FaultyBackend(Backend):
    def __init__(self, inner: Backend, name: str | None = None, *, fail_rate: float = 0.0,
                 corrupt: bool = False, truncate: bool = False, down: bool = False,
                 full: bool = False,
                 delay: float = 0.0, ops: set[str] | frozenset[str] = ALL_OPS,
                 seed: int = 0) -> None:
        super().__init__(name or inner.name)
        self.inner = inner
        self.fail_rate = fail_rate
        self.corrupt = corrupt
        self.truncate = truncate
        self.down = down
        self.full = full
        self.delay = delay
        self.ops = set(ops)
        self.calls: Counter[str] = Counter()
        self._rnd = random.Random(seed)

    async def _enter(self, op: str) -> None:
        self.calls[op] += 1
        if op not in self.ops:
            return
        if self.delay:
            await trio.sleep(self.delay)
        if self.down:
            raise BackendUnavailable(f"{self.name}: down (injected)")
        if self.fail_rate and self._rnd.random() < self.fail_rate:
            raise BackendUnavailable(f"{self.name}: transient failure (injected)")

    def _damage(self, data: bytes) -> bytes:
        if self.truncate:
            data = data[: len(data) // 2]
        if self.corrupt and data:
            pos = len(data) // 2
            data = data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1:]
        return data

    async def put(self, key: str, data: bytes) -> str:
        await self._enter("put")
        if self.full and "put" in self.ops:
            raise BackendFull(f"{self.name}: full (injected)")
        return await self.inner.put(key, data)

    async def get(self, key: str, locator: str = "") -> bytes:
        await self._enter("get")
        data = await self.inner.get(key, locator)
        return self._damage(data) if "get" in self.ops else data

    async def delete(self, key: str, locator: str = "") -> None:
        await self._enter("delete")
        await self.inner.delete(key, locator)

    async def delete_many(self, items: list[tuple[str, str]]) -> None:
        await self._enter("delete_many")
        await self.inner.delete_many(items)

    async def stat(self, key: str, locator: str = "") -> ObjectInfo | None:
        await self._enter("stat")
        return await self.inner.stat(key, locator)

    async def list(self) -> AsyncIterator[ObjectInfo]:  # type: ignore[override]
        await self._enter("list")
        async for info in self.inner.list():
            yield info

    async def put_meta(self, name: str, data: bytes) -> None:
        await self._enter("put_meta")
        if self.full and "put_meta" in self.ops:
            raise BackendFull(f"{self.name}: full (injected)")
        await self.inner.put_meta(name, data)

    async def get_meta(self, name: str) -> bytes:
        await self._enter("get_meta")
        data = await self.inner.get_meta(name)
        return self._damage(data) if "get_meta" in self.ops else data

    async def list_meta(self, prefix: str = "") -> list[str]:
        await self._enter("list_meta")
        return await self.inner.list_meta(prefix)

    async def delete_meta(self, name: str) -> None:
        await self._enter("delete_meta")
        await self.inner.delete_meta(name)

    async def check(self) -> None:
        await self._enter("check")
        await self.inner.check()

    async def capacity(self) -> Capacity | None:
        await self._enter("capacity")
        return await self.inner.capacity()

    async def sync(self) -> None:
        await self._enter("sync")
        await self.inner.sync()

    async def close(self) -> None:
        await self.inner.close()
