"""Error types shared by every layer.

Layers below FUSE raise FsError with an errno; the FUSE layer turns it into a
reply. Anything else reaching the FUSE layer is a bug and becomes EIO.
"""

from __future__ import annotations

import os


class FsError(Exception):
    """A POSIX-level failure: carries the errno the caller should see."""

    def __init__(self, err: int, message: str = "") -> None:
        super().__init__(message or os.strerror(err))
        self.errno = err


class ConfigError(Exception):
    """The user's configuration is wrong; the message is one clear line."""


class StoreLockedError(Exception):
    """Another process holds the store (the index has one writer)."""
