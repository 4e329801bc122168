"""The chunk store's cache of decoded blocks."""

from __future__ import annotations

from collections import OrderedDict


class BlockCache:
    """LRU of decoded block plaintext, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self._data: OrderedDict[bytes, bytes | memoryview] = OrderedDict()

    def __contains__(self, key: bytes) -> bool:
        return key in self._data

    def get(self, key: bytes) -> bytes | memoryview | None:
        data = self._data.get(key)
        if data is not None:
            self._data.move_to_end(key)
        return data

    def discard(self, key: bytes) -> None:
        old = self._data.pop(key, None)
        if old is not None:
            self.used -= len(old)

    def put(self, key: bytes, data: bytes | memoryview) -> None:
        if len(data) > self.max_bytes:
            return
        old = self._data.pop(key, None)
        if old is not None:
            self.used -= len(old)
        self._data[key] = data
        self.used += len(data)
        while self.used > self.max_bytes:
            _, evicted = self._data.popitem(last=False)
            self.used -= len(evicted)
